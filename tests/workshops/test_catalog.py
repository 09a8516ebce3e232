"""The workshop catalog: names, wod.yml parsing and validation, ranges, the real corpus's problems."""

import json
import shutil
from pathlib import Path

import pytest

from wod_jupyterhub import errors
from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.workshops.catalog import WORKSHOP_NAME, Catalog, load_catalog, parse_workshop_name

README = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}\n'


def make_ws(root, name, wod_yml, readme=True):
    folder = root / name
    folder.mkdir(parents=True)
    if wod_yml is not None:
        (folder / "wod.yml").write_text(wod_yml)
    if readme:
        (folder / "0-ReadMeFirst.ipynb").write_text(README)
    return folder


def yml(rng="[1,5]", extra=""):
    return f"%YAML 1.1\n# meta\n---\nname: 'Sample'\nactive: true\ncapacity: 5\nrange: {rng}\nreset: false\n{extra}"


@pytest.mark.parametrize(
    "name,expected",
    [("WKSHP-Python101", ("WKSHP-Python101", "WKSHP")), ("CHLG-Python101", ("WKSHP-Python101", "CHLG")),
     ("WKSHP-SPIFFE-SPIRE-101", ("WKSHP-SPIFFE-SPIRE-101", "WKSHP")), ("CHLG-a.b_c", ("WKSHP-a.b_c", "CHLG"))],
)
def test_parse_good_names(name, expected):
    assert parse_workshop_name(name) == expected


@pytest.mark.parametrize(
    "name,words",
    [("WKSHP-..", "'..'"), ("WKSHP-a/../b", "'/'"), ("../WKSHP-X", "'..'"), ("/etc/WKSHP-X", "absolute"),
     ("WKSHP-a/b", "'/'"), ("Python101", "WKSHP- or CHLG-"), ("WKSHP-", "WKSHP- or CHLG-"),
     ("WKSHP-a b", "WKSHP- or CHLG-"), ("wkshp-x", "WKSHP- or CHLG-"), ("", "required"), ("WKSHP-x\n", "WKSHP- or CHLG-")],
)
def test_parse_bad_names(name, words):
    with pytest.raises(errors.BadRequest) as e:
        parse_workshop_name(name)
    assert words in e.value.message
    assert e.value.status == 400


def test_real_corpus_problems(corpus):
    cat = load_catalog([corpus])
    assert len(cat.workshops) == 15
    ansible = cat.get("WKSHP-Ansible101")
    assert ansible.range == (52, 91)
    for other in ("WKSHP-Python101", "WKSHP-Python201", "WKSHP-Grommet", "WKSHP-GIT101"):
        assert any("overlaps" in p and other in p for p in ansible.problems), other
        assert any("overlaps" in p and "WKSHP-Ansible101" in p for p in cat.get(other).problems)
    api = cat.get("WKSHP-API101")
    assert any("capacity 20 exceeds the 6 students" in p for p in api.problems)
    # the documented [a-b] form, as Tensorflow101 writes it
    assert cat.get("WKSHP-Tensorflow101").range == (1981, 1985)
    assert cat.get("WKSHP-Tensorflow101").problems == []
    # spelled monoappliance in Docker101's wod.yml
    assert cat.get("WKSHP-Docker101").mono_appliance is True
    assert cat.get("CHLG-Docker101") is cat.get("WKSHP-Docker101")
    # unknown keys are kept
    assert cat.get("WKSHP-Docker101").meta["presenter"] == "Bruno Cornec"
    js = cat.to_json()
    assert {w["name"] for w in js} == set(cat.workshops)
    assert all(w["valid"] for w in js)


def test_bundled_samples_are_clean():
    cat = load_catalog([share_dir() / "workshops"])
    assert len(cat.workshops) >= 2
    for ws in cat.workshops.values():
        assert ws.problems == [], (ws.name, ws.problems)
        assert ws.valid and ws.active
    assert cat.get("WKSHP-PythonBasics").range == (1, 20)
    assert cat.get("WKSHP-StdlibData").range == (21, 40)


