"""Every error of the ``wod`` command is one sentence with an exit status: a real hub, real processes.

Per case: the hub with its service down, no hub at all, a token the hub does
not know, a workshop whose ``wod.yml`` is broken or missing (through the
service's CREATE, ``wod create``, ``wod check --all`` and ``wod workshops``),
a reader that closes the pipe, a catalog changed on disk.
"""

import subprocess
import time

import httpx
import pytest

from tests.hubutil import RealHub, write_workshop
from tests.test_cli import WOD, wod
from wod_jupyterhub.hubprocess import free_port


def one_sentence(r, code: int, *words):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wod: error: "), r.stderr
    assert "Traceback" not in r.stderr and "<!DOCTYPE" not in r.stderr + r.stdout and "<html" not in r.stderr.lower()
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def broken_root(root):
    write_workshop(root, "WKSHP-Fine", (1, 5))
    write_workshop(root, "WKSHP-BadYaml", (6, 9)).joinpath("wod.yml").write_text("name: 'x'\nrange: [6, 9\nactive: true\n")
    write_workshop(root, "WKSHP-NoMeta", (10, 12)).joinpath("wod.yml").unlink()
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    with RealHub(root, notebooks=[broken_root(root / "notebooks")]) as h:
        yield h


def test_no_hub_at_the_url_is_one_sentence_even_for_a_range():
    url = f"http://127.0.0.1:{free_port()}"
    r = wod("status", "--url", url, "--token", "t0ken")
    one_sentence(r, 1, f"cannot reach the hub at {url}/", "is it running there?")
    r = wod("create", "WKSHP-Fine", "1-5", "--url", url, "--token", "t0ken")
    one_sentence(r, 1, f"cannot reach the hub at {url}/")
    assert r.stdout == ""


def test_a_hub_whose_service_is_down_is_named_as_such(tmp_path):
    # The wod service is an external one here that nobody started: the hub runs, its proxy has no service behind the route.
    with RealHub(tmp_path, managed_service=False) as h:
        for args in (("status",), ("create", "WKSHP-PythonBasics", "1-3")):
            r = wod(*args, "--url", h.url, "--token", h.portal_token)
            one_sentence(r, 1, f"the hub answers at {h.url} but the wod service does not", "is the service running?")


def test_a_token_the_hub_does_not_know_is_named_as_such(hub):
    for args in (("status",), ("create", "WKSHP-Fine", "1-2")):
        r = wod(*args, "--url", hub.url, "--token", "not-a-token-of-this-hub")
        one_sentence(r, 2, "does not know this token", "--token")


@pytest.mark.parametrize("workshop,words", [
    ("WKSHP-BadYaml", "wod.yml is not valid YAML at line"),
    ("WKSHP-NoMeta", "wod.yml is missing"),
])
def test_a_broken_or_missing_wod_yml_is_the_reason_a_create_gives(hub, workshop, words):
    r = httpx.post(
        hub.proxy_service_url + "api/create", headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": 11 if workshop == "WKSHP-NoMeta" else 7, "customer": "c1", "email": "a@example.com", "workshop": workshop},
    )
    assert r.status_code == 422, r.text
    assert words in r.json()["message"] and "active: false" not in r.json()["message"], r.text
    r = wod("create", workshop, "7-8", "--url", hub.url, "--token", hub.portal_token)
    one_sentence(r, 2, f"workshop {workshop} cannot be provisioned", words)


def test_check_all_and_workshops_include_broken_workshops_and_fail(tmp_path):
    root = broken_root(tmp_path / "notebooks")
    (root / "WKSHP-Fine" / "wod.yml").write_text("name: 'Fine'\nactive: true\nrange: [1, 5]\ncapacity: lots\nreset: maybe\n")
    r = wod("check", "--all", "--notebooks", root, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "WKSHP-BadYaml: FAILED" in r.stdout and "wod.yml is not valid YAML" in r.stdout
    assert "WKSHP-NoMeta: FAILED" in r.stdout and "wod.yml is missing" in r.stdout
    assert "WKSHP-Fine: FAILED" in r.stdout and "capacity must be a non-negative integer" in r.stdout and "reset must be true or false" in r.stdout
    assert "0 of 3 workshop(s) passed" in r.stdout
    r = wod("workshops", "--notebooks", root, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "wod.yml is missing" in r.stdout and "wod.yml is not valid YAML" in r.stdout


def test_workshops_and_check_read_the_configuration_of_the_folder_alike(tmp_path):
    root = tmp_path / "notebooks"
    write_workshop(root, "WKSHP-Branded", (1, 5), readme_source="Welcome to {{ SITE_NAME }}")
    (tmp_path / "jupyterhub_config.py").write_text(
        f"c = get_config()\nimport sys\nprint('noise from the config', file=sys.stderr)\n"
        f"c.Wod.notebooks = [{str(root)!r}]\nc.Wod.variables = {{'SITE_NAME': 'Acme'}}\n"
    )
    for args in (("workshops",), ("check", "--all")):
        r = wod(*args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "noise from the config" not in r.stderr
    (tmp_path / "jupyterhub_config.py").write_text(f"c = get_config()\nc.Wod.notebooks = [{str(root)!r}]\n")
    r = wod("workshops", cwd=tmp_path)
    assert r.returncode == 1 and "variable SITE_NAME is undefined; the variables defined are" in r.stdout, r.stdout


def test_a_reader_that_closes_the_pipe_is_no_error():
    proc = subprocess.Popen(WOD + ["config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the command writes, like `wod config | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert err == ""


def test_a_workshop_added_on_disk_is_in_the_next_answer(hub):
    headers = {"Authorization": f"token {hub.portal_token}"}
    assert httpx.get(hub.proxy_service_url + "api/workshops/WKSHP-Later", headers=headers).status_code == 404
    write_workshop(hub.notebooks[0], "WKSHP-Later", (20, 21))
    started = time.monotonic()
    r = httpx.get(hub.proxy_service_url + "api/workshops/WKSHP-Later", headers=headers)
    assert r.status_code == 200 and r.json()["valid"], r.text
    assert time.monotonic() - started < 2


def test_login_url_is_absolute(hub):
    r = httpx.post(
        hub.proxy_service_url + "api/create?wait=60", headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": 1, "customer": "c-abs", "email": "a@example.com", "workshop": "WKSHP-Fine"}, timeout=90,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    assert r.json()["result"]["login_url"] == f"{hub.url}hub/login"
