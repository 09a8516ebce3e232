"""The ``wod`` console script, run for real in a subprocess."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wod_jupyterhub.passwords import ADMIN_COST, verify_password

REPO = Path(__file__).resolve().parent.parent

SCRIPT = Path(sys.executable).parent / "wod"
WOD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "wod_jupyterhub.cli"]


def wod(*args, input=None, cwd=None, cmd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        (cmd or WOD) + [str(a) for a in args], input=input, capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def snapshot(root: Path):
    return sorted(
        (str(p.relative_to(root)), p.is_dir(), None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")
    )


def assert_bad_input(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wod: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert r.stdout == ""


def notebook(cells):
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}, indent=1)


def code(source, count=None, outputs=()):
    return {"cell_type": "code", "id": f"c{abs(hash(source))}", "execution_count": count, "metadata": {},
            "outputs": list(outputs), "source": source}


def markdown(source):
    return {"cell_type": "markdown", "id": f"m{abs(hash(source))}", "metadata": {}, "source": source}


@pytest.fixture
def workshop(tmp_path):
    ws = tmp_path / "ws" / "WKSHP-Demo"
    (ws / "sub").mkdir(parents=True)
    out = {"output_type": "execute_result", "execution_count": 1, "data": {"text/plain": "2"}, "metadata": {}}
    (ws / "0-ReadMeFirst.ipynb").write_text(notebook([markdown("# Hi")]))
    (ws / "1-Intro.ipynb").write_text(notebook([code("1 + 1", 1, [out]), code("x = 2"), code("")]))
    (ws / "sub" / "2-More.ipynb").write_text(notebook([code("y", 4), code("z", 5)]))
    (ws / "broken.ipynb").write_text("{not json")
    return ws


# -- completion ---------------------------------------------------------------------------


def test_completion_json(workshop):
    r = wod("completion", workshop, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert list(got) == ["ratio", "executed", "total", "notebooks"]
    assert (got["ratio"], got["executed"], got["total"]) == (75, 3, 4)
    assert [list(n) for n in got["notebooks"]] == [["path", "executed", "total", "error"]] * 4
    by_path = {n["path"]: n for n in got["notebooks"]}
    assert by_path["1-Intro.ipynb"] == {"path": "1-Intro.ipynb", "executed": 1, "total": 2, "error": None}
    assert by_path["sub/2-More.ipynb"]["executed"] == 2
    assert "invalid JSON" in by_path["broken.ipynb"]["error"]


def test_completion_one_notebook_and_python_m(workshop):
    for cmd in (WOD, [sys.executable, "-m", "wod_jupyterhub.cli"]):
        r = wod("completion", workshop / "1-Intro.ipynb", "--json", cmd=cmd)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {
            "ratio": 50,
            "executed": 1,
            "total": 2,
            "notebooks": [{"path": "1-Intro.ipynb", "executed": 1, "total": 2, "error": None}],
        }


def test_completion_human(workshop):
    r = wod("completion", workshop)
    assert r.returncode == 0, r.stderr
    assert "75 %" in r.stdout and "3 of 4" in r.stdout
    assert "broken.ipynb" in r.stdout and "unreadable" in r.stdout


def test_completion_bad_input(tmp_path):
    assert_bad_input(wod("completion", tmp_path / "nope"), "does not exist")
    (tmp_path / "notes.txt").write_text("x")
    assert_bad_input(wod("completion", tmp_path / "notes.txt"), "neither a workshop folder nor a notebook")
    assert_bad_input(wod("completion"), "PATH")


# -- hash-password ---------------------------------------------------------------------------


def test_hash_password_from_stdin():
    r = wod("hash-password", input="correct horse battery\n")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.strip()
    assert hashed.startswith(f"scrypt${ADMIN_COST}$")
    assert verify_password("correct horse battery", hashed)
    assert not verify_password("correct horse battery\n", hashed)
    assert "correct horse" not in r.stdout + r.stderr


def test_hash_password_empty():
    assert_bad_input(wod("hash-password", input="\n"), "empty password")
    assert_bad_input(wod("hash-password", input=""), "empty password")


# -- usage -------------------------------------------------------------------------------------


def test_usage_errors():
    assert_bad_input(wod(), "COMMAND")
    assert_bad_input(wod("bogus"), "invalid choice")
    assert_bad_input(wod("render", "WKSHP-Python101"), "--student")
    assert_bad_input(wod("render", "WKSHP-Python101", "--student", "x", "--out", "h"), "invalid int")
    r = wod("--help")
    assert r.returncode == 0
    for command in ("workshops", "render", "completion", "hash-password", "service", "users"):
        assert command in r.stdout


@pytest.mark.parametrize("name, module", [("service", "wod_jupyterhub.service"), ("users", "wod_jupyterhub.users")])
def test_delegated_commands(name, module):
    r = wod(name, "--help")
    if importlib.util.find_spec(module) is None:
        assert_bad_input(r, "not available", module)
    else:
        # the arguments reach the module's own parser, not ours
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert "hash-password" not in r.stdout


# -- workshops -------------------------------------------------------------------------------


def test_workshops_real_corpus(corpus):
    # the real corpus has problems (overlapping ranges, capacities): the exit status says so
    r = wod("workshops", "--notebooks", corpus, "--json")
    assert r.returncode == 1, r.stderr
    by_name = {w["name"]: w for w in json.loads(r.stdout)}
    assert by_name["WKSHP-Docker101"]["range"] == [1551, 1580]
    assert any("WKSHP-Python101" in p for p in by_name["WKSHP-Ansible101"]["problems"])

    r = wod("workshops", "--notebooks", corpus)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["WORKSHOP", "RANGE", "ACTIVE"]
    assert any(line.startswith("WKSHP-Python101 ") and "52-57" in line for line in lines)
    assert any("WKSHP-API101: capacity 20" in line for line in lines)


def test_workshops_bad_root(tmp_path):
    assert_bad_input(wod("workshops", "--notebooks", tmp_path / "nope"), "does not exist")


# -- render ----------------------------------------------------------------------------------

WOD_YML = "%YAML 1.1\n---\nname: 'Demo'\nactive: true\nrange: [1, 5]\ncapacity: 5\n"


@pytest.fixture
def demo_root(tmp_path):
    root = tmp_path / "notebooks"
    ws = root / "WKSHP-Demo"
    ws.mkdir(parents=True)
    (ws / "wod.yml").write_text(WOD_YML)
    (ws / "0-ReadMeFirst.ipynb").write_text(notebook([
        markdown("You are student {{ STDID }} on {{ BRANDING }}{% if MODEWS == 'CHLG' %}, challenge mode{% endif %}."),
        code("print('hello')", 3, [{"output_type": "stream", "name": "stdout", "text": "hello\n"}]),
        markdown("Your password: {{ PASSSTU }}"),
    ]))
    bad = root / "WKSHP-Undefined"
    bad.mkdir()
    (bad / "wod.yml").write_text(WOD_YML.replace("[1, 5]", "[6, 9]"))
    (bad / "0-ReadMeFirst.ipynb").write_text(notebook([markdown("{{ NO_SUCH_VARIABLE }}")]))
    return root


def _readme_text(home, folder="WKSHP-Demo"):
    nb = json.loads((home / folder / "0-ReadMeFirst.ipynb").read_text())
    return nb, "".join(nb["cells"][0]["source"])


@pytest.mark.parametrize("home_name", ["student3", "somewhere"])
def test_render(tmp_path, demo_root, home_name):
    out = tmp_path / "out" / home_name
    args = ["render", "CHLG-Demo", "--notebooks", demo_root, "--student", 3, "--out", out, "--var", "BRANDING=Acme"]
    r = wod(*args, "--password", "Pw-1234567")
    assert r.returncode == 0, r.stderr
    assert "Pw-1234567" not in r.stdout + r.stderr
    nb, text = _readme_text(out)
    assert text == "You are student 3 on Acme, challenge mode."
    assert "".join(nb["cells"][2]["source"]) == "Your password: Pw-1234567"
    assert nb["cells"][1]["execution_count"] is None and nb["cells"][1]["outputs"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [home_name]  # no scratch left behind
    done = wod("completion", out / "WKSHP-Demo", "--json")
    assert json.loads(done.stdout)["ratio"] == 0

    # again: a home named student<N> is re-provisioned as the service does; any other folder is kept
    (out / "mine.txt").write_text("x")
    r = wod(*args)
    if home_name == "student3":
        assert r.returncode == 0, r.stderr
        assert not (out / "mine.txt").exists()
        assert "".join(_readme_text(out)[0]["cells"][2]["source"]).startswith("Your password: ")
        assert "Pw-1234567" not in "".join(_readme_text(out)[0]["cells"][2]["source"])  # a new random password
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [home_name]  # nothing of ours beside it
    else:
        assert_bad_input(r, "not empty")
        assert (out / "mine.txt").exists()


def test_render_vars_file_and_var_wins(tmp_path, demo_root):
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("BRANDING: FromFile\nOTHER: 1\n")
    out = tmp_path / "h"
    r = wod("render", "WKSHP-Demo", "--notebooks", demo_root, "--student", 1, "--out", out, "--vars-file", vars_file)
    assert r.returncode == 0, r.stderr
    assert _readme_text(out)[1] == "You are student 1 on FromFile."
    out2 = tmp_path / "h2"
    r = wod("render", "WKSHP-Demo", "--notebooks", demo_root, "--student", 1, "--out", out2,
            "--vars-file", vars_file, "--var", "BRANDING=FromVar")
    assert r.returncode == 0, r.stderr
    assert _readme_text(out2)[1] == "You are student 1 on FromVar."


def test_render_lenient(tmp_path, demo_root):
    out = tmp_path / "student7"
    r = wod("render", "WKSHP-Undefined", "--notebooks", demo_root, "--student", 7, "--out", out, "--lenient")
    assert r.returncode == 0, r.stderr
    assert _readme_text(out, "WKSHP-Undefined")[1] == ""


def test_render_bad_input_writes_nothing(tmp_path, demo_root):
    area = tmp_path / "area"
    area.mkdir()
    (area / "occupied").mkdir()
    (area / "occupied" / "keep.txt").write_text("mine")
    (area / "bad.yml").write_text("BRANDING: [unclosed\n")
    (area / "list.yml").write_text("- a\n- b\n")
    (tmp_path / "elsewhere").mkdir()
    (area / "student2").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    before = snapshot(area)
    base = ["--notebooks", demo_root]
    cases = [
        (["../WKSHP-Demo", *base, "--student", 1, "--out", area / "h"], "may not contain"),
        (["/etc/WKSHP-Demo", *base, "--student", 1, "--out", area / "h"], "absolute path"),
        (["Demo", *base, "--student", 1, "--out", area / "h"], "must start with WKSHP- or CHLG-"),
        (["WKSHP-Nope", *base, "--student", 1, "--out", area / "h"], "No workshop WKSHP-Nope"),
        (["WKSHP-Demo", *base, "--student", 6, "--out", area / "h"], "outside the range [1, 5]"),
        (["WKSHP-Demo", *base, "--student", 0, "--out", area / "h"], "1 or more"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "h", "--var", "NOEQUALS"], "KEY=VALUE"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "h", "--var", "a b=1"], "KEY=VALUE"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "h", "--vars-file", area / "bad.yml"], "invalid YAML"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "h", "--vars-file", area / "list.yml"], "mapping"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "h", "--vars-file", area / "none.yml"], "none.yml"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "occupied"], "not empty"),
        (["WKSHP-Demo", *base, "--student", 1, "--out", area / "occupied" / "keep.txt"], "not a folder"),
        (["WKSHP-Demo", *base, "--student", 2, "--out", area / "student2"], "outside the students folder"),
        (["WKSHP-Demo", "--notebooks", area / "nope", "--student", 1, "--out", area / "h"], "does not exist"),
        (["WKSHP-Undefined", *base, "--student", 7, "--out", area / "h"], "NO_SUCH_VARIABLE"),
        (["WKSHP-Undefined", *base, "--student", 7, "--out", area / "new" / "student7"], "NO_SUCH_VARIABLE"),
    ]
    for args, words in cases:
        assert_bad_input(wod("render", *args), words)
        assert snapshot(area) == before, args
    assert not any((tmp_path / "elsewhere").iterdir())