def test_lenient_tab_and_dash_range(tmp_path):
    make_ws(tmp_path, "WKSHP-Tab", "%YAML 1.1\n---\nname:\t'Tabbed'\nrange:\t[3-4]\nactive:\ttrue\ncapacity: 2\n")
    ws = load_catalog([tmp_path]).get("WKSHP-Tab")
    assert ws.problems == []
    assert ws.range == (3, 4) and ws.active and ws.meta["name"] == "Tabbed"


LAUGHS = "%YAML 1.1\n---\nname: 'x'\nrange: [1,2]\nl0: &l0 [lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_tabs_anywhere_between_key_and_value(tmp_path):
    # As the original read them: tabs before or after the colon, mixed with spaces, after the value.
    make_ws(
        tmp_path,
        "WKSHP-Tabs",
        "%YAML 1.1\n---\nname: \t'Tabbed: yes'\nrange \t:\t [5, 6]\t\nactive\t:true\n"
        "reset:\t \tfalse\ncategory:\t\n  - one\n  - two:\tthree\ncapacity:\t2 \t\n",
    )
    ws = load_catalog([tmp_path]).get("WKSHP-Tabs")
    assert ws.problems == [], ws.problems
    assert ws.range == (5, 6) and ws.active and not ws.reset and ws.capacity == 2
    assert ws.meta["name"] == "Tabbed: yes" and ws.meta["category"] == ["one", {"two": "three"}]


@pytest.mark.parametrize(
    "content,words",
    [
        (None, "wod.yml is missing"),
        ("%YAML 1.1\n---\nname: 'x\nrange: [1,2]\n", "not valid YAML at line"),
        ("%YAML 1.1\n---\n- just\n- a list\n", "must be a mapping"),
        ("", "is empty"),
        (yml("[9,2]"), "reversed"),
        (yml("[a,b]"), "must be integers"),
        (yml("[1.5,3]"), "must be integers"),
        (yml("[1,2,3]"), "must be written [min, max]"),
        (yml("12"), "must be written [min, max]"),
        ("%YAML 1.1\n---\nname: 'x'\n", "range is missing"),
        # A billion laughs: nine levels of aliases, each repeating the previous nine times.
        (LAUGHS, "an alias (*l0) is not allowed"),
        (yml("[1,2]", "base: &b {x: 1}\nmore:\n  <<: *b\n"), "an alias (*b) is not allowed"),
        ("name: 'x'\nrange: [1,2]\n#" + "x" * (256 * 1024) + "\n", "larger than 262144 bytes"),
    ],
)
def test_bad_wod_yml_is_reported_not_raised(tmp_path, content, words):
    make_ws(tmp_path, "WKSHP-Bad", content)
    make_ws(tmp_path, "WKSHP-Good", yml("[10,20]"))
    cat = load_catalog([tmp_path])
    bad = cat.get("WKSHP-Bad")
    assert not bad.valid
    assert any(words in p for p in bad.problems), bad.problems
    assert cat.get("WKSHP-Good").valid and cat.get("WKSHP-Good").problems == []
    with pytest.raises(errors.Unprocessable) if bad.range is None else pytest.raises(AssertionError):
        cat.check_student(bad, 1)


def test_other_validations(tmp_path):
    make_ws(tmp_path, "WKSHP-NoReadme", yml("[1,2]"), readme=False)
    make_ws(tmp_path, "WKSHP-Flags", yml("[3,4]", "beta: maybe\nmonoAppliance: true\nmultiAppliance: true\n").replace("capacity: 5", "capacity: 9"))
    make_ws(tmp_path, "WKSHP-NoName", "%YAML 1.1\n---\nrange: [5,6]\n")
    cat = load_catalog([tmp_path])
    assert any("0-ReadMeFirst.ipynb is missing" in p for p in cat.get("WKSHP-NoReadme").problems)
    assert not cat.get("WKSHP-NoReadme").valid
    flags = cat.get("WKSHP-Flags").problems
    assert any("beta must be true or false" in p for p in flags)
    assert any("both true" in p for p in flags)
    assert any("capacity 9 exceeds the 2 students" in p for p in flags)
    assert any("name is missing" in p for p in cat.get("WKSHP-NoName").problems)


