"""The Kubernetes runtime to its contract: each sample workshop's pod, validated strictly against the API schema.

No cluster runs here (nothing on this machine runs pods), so two things
stand in for one, as said where they are used: KubeSpawner's own test mode
(``_mock=True``) builds the pod manifest without calling an API server (the
kubeconfig it insists on reading names an address nothing is asked at), and
a real HTTP server on loopback plays the API server's pods endpoints for the
service's end of a seat. The manifest is checked with
``kubernetes-validate --strict`` (an unknown field is an error).
"""

import asyncio
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

kubespawner = pytest.importorskip("kubespawner", reason="jupyterhub-kubespawner is not installed (pip install '.[kubernetes]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the test extra)")

from jupyterhub import orm  # noqa: E402
from jupyterhub.objects import Hub  # noqa: E402
from jupyterhub.user import User  # noqa: E402
from traitlets.config import Config  # noqa: E402

from wod_jupyterhub.config import Wod  # noqa: E402
from wod_jupyterhub.errors import WodError  # noqa: E402
from wod_jupyterhub.hub.kubernetes import WodKubeSpawner  # noqa: E402
from wod_jupyterhub.seats.kubernetes import KubernetesRuntime, SeatStillRuns  # noqa: E402
from wod_jupyterhub.seats.runtime import seat_runtime  # noqa: E402
from wod_jupyterhub.seats.wipe import wipe_seat  # noqa: E402
from wod_jupyterhub.store.models import Seat, Store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "share" / "workshops"
KUBECONFIG = """apiVersion: v1
kind: Config
current-context: none
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
"""


@pytest.fixture
def place(tmp_path, monkeypatch):
    # KubeSpawner reads a kubeconfig even in its test mode; this one's server is never called.
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    extra = tmp_path / "notebooks" / "WKSHP-Heavy"
    extra.mkdir(parents=True)
    (extra / "wod.yml").write_text("name: heavy\nactive: true\nrange: [50, 60]\nlimits: {memory: 1G, cpu: 0.5}\n")
    (extra / "0-ReadMeFirst.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}))
    c = Config()
    c.Wod.db_url = f"sqlite:///{tmp_path / 'wod.sqlite'}"
    c.Wod.students_root = str(tmp_path / "students")
    c.Wod.notebooks = [str(SAMPLES), str(tmp_path / "notebooks")]
    c.WodKubeSpawner.image = "wod-seat:test"
    store = Store(c.Wod.db_url)
    yield c, store
    store.dispose()


async def manifest(config, store, workshop: str, n: int) -> dict:
    """The pod WodKubeSpawner would create for seat ``n`` booked for ``workshop``, as the API server receives it."""
    with store.session() as s:
        s.merge(Seat(number=n, state="active", workshop=workshop, customer="c", generation=1))
    (Path(config.Wod.students_root) / f"student{n}" / workshop).mkdir(parents=True, exist_ok=True)
    db = orm.new_session_factory("sqlite://")()
    u = orm.User(name=f"student{n}")
    db.add(u)
    db.commit()
    orm_spawner = orm.Spawner(name="", user=u)
    db.add(orm_spawner)
    db.commit()
    sp = WodKubeSpawner(user=User(u, settings={}, db=db), hub=Hub(), config=config, orm_spawner=orm_spawner, _mock=True)
    sp.api_token = "not-a-real-token"
    await sp.run_pre_spawn_hook()
    pod = await sp.get_pod_manifest()
    return sp.api.api_client.sanitize_for_serialization(pod)


def workshops():
    return sorted(p.name for p in SAMPLES.iterdir() if (p / "wod.yml").is_file())


def test_there_are_sample_workshops_to_build_pods_for():
    assert len(workshops()) >= 2


@pytest.mark.parametrize("workshop", workshops())
async def test_each_sample_workshops_pod_validates_strictly_and_holds_the_seat(place, workshop):
    config, store = place
    n = 7
    pod = await manifest(config, store, workshop, n)
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(pod, version, strict=True)
    uid = Wod(config=config).uid_base + n
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["securityContext"]["runAsUser"] == uid and container["securityContext"]["runAsGroup"] == uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["fsGroup"] == uid
    assert spec["automountServiceAccountToken"] is False
    home = str(Path(config.Wod.students_root) / f"student{n}")
    assert container["volumeMounts"] == [{"name": "wod-students", "mountPath": home, "subPath": f"student{n}"}]
    assert spec["volumes"] == [{"name": "wod-students", "persistentVolumeClaim": {"claimName": "wod-students"}}]
    assert container["workingDir"] == home
    # The hub's defaults (2G, 1 core); the requests of a busy seat, never above the limits.
    assert container["resources"]["limits"] == {"memory": 2 * 1024**3, "cpu": 1.0}
    assert container["resources"]["requests"] == {"memory": 160 * 1024**2, "cpu": 0.05}
    assert pod["metadata"]["labels"]["wod.seat"] == f"student{n}" and pod["metadata"]["labels"]["wod.backend"] == "wod"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JUPYTERHUB_DEFAULT_URL"] == f"/lab/tree/{workshop}/0-ReadMeFirst.ipynb" and env["HOME"] == home


async def test_a_workshops_own_limits_become_the_pods_and_cap_its_requests(place):
    config, store = place
    config.WodKubeSpawner.memory_request = "2G"
    pod = await manifest(config, store, "WKSHP-Heavy", 55)
    kubernetes_validate.validate(pod, kubernetes_validate.utils.latest_version(), strict=True)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"memory": 1024**3, "cpu": 0.5}
    assert resources["requests"] == {"memory": 1024**3, "cpu": 0.05}


