"""Workshops as the original served them: notebooks Jupyter opens though the strict schema refuses them,
repaired once per template and reported by ``wod workshops``; every public workshop usable and provisioned,
as the hub's user and as a real Linux account (system_users mode).
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml

from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import homes
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.repair import repair
from wod_jupyterhub.workshops.templating import Renderer
from wod_jupyterhub.workshops.variables import template_variables

HERE = Path(__file__).resolve().parents[1]
VARS = yaml.safe_load((HERE / "corpus_variables.yml").read_text())
WOD_CLI = [sys.executable, "-m", "wod_jupyterhub.cli"]
# Accounts this module may create (the team's share of student numbers: 400-449).
ACCOUNT = 440


def workshop(root: Path, name: str, readme: str, rng=(1, 5)) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "wod.yml").write_text(f"name: {name}\nactive: true\nrange: [{rng[0]}, {rng[1]}]\n")
    (folder / "0-ReadMeFirst.ipynb").write_text(readme)
    return folder


def nb_text(cells, minor=4) -> str:
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": minor}, indent=1)


# Jupyter opens both; the strict schema refuses both.
MARKDOWN_WITH_OUTPUTS = nb_text(
    [
        {"cell_type": "markdown", "metadata": {}, "source": "# {{ WORKSHOP }} for {{ PASSSTU }}", "execution_count": 3, "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": "1 + 1", "execution_count": 7, "outputs": []},
    ]
)
NO_CELL_IDS = nb_text(
    [
        {"cell_type": "markdown", "metadata": {}, "source": "Password {{ PASSSTU }}"},
        {"cell_type": "code", "metadata": {}, "source": "print({{ STDID }})", "execution_count": None, "outputs": []},
    ],
    minor=5,
)
# Tags outside JSON strings: only the rendered text is a notebook, so the repair runs on it.
TAGS_OUTSIDE_STRINGS = (
    '{"cells": [{% for i in [1, 2] %}{"cell_type": "markdown", "metadata": {}, "source": "part {{ i }}", '
    '"outputs": []}{% if not loop.last %}, {% endif %}{% endfor %}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
)
NOT_JSON = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": {{ STDID }}x}\n'


def test_repair_strips_what_the_schema_forbids_and_adds_ids():
    nb = json.loads(MARKDOWN_WITH_OUTPUTS)
    fixed, changes = repair(nb)
    assert changes == ["removed execution_count, outputs from markdown cell 1"]
    assert "outputs" in nb["cells"][0], "the input is left alone"
    nbformat.validate(nbformat.from_dict(fixed))
    fixed, changes = repair(json.loads(NO_CELL_IDS))
    assert changes == ["added 2 missing cell ids"] and all(c["id"] for c in fixed["cells"])
    assert repair(json.loads(nb_text([{"cell_type": "markdown", "metadata": {}, "source": "ok"}])))[1] == []
    with pytest.raises(ValueError):
        repair({"nbformat": 3, "cells": []})


@pytest.mark.parametrize("name,text", [("markdown", MARKDOWN_WITH_OUTPUTS), ("ids", NO_CELL_IDS), ("tags", TAGS_OUTSIDE_STRINGS)])
def test_repaired_templates_provision_valid_notebooks_once_per_template(tmp_path, name, text):
    ws_dir = workshop(tmp_path / "nb", "WKSHP-Crafted", text)
    ws = load_catalog([tmp_path / "nb"]).get("WKSHP-Crafted")
    wod = Wod(notebooks=[str(tmp_path / "nb")], students_root=str(tmp_path / "students"), skel="")
    renderer = Renderer()
    seats = []
    for n in (1, 2):
        variables = template_variables(wod, ws, n, f"Pw-{n}-secret")
        seats.append(homes.provision(wod, ws, n, variables, renderer=renderer))
    notebooks = [json.loads((h / "WKSHP-Crafted" / "0-ReadMeFirst.ipynb").read_text()) for h in seats]
    for nb in notebooks:
        nbformat.validate(nbformat.from_dict(nb))  # strict: what the schema forbids is gone
    assert "Pw-1-secret" in json.dumps(notebooks[0]) or name == "tags"
    prepared = renderer.prepare(ws_dir / "0-ReadMeFirst.ipynb", "WKSHP-Crafted/0-ReadMeFirst.ipynb")
    assert prepared.repaired, "reported as repaired"
    if name != "tags":
        # Repaired once, when the template was compiled: every seat gets the same cell ids.
        assert [c.get("id") for c in notebooks[0]["cells"]] == [c.get("id") for c in notebooks[1]["cells"]]
        assert prepared.skeleton is not None, "the fast check applies to the repaired template"


def run_wod(*args):
    return subprocess.run([*WOD_CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_wod_workshops_warns_about_repairs_and_refuses_what_jupyter_cannot_open(tmp_path):
    root = tmp_path / "nb"
    workshop(root, "WKSHP-Repaired", MARKDOWN_WITH_OUTPUTS)
    workshop(root, "WKSHP-NoIds", NO_CELL_IDS, rng=(6, 9))
    workshop(root, "WKSHP-Broken", NOT_JSON, rng=(10, 12))
    r = run_wod("workshops", "--notebooks", root, "--json")
    assert r.returncode == 1, r.stderr  # WKSHP-Broken is a problem; repairs are only warnings
    by_name = {w["name"]: w for w in json.loads(r.stdout)}
    assert by_name["WKSHP-Repaired"]["valid"] and by_name["WKSHP-NoIds"]["valid"]
    assert "removed execution_count, outputs from markdown cell 1" in by_name["WKSHP-Repaired"]["warnings"][0]
    assert "added 2 missing cell ids" in by_name["WKSHP-NoIds"]["warnings"][0]
    broken = by_name["WKSHP-Broken"]
    assert not broken["valid"] and any("WKSHP-Broken/0-ReadMeFirst.ipynb" in p and "invalid JSON" in p for p in broken["problems"])
    r = run_wod("workshops", "--notebooks", root)
    lines = r.stdout.splitlines()
    assert any(line.startswith("WKSHP-Broken ") and " NO " in line for line in lines)
    assert any(line.startswith("WKSHP-Repaired ") and " yes " in line.replace("yes     yes", " yes ") for line in lines)
    assert "warning(s):" in r.stdout and "WKSHP-NoIds: WKSHP-NoIds/0-ReadMeFirst.ipynb was repaired" in r.stdout
    # --no-render reads wod.yml only: the broken template is not looked at.
    r = run_wod("workshops", "--notebooks", root, "--json", "--no-render")
    assert {w["name"]: w["valid"] for w in json.loads(r.stdout)}["WKSHP-Broken"] is True
    assert r.returncode == 0, r.stdout  # and with it, nothing is wrong


def test_every_public_workshop_is_usable_with_the_documented_variables(corpus):
    r = run_wod("workshops", "--notebooks", corpus, "--vars-file", HERE / "corpus_variables.yml", "--json")
    assert r.returncode == 1, r.stderr  # the corpus's wod.yml problems (overlapping ranges, capacities), none blocking
    workshops = json.loads(r.stdout)
    assert len(workshops) == 15
    assert [(w["name"], w["problems"]) for w in workshops if not w["valid"]] == []


@pytest.fixture
def account():
    """A real Linux account ``student440`` (uid ``uid_base + 440``), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a Linux account needs root") if not os.environ.get("CI") else pytest.fail("CI runs as root")
    wod = Wod(uid_base=21000)
    name, uid = f"student{ACCOUNT}", wod.uid_base + ACCOUNT
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)
    subprocess.run(["groupadd", "--gid", str(uid), name], check=True)
    subprocess.run(["useradd", "--uid", str(uid), "--gid", str(uid), "--no-create-home", "--shell", "/bin/bash", name], check=True)
    try:
        yield wod, pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.mark.root(reason="creating a Linux account needs root")