def test_overlap_reported_on_both(tmp_path):
    make_ws(tmp_path, "WKSHP-A", yml("[1,10]"))
    make_ws(tmp_path, "WKSHP-B", yml("[10,20]"))
    make_ws(tmp_path, "WKSHP-C", yml("[21,30]"))
    cat = load_catalog([tmp_path])
    assert any("overlaps WKSHP-B" in p for p in cat.get("WKSHP-A").problems)
    assert any("overlaps WKSHP-A" in p for p in cat.get("WKSHP-B").problems)
    assert cat.get("WKSHP-C").problems == []


def test_public_root_wins_unless_prefer_private(tmp_path):
    pub, priv = tmp_path / "public", tmp_path / "private"
    make_ws(pub, "WKSHP-Both", yml("[1,2]"))
    make_ws(priv, "WKSHP-Both", yml("[3,4]"))
    make_ws(priv, "WKSHP-Private", yml("[5,6]"))
    assert load_catalog([pub, priv]).get("WKSHP-Both").range == (1, 2)
    assert load_catalog([pub, priv], prefer_private=True).get("WKSHP-Both").range == (3, 4)
    assert load_catalog([pub, priv]).get("WKSHP-Private").root == priv


def test_symlinked_workshop_out_of_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    make_ws(outside, "WKSHP-Evil", yml("[1,2]"))
    root = tmp_path / "root"
    root.mkdir()
    (root / "WKSHP-Evil").symlink_to(outside / "WKSHP-Evil")
    ws = load_catalog([root]).get("WKSHP-Evil")
    assert not ws.valid and ws.meta == {}
    assert "symlink leading out" in ws.problems[0]


def test_get_and_check_student(tmp_path):
    make_ws(tmp_path, "WKSHP-A", yml("[5,10]"))
    cat = load_catalog([tmp_path])
    wod = Wod(student_min=1, student_max=8)
    with pytest.raises(errors.NotFound) as e:
        cat.get("WKSHP-Missing")
    assert "No workshop WKSHP-Missing" in e.value.message
    with pytest.raises(errors.BadRequest):
        cat.get("WKSHP-../x")
    cat.check_student("CHLG-A", 5)
    cat.check_student(cat.get("WKSHP-A"), 8, wod)
    for n, words in ((4, "outside the range [5, 10]"), (11, "outside the range"), (9, "outside this backend's students 1..8")):
        with pytest.raises(errors.Unprocessable) as e:
            cat.check_student("WKSHP-A", n, wod if n != 11 else None)
        assert words in e.value.message
    with pytest.raises(errors.BadRequest):
        cat.check_student("WKSHP-A", "5")


def test_missing_root_is_not_fatal(tmp_path):
    make_ws(tmp_path / "ok", "WKSHP-A", yml("[1,2]"))
    cat = load_catalog([tmp_path / "nope", tmp_path / "ok"])
    assert isinstance(cat, Catalog) and list(cat.workshops) == ["WKSHP-A"]


def test_unreadable_bytes(tmp_path):
    folder = make_ws(tmp_path, "WKSHP-Bin", None)
    (folder / "wod.yml").write_bytes(b"\xff\xfe\x00garbage")
    ws = load_catalog([tmp_path]).get("WKSHP-Bin")
    assert any("not UTF-8" in p for p in ws.problems)
    shutil.rmtree(folder)


def test_the_api_document_states_the_catalogs_workshop_name_pattern():
    # openapi.json is static: its pattern is the catalog's, checked here rather than written by it.
    doc = json.loads((Path(__file__).resolve().parents[2] / "wod_jupyterhub" / "service" / "openapi.json").read_text())
    found = set()

    def walk(node):
        if isinstance(node, dict):
            found.update(v for k, v in node.items() if k == "pattern" and "WKSHP" in v)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert found == {WORKSHOP_NAME.pattern}