def test_the_strict_validation_refuses_what_the_api_server_would():
    """The check above can fail: a field the Pod schema does not have, or a quantity that is not one."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "runAsUser": 5}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, kubernetes_validate.utils.latest_version(), strict=True)


# ---------------------------------------------------------------- the service's end of a seat


class FakeAPIServer(ThreadingHTTPServer):
    """A real HTTP server on loopback standing in for the Kubernetes API server's pods endpoints (no cluster here).

    It answers what the API server answers to the two calls the runtime makes:
    ``GET /api/v1/namespaces/<ns>/pods?labelSelector=…`` and ``DELETE …/pods/<name>``;
    ``stuck`` pods stay listed after their deletion, as a pod a node no longer answers for does.
    """

    def __init__(self, pods: dict, token: str, stuck=()):
        self.pods, self.token, self.stuck, self.calls = pods, token, set(stuck), []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method):
        server = self.server
        url = urlsplit(self.path)
        server.calls.append((method, url.path, parse_qs(url.query)))
        if self.headers.get("Authorization") != f"Bearer {server.token}":
            return self._send(401, {"kind": "Status", "reason": "Unauthorized"})
        parts = url.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or parts[4:5] != ["pods"]:
            return self._send(404, {"kind": "Status", "reason": "NotFound"})
        ns = parts[3]
        if method == "GET" and len(parts) == 5:
            selector = dict(kv.split("=") for kv in parse_qs(url.query)["labelSelector"][0].split(","))
            items = [{"metadata": {"name": name, "namespace": ns, "labels": labels}}
                     for name, labels in server.pods.items() if all(labels.get(k) == v for k, v in selector.items())]
            return self._send(200, {"kind": "PodList", "items": items})
        if method == "DELETE" and len(parts) == 6:
            name = parts[5]
            if name not in server.pods:
                return self._send(404, {"kind": "Status", "reason": "NotFound"})
            if name not in server.stuck:
                del server.pods[name]
            return self._send(200, {"kind": "Pod", "metadata": {"name": name}})
        return self._send(405, {"kind": "Status", "reason": "MethodNotAllowed"})

    def do_GET(self):
        self._route("GET")

    def do_DELETE(self):
        self._route("DELETE")


@pytest.fixture
def api(tmp_path):
    servers = []

    def start(pods, stuck=()):
        server = FakeAPIServer(pods, "sa-token", stuck)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        (tmp_path / "token").write_text("sa-token\n")
        wod = Wod(students_root=str(tmp_path / "students"), runtime="kubernetes")
        wod.config.KubernetesRuntime.api_url = f"http://127.0.0.1:{server.server_address[1]}"
        wod.config.KubernetesRuntime.namespace = "wod"
        wod.config.KubernetesRuntime.token_file = str(tmp_path / "token")
        return server, wod

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def labels(n, backend="wod"):
    return {"wod.seat": f"student{n}", "wod.backend": backend}


def test_wiping_a_kubernetes_seat_deletes_its_pods_only_and_erases_its_home(api, tmp_path):
    pods = {"jupyter-student7": labels(7), "jupyter-student8": labels(8), "other-backend-7": labels(7, "other")}
    server, wod = api(pods)
    home = tmp_path / "students" / "student7"
    (home / "WKSHP-X").mkdir(parents=True)
    detail = wipe_seat(wod, 7)
    assert detail == {"pods_deleted": 1, "erased": True}
    assert set(server.pods) == {"jupyter-student8", "other-backend-7"} and not home.exists()
    (method, path, query) = server.calls[0]
    assert (method, path) == ("GET", "/api/v1/namespaces/wod/pods")
    assert query["labelSelector"] == ["wod.seat=student7,wod.backend=wod"]
    assert ("DELETE", "/api/v1/namespaces/wod/pods/jupyter-student7", {"gracePeriodSeconds": ["0"]}) in server.calls
    # A seat with no pod left: nothing to delete, and nothing fails.
    assert seat_runtime(wod).end(7) == {"pods_deleted": 0}


def test_a_pod_that_stays_fails_the_end_with_a_sentence(api):
    server, wod = api({"jupyter-student9": labels(9)}, stuck={"jupyter-student9"})
    with pytest.raises(SeatStillRuns) as e:
        KubernetesRuntime(wod).end(9, timeout=0.5)
    assert "jupyter-student9" in e.value.message and "student9" in e.value.message


def test_a_refused_token_says_so_and_deletes_nothing(api, tmp_path):
    server, wod = api({"jupyter-student9": labels(9)})
    (tmp_path / "token").write_text("wrong\n")
    with pytest.raises(WodError) as e:
        KubernetesRuntime(wod).end(9)
    assert "401" in e.value.message and server.pods == {"jupyter-student9": labels(9)}


def test_without_the_token_file_the_runtime_says_what_is_missing(api, tmp_path):
    server, wod = api({})
    os.unlink(tmp_path / "token")
    with pytest.raises(WodError) as e:
        asyncio.run(asyncio.to_thread(KubernetesRuntime(wod).end, 9))
    assert "token" in e.value.message and server.calls == []


# ---------------------------------------------------------------- the deployment files

DEPLOY = REPO / "share" / "kubernetes"


def test_the_service_deployments_objects_validate_strictly():
    import yaml

    docs = [d for d in yaml.safe_load_all((DEPLOY / "wod-service.yaml").read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "Service", "ServiceAccount"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    # The service account may list and delete pods, nothing more.
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["path"].endswith("/api/health")


def test_the_zero_to_jupyterhub_values_configure_this_runtime():
    import yaml

    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    assert values["cull"]["enabled"] is False and values["hub"]["db"]["type"] == "postgres"
    config = Config()
    exec(compile(values["hub"]["extraConfig"]["wod"], "extraConfig", "exec"), {"c": config})
    assert config.JupyterHub.spawner_class == "wod-kubernetes" and config.Wod.runtime == "kubernetes"
    # Every option it sets exists on the class it names.
    assert set(config.WodKubeSpawner) <= set(WodKubeSpawner.class_traits(config=True))
    assert set(config.Wod) <= set(Wod.class_traits(config=True))