@pytest.mark.root(reason="creating a Linux account needs root")
def test_every_public_workshop_provisions_for_a_real_system_user(corpus, account):
    wod, entry = account
    # pytest's tmp folders are root's alone (0700): the student could not reach a home in there.
    students = Path(tempfile.mkdtemp(prefix="wod-test-students-"))
    students.chmod(0o755)
    try:
        _provision_all(corpus, wod, entry, students)
    finally:
        homes.drain()
        shutil.rmtree(students, ignore_errors=True)


def _provision_all(corpus, wod, entry, students):
    wod = Wod(
        notebooks=[str(corpus)], students_root=str(students), variables=VARS, system_users=True,
        uid_base=wod.uid_base, skel="",
    )  # fmt: skip
    renderer = Renderer()
    catalog = load_catalog([corpus])
    for name, ws in sorted(catalog.workshops.items()):
        variables = template_variables(wod, ws, ACCOUNT, "Pw-system-1")
        home = homes.provision(wod, ws, ACCOUNT, variables, renderer=renderer, uid=entry.pw_uid, gid=entry.pw_gid)
        owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [home, *home.rglob("*")]}
        assert owners == {(entry.pw_uid, entry.pw_gid)}, (name, owners)
        notebooks = list((home / name).rglob("*.ipynb"))
        assert notebooks, name
        for path in notebooks:
            nbformat.validate(nbformat.read(str(path), as_version=nbformat.NO_CONVERT))
        # The account itself can read what it got (its own files, not root's).
        readme = home / name / "0-ReadMeFirst.ipynb"
        r = subprocess.run(["su", "-s", "/bin/sh", entry.pw_name, "-c", f"head -c 1 '{readme}'"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "{", (name, r.stderr)
