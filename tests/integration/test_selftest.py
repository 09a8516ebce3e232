"""`wod check` (the workshop self-test) and `POST api/check`, with real kernels (ipykernel through nbclient).

The samples in tests/data/selftest: WKSHP-CheckClean runs clean (plus one
notebook for a Rust kernel that is not installed here: reported, no
failure); WKSHP-CheckFails has a cell dividing by zero and a cell that
outlives the per-cell timeout.
"""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hubutil import write_workshop
from tests.svcutil import check

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "selftest"
SCRIPT = Path(sys.executable).parent / "wod"
WOD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "wod_jupyterhub.cli"]


def wod(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(WOD + [str(a) for a in args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=300)


def notebooks(report, workshop):
    ws = {w["workshop"]: w for w in report["workshops"]}[workshop]
    return ws, {nb["path"]: nb for nb in ws["notebooks"]}


@pytest.mark.slow  # executes the notebooks in real kernels
def test_a_clean_workshop_passes_and_a_missing_kernel_is_no_failure():
    r = wod("check", "WKSHP-CheckClean", "--notebooks", SAMPLES, "--execute", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    assert report["ok"] and report["executed"]
    ws, nbs = notebooks(report, "WKSHP-CheckClean")
    assert ws["status"] == "passed" and ws["student"] == 901
    assert (nbs["1-Run.ipynb"]["status"], nbs["1-Run.ipynb"]["run"], nbs["1-Run.ipynb"]["cells"]) == ("passed", 2, 2)
    assert nbs["0-ReadMeFirst.ipynb"]["status"] == "passed" and nbs["0-ReadMeFirst.ipynb"]["kernel"] == "python3"
    rust = nbs["2-Rust.ipynb"]
    assert rust["status"] == "no-kernel" and rust["kernel"] == "rust" and "not installed" in rust["error"]
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # executes the notebooks in real kernels, one cell until its timeout
def test_a_failing_cell_and_a_cell_past_its_timeout_are_reported():
    r = wod("check", "WKSHP-CheckFails", "--notebooks", SAMPLES, "--execute", "--timeout", "3")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "1-Broken.ipynb: failed, 1/3 code cells run" in r.stdout
    assert "first failing cell: code cell 2 (index 2): ZeroDivisionError: division by zero" in r.stdout
    assert "> b = a / 0" in r.stdout
    assert "2-Slow.ipynb: failed, 0/1 code cells run" in r.stdout and "longer than 3 s" in r.stdout
    assert "0 of 1 workshop(s) passed" in r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


@pytest.mark.slow  # executes the notebooks in real kernels, twice
def test_execute_proves_each_step_fails_fresh_and_passes_once_solved_and_names_a_check_that_cannot_tell(tmp_path):
    import shutil

    from wod_jupyterhub.config import share_dir

    r = wod("check", "WKSHP-VerifiedSteps", "--notebooks", share_dir() / "workshops", "--execute", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    [ws] = json.loads(r.stdout)["workshops"]
    assert [(s["index"], s["status"], s["error"]) for s in ws["steps"]] == [(1, "passed", None), (2, "passed", None), (3, "passed", None)]
    assert ws["steps"][1]["fresh"] == "Nothing listens on port 20041 yet." and ws["steps"][1]["solved"] == "Done."
    # A check that passes on a fresh seat cannot tell a done step from one not started: the check fails, naming it.
    shutil.copytree(share_dir() / "workshops" / "WKSHP-VerifiedSteps", tmp_path / "WKSHP-VerifiedSteps")
    checks = tmp_path / "WKSHP-VerifiedSteps" / "checks" / "steps.py"
    checks.write_text(checks.read_text().replace('    text = _read(seat, "answer.txt")', '    return None\n    text = _read(seat, "answer.txt")'))
    r = wod("check", "WKSHP-VerifiedSteps", "--notebooks", tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)  # without --execute no check runs
    r = wod("check", "WKSHP-VerifiedSteps", "--notebooks", tmp_path, "--execute")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "step 3 (Compute the answer): failed: its check passes on a fresh seat" in r.stdout, r.stdout


def test_without_execute_the_rendered_notebooks_are_validated_only(tmp_path):
    write_workshop(tmp_path, "WKSHP-Undefined", (1, 2), readme_source="{{ NOT_DEFINED_ANYWHERE }}")
    write_workshop(tmp_path, "WKSHP-Fine", (3, 4))
    r = wod("check", "--all", "--notebooks", tmp_path, "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    bad, _ = notebooks(report, "WKSHP-Undefined")
    assert bad["status"] == "failed" and "NOT_DEFINED_ANYWHERE" in bad["problems"][0]
    fine, nbs = notebooks(report, "WKSHP-Fine")
    assert fine["status"] == "passed" and {nb["status"] for nb in nbs.values()} == {"not-run"}
    assert all(nb["valid"] for nb in nbs.values()) and not report["executed"]
    # the variable given on the command line makes it render
    r = wod("check", "WKSHP-Undefined", "--notebooks", tmp_path, "--var", "NOT_DEFINED_ANYWHERE=here")
    assert r.returncode == 0 and "WKSHP-Undefined: PASSED" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (("check",), ["WORKSHOP or --all"]),
        (("check", "WKSHP-CheckClean", "--all"), ["WORKSHOP or --all"]),
        (("check", "WKSHP-X", "--timeout", "0"), ["--timeout"]),
        (("check", "WKSHP-X", "--config", "/nonexistent.py"), ["/nonexistent.py"]),
    ],
)
def test_bad_input(args, words):
    r = wod(*args, "--notebooks", SAMPLES)
    assert r.returncode == 2 and r.stderr.startswith("wod: error: ") and r.stdout == "", (r.stdout, r.stderr)
    for w in words:
        assert w in r.stderr


def test_an_unknown_workshop_fails_the_check():
    r = wod("check", "WKSHP-Nope", "--notebooks", SAMPLES)
    assert r.returncode == 1 and "WKSHP-Nope: FAILED" in r.stdout and "No workshop WKSHP-Nope" in r.stdout


# ---------------------------------------------------------------------- POST api/check


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    with module_hubs(tmp_path_factory.mktemp("selftest"), notebooks=[SAMPLES]) as h:
        yield h


def wait_check(api, check_id, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        record = check(api.get(f"api/checks/{check_id}"), 200)
        if record["status"] != "running" or time.monotonic() > deadline:
            return record
        time.sleep(0.5)


def test_the_service_runs_a_check_in_the_background_and_keeps_its_report(hub):
    with hub.client("portal") as api:
        record = check(api.post("api/check", json={"workshop": "WKSHP-CheckFails", "execute": True, "timeout": 3}), 202)
        assert record["status"] == "running" and record["report"] is None
        done = wait_check(api, record["id"])
        assert done["status"] == "failed", done
        _, nbs = notebooks(done["report"], "WKSHP-CheckFails")
        cell = nbs["1-Broken.ipynb"]["failed_cell"]
        assert (cell["ename"], cell["number"], cell["source"]) == ("ZeroDivisionError", 2, "b = a / 0")
        listed = check(api.get("api/checks"), 200)["checks"]
        assert listed[0]["id"] == record["id"] and "report" not in listed[0]

        clean = check(api.post("api/check", json={"workshop": "WKSHP-CheckClean", "execute": True}), 202)
        assert wait_check(api, clean["id"])["status"] == "passed"
    # kept on disk, beside the service, the service's alone: a failing cell's source is in a report
    folder = hub.root / "wod_checks"
    assert (folder / f"{record['id']}.json").is_file()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}


@pytest.mark.parametrize(
    "body, status",
    [
        ({}, 400),
        ({"workshop": "WKSHP-CheckClean", "all": True}, 400),
        ({"workshop": "WKSHP-Nope"}, 404),
        ({"workshop": "not a workshop"}, 400),
        ({"workshop": "WKSHP-CheckClean", "execute": "yes"}, 400),
        ({"workshop": "WKSHP-CheckClean", "timeout": -1}, 400),
        ({"workshop": "WKSHP-CheckClean", "rm": "-rf"}, 400),
    ],
)
def test_bad_check_requests_start_nothing(hub, body, status):
    with hub.client("portal") as api:
        before = len(check(api.get("api/checks?limit=500"), 200)["checks"])
        check(api.post("api/check", json=body), status)
        assert len(check(api.get("api/checks?limit=500"), 200)["checks"]) == before


@pytest.mark.parametrize(
    "raw, status",
    [(b"[" * 100_000, 400), (b'{"workshop": ' + b"[" * 100_000, 400), (b'{"workshop": [[[[[[[[[[]]]]]]]]]]}', 400),
     (b'{"workshop": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413)],
)  # fmt: skip
def test_deep_or_huge_check_bodies_are_refused_with_a_sentence(hub, raw, status):
    with hub.client("portal") as api:
        before = len(check(api.get("api/checks?limit=500"), 200)["checks"])
        err = check(api.post("api/check", content=raw, headers={"Content-Type": "application/json"}), status)
        assert len(err["message"]) > 10 and "Traceback" not in str(err)
        assert len(check(api.get("api/checks?limit=500"), 200)["checks"]) == before


def test_a_check_needs_the_operate_scope(hub):
    with hub.client("noscope") as api:
        check(api.post("api/check", json={"workshop": "WKSHP-CheckClean"}), 403)
        check(api.get("api/checks/" + "0" * 32), 403)
    with hub.client("portal") as api:
        check(api.get("api/checks/" + "0" * 32), 404)
