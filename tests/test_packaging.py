"""The package as an operator gets it: built, installed outside the repository, used there; and where a clone may live.

The wheel is built from the sdist (so the sdist is shown to carry everything
the wheel needs), installed with ``--no-deps`` into a fresh virtualenv in a
temporary folder; its dependencies come from this test run's environment
through a ``.pth`` line (installing jupyterhub & co. again from an index
would only time the index). The ``wod`` command then runs in a folder with
no ``jupyterhub_config.py``, as on a new machine.
"""

import os
import re
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WOD_URL", "WOD_API_TOKEN")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the virtualenv's bin folder, a working folder outside the repository, the wheel)."""
    place = tmp_path_factory.mktemp("installed")
    dist = place / "dist"
    r = run([sys.executable, "setup.py", "-q", "sdist", "-d", dist], cwd=REPO)
    assert r.returncode == 0, r.stderr
    (sdist,) = dist.glob("*.tar.gz")
    r = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, sdist], cwd=place)
    assert r.returncode == 0, r.stderr
    (wheel,) = dist.glob("*.whl")
    env_dir = place / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel], cwd=place)
    assert r.returncode == 0, r.stderr
    work = place / "work"
    work.mkdir()
    return env_dir / "bin", work, wheel


@pytest.mark.slow  # builds the sdist, the wheel from it and a virtualenv
def test_the_wheel_carries_the_samples_and_the_skeleton_not_the_harness(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "share").rglob("*"):
        if path.is_file():
            assert f"wod_jupyterhub/share/{path.relative_to(REPO / 'share')}" in names, path
    assert "wod_jupyterhub/hub/templates/login.html" in names
    # the session bar: its server extension, and the JupyterLab extension make built, where JupyterLab finds it
    assert "wod_jupyterhub/lab/extension.py" in names
    data = f"wod_jupyterhub-{wheel.name.split('-')[1]}.data/data/share/jupyter/labextensions/wod-jupyterhub-sessionbar/"
    assert {data + "package.json", data + "install.json"} <= names, "build it first: make labextension"
    assert [n for n in names if n.startswith(data + "static/remoteEntry.") and n.endswith(".js")]
    assert not [n for n in names if n.endswith(("/hubprocess.py", "/demo.py"))]


@pytest.mark.slow  # needs the wheel built and installed above
def test_wod_workshops_and_check_run_from_the_installed_package(installed):
    bin_dir, work, _ = installed
    r = run([bin_dir / "python", "-c", "import wod_jupyterhub; print(wod_jupyterhub.__file__)"], cwd=work)
    assert r.stdout.startswith(str(bin_dir.parent)), r.stdout  # the wheel's copy, not the repository's
    r = run([bin_dir / "wod", "workshops"], cwd=work)
    assert r.returncode == 0, (r.stdout, r.stderr)
    rows = [line.split() for line in r.stdout.splitlines()[1:] if line.strip()]
    assert [(row[0], row[3]) for row in rows] == [("WKSHP-PythonBasics", "yes"), ("WKSHP-StdlibData", "yes"), ("WKSHP-VerifiedSteps", "yes")]
    assert all(row[4].startswith(str(bin_dir.parent)) for row in rows), rows
    r = run([bin_dir / "wod", "check", "--all"], cwd=work)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "3 of 3 workshop(s) passed" in r.stdout
    r = run([bin_dir / "wod", "config", "Wod"], cwd=work)
    assert r.returncode == 0 and "--Wod.notebooks=" in r.stdout, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: not root, make test builds no students' Python")
def test_make_test_stops_at_once_in_a_folder_other_accounts_cannot_enter(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    started = time.monotonic()
    r = run(["make", "-C", REPO, "--no-print-directory", "test", f"STUDENT_VENV={closed / 'clone' / '.venv-students'}"])
    assert time.monotonic() - started < 10
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]  # make's own "Error 1"
    assert len(said) == 1 and "which other accounts cannot reach" in said[0] and f"chmod o+x {closed}" in said[0], r.stderr
    assert r.stdout == ""
