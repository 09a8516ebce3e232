"""Seats as Kubernetes pods: the labels that find a seat's pod, and ending a seat through the Kubernetes API.

The hub's side is ``WodKubeSpawner`` (``hub/kubernetes.py``): one pod per
seat, labelled here. The service ends a seat by listing the pods of its
label and deleting them, with the token of a service account allowed to
list and delete pods in one namespace (the Zero to JupyterHub values of
``share/kubernetes`` give it one); nothing of a pod is left on the
service's machine, so there is nothing to clear after it.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from traitlets import Float, Unicode, default

from ..errors import WodError
from .runtime import SeatRuntime

#: the label every seat's pod or container carries: ``student<N>``
SEAT_LABEL = "wod.seat"
#: the label of the backend (``c.Wod.cgroup_parent``'s role for containers): several backends share an engine
BACKEND_LABEL = "wod.backend"

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def seat_labels(n: int, backend: str) -> dict:
    """The labels of seat ``n``'s pod or container in ``backend``."""
    return {SEAT_LABEL: f"student{n}", BACKEND_LABEL: backend}


class SeatStillRuns(WodError):
    """A seat's pod or container is still there after its end's timeout: the seat is not given away."""

    status = 500


class KubernetesRuntime(SeatRuntime):
    """Seats as pods of one namespace, ended through the Kubernetes API (``c.KubernetesRuntime``)."""

    name = "kubernetes"

    api_url = Unicode(
        "https://kubernetes.default.svc",
        help="The Kubernetes API server, as the service's pod reaches it (the in-cluster default).",
    ).tag(config=True)

    namespace = Unicode(help="The namespace of the seats' pods; defaults to the service account's own.").tag(config=True)

    @default("namespace")
    def _namespace_default(self):
        try:
            return (SERVICE_ACCOUNT / "namespace").read_text().strip()
        except OSError:
            return "default"

    token_file = Unicode(
        str(SERVICE_ACCOUNT / "token"),
        help="The service account's token (re-read at each call: the kubelet rotates it).",
    ).tag(config=True)

    ca_file = Unicode(
        str(SERVICE_ACCOUNT / "ca.crt"),
        help="The cluster's certificate authority, for an ``https`` ``api_url``.",
    ).tag(config=True)


    request_timeout = Float(10.0, help="Seconds one call to the API server may take.").tag(config=True)

    def _request(self, method: str, path: str, query: dict | None = None):
        url = self.api_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, method=method)
        try:
            req.add_header("Authorization", "Bearer " + Path(self.token_file).read_text().strip())
        except OSError as e:
            raise WodError(f"The service account's token cannot be read ({e}): the service cannot end seats' pods.") from None
        req.add_header("Accept", "application/json")
        context = ssl.create_default_context(cafile=self.ca_file) if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout, context=context) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "DELETE":
                return None  # already gone
            raise WodError(f"The Kubernetes API answered {e.code} to {method} {path}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise WodError(f"The Kubernetes API at {self.api_url} cannot be reached: {e}") from None

    def pods(self, n: int) -> list[str]:
        """The names of seat ``n``'s pods, as the API server lists them now."""
        selector = ",".join(f"{k}={v}" for k, v in seat_labels(n, self.backend).items())
        listed = self._request("GET", f"/api/v1/namespaces/{self.namespace}/pods", {"labelSelector": selector})
        return [item["metadata"]["name"] for item in listed.get("items", [])]

    def end(self, n: int, timeout: float = 15.0) -> dict:
        deleted: set = set()
        deadline = time.monotonic() + timeout
        while True:
            names = self.pods(n)
            if not names:
                return {"pods_deleted": len(deleted)}
            if time.monotonic() > deadline:
                raise SeatStillRuns(f"The pod(s) {', '.join(names)} of student{n} are still there {timeout:g} s after their deletion.")
            for name in names:
                # No grace: the hub has already stopped the server; what is left is what must not outlive the seat.
                if self._request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}", {"gracePeriodSeconds": "0"}) is not None:
                    deleted.add(name)
            time.sleep(0.2)

    def detect(self) -> str | None:
        return (
            "Kubernetes enforces a seat's memory and CPU through its pod's limits; its processes only through "
            "the kubelet's podPidsLimit (a node setting), not per workshop."
        )
