"""Provisioning from templates: the real corpus, the samples, and every bad input.

Documented variable set used to render the real public workshops (``VARS``
below): the configured globals of the original's ``all.yml`` / ``wod-backend``
files that the notebooks print (BRANDING*, SURVEY*, WODBEEXTFQDN, JPHUB) plus,
for the workshops that talk to an appliance, what their create hooks or the
backend inventory provided: ``IP-WKSHP-<Name>`` (read through
``hostvars[inventory_hostname]``), ``HTTPPORT-WKSHP-Ansible101``, ``HTTPPORT``,
``SPARKPORT`` and the per-seat tokens (DATAVISUTOK, MLTOK, SPARKTOK,
TENSORFLOWTOK, LLM101_*). STDID is the first student of each range; PASSSTU a
password.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import nbformat
import pytest
import yaml

from tests.homeutil import side_entries, stages
from wod_jupyterhub import errors
from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.seats import fdtrees, homes
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.templating import Renderer, RenderError, is_templated
from wod_jupyterhub.workshops.trees import AUTHOR_FILES
from wod_jupyterhub.workshops.variables import template_variables

# The documented variable set (shared with bench/provision.py).
VARS = yaml.safe_load((Path(__file__).parents[1] / "corpus_variables.yml").read_text())
PASSWORD = "Pa55word-x"
HOST = "wodhost"


def make_wod(tmp_path, **kw):
    kw.setdefault("variables", VARS)
    return Wod(students_root=str(tmp_path / "students"), **kw)


def snapshot(folder: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(folder))] = None if p.is_dir() else p.read_bytes()
    return out


def leftovers(wod):
    homes.drain()
    return side_entries(wod.students_root)


def provision(wod, ws, n=None, password=PASSWORD, modews="WKSHP", renderer=None, **kw):
    n = ws.range[0] if n is None else n
    variables = template_variables(wod, ws, n, password, modews=modews, hostname=HOST)
    return homes.provision(wod, ws, n, variables, renderer=renderer, **kw)


def expected_marks(source: str) -> int:
    """``{{``/``{%`` a template legitimately prints: raw blocks and string constants such as ``{{ '{{' }}``."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)
    count, in_var, const = 0, False, []
    for _, kind, value in env.lex(source):
        if kind == "data":
            count += value.count("{{") + value.count("{%")
        elif kind == "variable_begin":
            in_var, const = True, []
        elif kind == "variable_end":
            if len(const) == 1:
                text = const[0][1:-1]
                count += text.count("{{") + text.count("{%")
            in_var = False
        elif in_var and kind != "whitespace":
            const.append(value if kind == "string" else "\0\0")
    return count


# -- the real corpus ------------------------------------------------------


@pytest.mark.parametrize("modews", ["WKSHP", "CHLG"])
def test_every_public_workshop_renders(corpus, tmp_path, modews):
    wod = make_wod(tmp_path)
    cat = load_catalog([corpus])
    failures = {}
    for name, ws in sorted(cat.workshops.items()):
        try:
            home = provision(wod, ws, modews=modews)
        except RenderError as e:
            failures[name] = e
            continue
        rendered = home / name
        notebooks = 0
        for tpl in ws.path.rglob("*"):
            if not tpl.is_file():
                continue
            out = rendered / tpl.relative_to(ws.path)
            if str(tpl.relative_to(ws.path)) in AUTHOR_FILES:
                assert not out.exists(), out  # the authors' files stay out of a home
                continue
            assert out.is_file(), out
            if not is_templated(tpl.name):
                assert out.read_bytes() == tpl.read_bytes()
                continue
            text = out.read_text()
            if tpl.suffix == ".ipynb":
                notebooks += 1
                nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
                nbformat.validate(nb)
                for cell in nb.cells:
                    if cell.cell_type == "code":
                        assert cell.outputs == [] and cell.execution_count is None
            marks = text.count("{{") + text.count("{%")
            assert marks == expected_marks(tpl.read_text()), f"template syntax left in {out}"
        assert notebooks >= 2
        assert (home / homes.WORKSPACE_DIR / homes.WORKSPACE_FILE).is_file()
    # No public workshop is invalid once rendered with this documented variable
    # set (checked with JSON escaping on); a failure would name its file.
    assert failures == {}, {k: str(v) for k, v in failures.items()}
    assert leftovers(wod) == []


def _reference_render(path: Path, variables: dict) -> str:
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(path.read_text(encoding="utf-8")).render(variables)


def test_byte_identical_to_plain_jinja_without_clearing(corpus, tmp_path):
    """Reference: plain Jinja2 with Ansible's options; the Ansible test below checks that reference against Ansible."""
    wod = make_wod(tmp_path, clear_outputs=False)
    renderer = Renderer(clear_outputs=False)
    cat = load_catalog([corpus])
    compared = 0
    for name, ws in sorted(cat.workshops.items()):
        n = ws.range[0]
        variables = template_variables(wod, ws, n, PASSWORD, hostname=HOST)
        home = homes.provision(wod, ws, n, variables, renderer=renderer)
        for tpl in ws.path.rglob("*"):
            if tpl.is_file() and is_templated(tpl.name):
                got = (home / name / tpl.relative_to(ws.path)).read_bytes()
                assert got == _reference_render(tpl, variables).encode(), tpl
                compared += 1
    assert compared >= 60


def _ansible_playbook():
    # ansible-core is in the test extra, so the venv running pytest has it.
    beside = str(Path(sys.executable).parent / "ansible-playbook")
    for candidate in (os.environ.get("WOD_ANSIBLE_PLAYBOOK"), beside, shutil.which("ansible-playbook")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.slow  # a real ansible-playbook run
def test_byte_identical_to_ansible(corpus, tmp_path):
    """The real thing, when ansible-core is at hand (WOD_ANSIBLE_PLAYBOOK or on PATH): Ansible's template module."""
    playbook = _ansible_playbook()
    if not playbook:
        if os.environ.get("CI"):
            pytest.fail("ansible-core (test extra) is not installed: cannot compare with Ansible's template module")
        pytest.skip("ansible-playbook not found (set WOD_ANSIBLE_PLAYBOOK); the plain-Jinja2 reference test still ran")
    wod = make_wod(tmp_path, clear_outputs=False)
    cat = load_catalog([corpus])
    names = ["WKSHP-Docker101", "WKSHP-Ansible101"]  # hostvars, PASSSTU, STDID, {{ '{{' }}, {% if %}
    tasks, hostvars = [], {}
    for name in names:
        ws = cat.get(name)
        variables = template_variables(wod, ws, ws.range[0], PASSWORD, hostname=HOST)
        homes.provision(wod, ws, ws.range[0], variables, renderer=Renderer(clear_outputs=False))
        out = tmp_path / "ansible" / name
        out.mkdir(parents=True)
        simple = {k: v for k, v in variables.items() if k.isidentifier() and k not in ("hostvars", "inventory_hostname")}
        hostvars.update({k: v for k, v in VARS.items() if not k.isidentifier()})
        tasks.append(
            {
                "template": {"src": "{{ item }}", "dest": f"{out}/{{{{ item | basename }}}}"},
                "vars": simple,
                "loop": f"{{{{ query('fileglob', '{ws.path}/*.ipynb') }}}}",
            }
        )
    hostvars.update(ansible_connection="local", ansible_python_interpreter=str(Path(playbook).parent / "python"))
    (tmp_path / "inv.json").write_text(json.dumps({"all": {"hosts": {HOST: hostvars}}}))
    (tmp_path / "pb.json").write_text(json.dumps([{"hosts": HOST, "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run(
        [playbook, "-i", str(tmp_path / "inv.json"), str(tmp_path / "pb.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    compared = 0
    for name in names:
        ws = cat.get(name)
        for tpl in ws.path.glob("*.ipynb"):
            ours = (Path(wod.students_root) / f"student{ws.range[0]}" / name / tpl.name).read_bytes()
            theirs = (tmp_path / "ansible" / name / tpl.name).read_bytes()
            assert ours == theirs, tpl
            compared += 1
    assert compared >= 10


# -- the bundled samples ----------------------------------------------------


def test_sample_provision_layout_and_escaping(tmp_path):
    wod = make_wod(tmp_path, variables={"BRANDING": 'Brand "B" \\ co', "BRANDINGWOD": "WoD"})
    cat = load_catalog([share_dir() / "workshops"])
    ws = cat.get("WKSHP-PythonBasics")
    password = 'a"b\\c\nd\te'
    home = provision(wod, ws, 3, password=password)
    assert home == Path(wod.students_root) / "student3"
    assert (home / ".bashrc").is_file() and (home / ".jupyter").is_dir()
    workspace = json.loads((home / homes.WORKSPACE_DIR / homes.WORKSPACE_FILE).read_text())
    layout = workspace["data"]["layout-restorer:data"]["main"]
    assert layout["current"] == "notebook:WKSHP-PythonBasics/0-ReadMeFirst.ipynb"
    assert workspace["metadata"]["id"] == "default"
    assert homes.WORKSPACE_FILE == "default-37a8.jupyterlab-workspace"
    nb = nbformat.read(str(home / "WKSHP-PythonBasics" / "0-ReadMeFirst.ipynb"), as_version=4)
    nbformat.validate(nb)
    intro = nb.cells[0].source
    assert f"your password is `{password}`" in intro  # shown literally, newline and all
    assert 'Brand "B" \\ co' in intro
    assert "student3" in intro and "self-paced" in intro and "challenge" not in intro
    raw = nb.cells[4].source
    assert "{{ this is not a variable }} and {% neither is this %}" in raw
    assert nb.cells[1].source == "print('Hello, student3!')"


def test_challenge_mode(tmp_path):
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    ws = load_catalog([share_dir() / "workshops"]).get("CHLG-PythonBasics")
    home = provision(wod, ws, 2, modews="CHLG")
    text = (home / "WKSHP-PythonBasics" / "0-ReadMeFirst.ipynb").read_text()
    assert "This is a challenge" in text and "self-paced" not in text


def test_non_notebook_templates_are_not_json_escaped(tmp_path):
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-StdlibData")
    home = provision(wod, ws, 21)
    assert (home / "WKSHP-StdlibData" / "helper.py").read_text().startswith("# rendered for student21\nSTUDENT = 21\n")


def test_reprovision_replaces_home_and_uid(tmp_path):
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    home = provision(wod, ws, 4)
    (home / "student-work.txt").write_text("mine")
    provision(wod, ws, 4, uid=43210, gid=43211)
    assert not (home / "student-work.txt").exists()
    if os.geteuid() == 0:
        for p in [home, *home.rglob("*")]:
            st = p.lstat()
            assert (st.st_uid, st.st_gid) == (43210, 43211), p
    assert leftovers(wod) == []


def test_lenient_undefined(tmp_path):
    wod = make_wod(tmp_path, variables={}, strict_undefined=False)
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    home = provision(wod, ws, 5, renderer=Renderer(strict_undefined=False))
    assert "brought to you by ." in (home / "WKSHP-PythonBasics" / "0-ReadMeFirst.ipynb").read_text()


def test_renderer_cache(tmp_path):
    f = tmp_path / "x.sh"
    f.write_text("echo {{ STDID }}\n")
    r = Renderer()
    assert r.render_file(f, "x.sh", {"STDID": 1}) == "echo 1\n"
    assert r.prepare(f, "x.sh") is r.prepare(f, "x.sh")
    f.write_text("echo again {{ STDID }}\n")
    os.utime(f, ns=(1, 1))
    assert r.render_file(f, "x.sh", {"STDID": 2}) == "echo again 2\n"


# -- bad input: clear error, nothing changed ----------------------------------

NB = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["line one\n", "SOURCE"]},
        {"cell_type": "code", "execution_count": 3, "metadata": {}, "outputs": [], "source": ["x = 1"]},
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 4,
}


def bad_workshop(root: Path, source_line: str = "hello", raw_text: str | None = None, extra: dict | None = None):
    ws = root / "WKSHP-Bad"
    ws.mkdir(parents=True)
    (ws / "wod.yml").write_text("%YAML 1.1\n---\nname: 'Bad'\nrange: [1,9]\nactive: true\n")
    nb = json.loads(json.dumps(NB))
    nb["cells"][0]["source"][1] = source_line
    (ws / "0-ReadMeFirst.ipynb").write_text(raw_text if raw_text is not None else json.dumps(nb, indent=1) + "\n")
    for name, text in (extra or {}).items():
        (ws / name).write_text(text)
    return load_catalog([root]).get("WKSHP-Bad")


BAD_LINES = [
    ("{{ NOPE }}", "line 8: variable NOPE is undefined", True),
    ("{{ hostvars[inventory_hostname]['IP-WKSHP-Nope'] }}", "variable IP-WKSHP-Nope is undefined", True),
] + [
    (line, words, strict)
    for line, words in (
        ("{% if %}", "line 8: template syntax error"),
        ("{{ ''.__class__.__mro__ }}", "refused by the template sandbox"),
        ("{{ cycler.__init__.__globals__ }}", "refused by the template sandbox"),
    )
    for strict in (True, False)  # the sandbox and the parser hold in lenient mode too
]


@pytest.mark.parametrize("line,words,strict", BAD_LINES)
def test_bad_templates_leave_home_untouched(tmp_path, line, words, strict):
    wod = make_wod(tmp_path, strict_undefined=strict)
    good = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    home = provision(wod, good, 1)
    before = snapshot(home)
    ws = bad_workshop(tmp_path / "nb", line)
    with pytest.raises(RenderError) as e:
        provision(wod, ws, 1, renderer=Renderer(strict_undefined=strict))
    assert "WKSHP-Bad/0-ReadMeFirst.ipynb" in e.value.message and words in e.value.message, e.value.message
    assert e.value.status == 422 and e.value.code == "render_failed"
    assert e.value.file == "WKSHP-Bad/0-ReadMeFirst.ipynb"
    assert snapshot(home) == before
    assert leftovers(wod) == []


def test_undefined_names_variable_file_and_line(tmp_path):
    wod = make_wod(tmp_path)
    ws = bad_workshop(tmp_path / "nb", extra={"setup.sh": "#!/bin/sh\necho ok\necho {{ MISSING_VAR }}\n"})
    with pytest.raises(RenderError) as e:
        provision(wod, ws, 1)
    assert (e.value.file, e.value.line, e.value.variable) == ("WKSHP-Bad/setup.sh", 3, "MISSING_VAR")
    assert e.value.to_json()["variable"] == "MISSING_VAR"
    assert not (Path(wod.students_root) / "student1").exists()


@pytest.mark.parametrize(
    "raw,words",
    [
        # a value printed as a number: the rendered text is not JSON
        ('{"cells": [], "metadata": {}, "nbformat": {{ PASSSTU }}, "nbformat_minor": 4}', "invalid JSON"),
        # JSON, but not a notebook once rendered
        ('{"cells": [{"cell_type": "{{ BRANDING }}", "metadata": {}, "source": []}], "metadata": {}, '
         '"nbformat": 4, "nbformat_minor": 4}', "not a valid notebook once rendered"),
        ('{"cells": [], "metadata": {}, "nbformat": 3, "nbformat_minor": 0}', "nbformat 3.0 is not supported"),
    ],
)
def test_renders_to_invalid_notebook(tmp_path, raw, words):
    wod = make_wod(tmp_path, variables={"BRANDING": "fancy"})
    ws = bad_workshop(tmp_path / "nb", raw_text=raw)
    with pytest.raises(RenderError) as e:
        provision(wod, ws, 1)
    assert words in e.value.message and "WKSHP-Bad/0-ReadMeFirst.ipynb" in e.value.message
    assert not (Path(wod.students_root) / "student1").exists()


def test_structure_changing_template_is_fully_validated(tmp_path):
    """A block adding a cell does not match the validated skeleton: the full check runs and accepts it."""
    raw = json.dumps(NB, indent=1).replace('"SOURCE"', '"SOURCE"]}, {"cell_type": "raw", "metadata": {}, "source": ["{{ STDID }}"')
    wod = make_wod(tmp_path)
    ws = bad_workshop(tmp_path / "nb", raw_text=raw + "\n")
    home = provision(wod, ws, 1)
    nb = nbformat.read(str(home / "WKSHP-Bad" / "0-ReadMeFirst.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert [c.cell_type for c in nb.cells] == ["markdown", "raw", "code"]
    assert nb.cells[2].execution_count is None


# Values a render must never let out of their JSON string (the fast path renders without re-checking).
HOSTILE = ['"', "\\", '\\"', "\\u00", '"]}, {"cell_type": "raw"', "\n\r\t\x00\x1f", "{{ X }}", "\u2028é😀", "Z"]


def _notebook_with(source: str, **cell):
    nb = json.loads(json.dumps(NB))
    nb["cells"][0]["source"] = [source]
    nb["cells"][0].update(cell)
    return json.dumps(nb, indent=1) + "\n"


OUTPUT = {"output_type": "stream", "name": "stdout", "text": ["{{ X }}"]}


@pytest.mark.parametrize(
    "raw,unchecked,printed",
    [
        # prints and comments inside cell sources, anywhere in the string: every render is a valid notebook
        (_notebook_with("{{ X }}"), True, "{X}"),
        (_notebook_with("a {{ X }} b {{- X -}} c {# note #}\\n"), True, "a {X} b{X}c \\n"),
        (_notebook_with("\\\\{{ X }}\\n"), True, "\\\\{X}\\n"),  # right after a whole escaped backslash
        (_notebook_with("no tag at all"), True, "no tag at all"),
        # checked on every render: a block may drop or repeat JSON structure
        (_notebook_with("{% if X %}{{ X }}{% endif %}"), False, "{X}"),
        (_notebook_with("{% raw %}{{ X }}{% endraw %}"), False, "{{ X }}"),
        # checked: a print outside cell sources (cell metadata; outputs, cleared after the render)
        (_notebook_with("x", metadata={"tag": "{{ X }}"}), False, "x"),
        (_notebook_with("x", cell_type="code", execution_count=1, outputs=[OUTPUT]), False, "x"),
    ],
)
def test_only_templates_whose_tags_print_into_cell_sources_skip_the_check(tmp_path, raw, unchecked, printed):
    """A notebook is checked once rendered unless no render can break it (``_tags_only_in_sources``)."""
    path = tmp_path / "0-Note.ipynb"
    path.write_text(raw)
    renderer = Renderer()
    assert renderer.prepare(path, path.name).tags_in_sources is unchecked
    for value in HOSTILE:
        nb = nbformat.reads(renderer.render_file(path, path.name, {"X": value}), as_version=4)
        nbformat.validate(nb)  # still a notebook, whatever the value
        assert nb.cells[0].source == printed.replace("{X}", value)  # and the value stayed in its string
        if "tag" in nb.cells[0].metadata:
            assert nb.cells[0].metadata["tag"] == value
        if nb.cells[0].cell_type == "code":
            assert nb.cells[0].outputs == []


def test_a_print_after_a_partial_escape_is_checked(tmp_path):
    """``\\u00{{ X }}`` parses as no notebook before rendering: no skeleton, so every render is checked."""
    path = tmp_path / "0-Note.ipynb"
    path.write_text(_notebook_with("TAG").replace("TAG", "\\u00{{ X }}"))
    renderer = Renderer()
    assert renderer.prepare(path, path.name).tags_in_sources is False
    assert json.loads(renderer.render_file(path, path.name, {"X": "41"}))["cells"][0]["source"] == ["A"]
    with pytest.raises(RenderError, match="invalid JSON"):
        renderer.render_file(path, path.name, {"X": "zz"})


def test_symlinked_home_outside_is_refused(tmp_path):
    wod = make_wod(tmp_path)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    Path(wod.students_root).mkdir()
    (Path(wod.students_root) / "student1").symlink_to(outside)
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    for action in (lambda: provision(wod, ws, 1), lambda: homes.erase_home(wod, 1), lambda: homes.home_path(wod, 1)):
        with pytest.raises(errors.BadRequest) as e:
            action()
        assert "outside the students folder" in e.value.message
    assert (outside / "keep.txt").read_text() == "keep" and sorted(os.listdir(outside)) == ["keep.txt"]
    assert leftovers(wod) == []


def test_symlink_out_of_notebooks_root_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    ws = bad_workshop(tmp_path / "nb")
    (ws.path / "leak.txt").symlink_to(secret)
    wod = make_wod(tmp_path)
    with pytest.raises(RenderError) as e:
        provision(wod, ws, 1)
    assert "WKSHP-Bad/leak.txt is a symlink leading out of the notebooks root" in e.value.message
    assert not (Path(wod.students_root) / "student1").exists()
    # a symlink staying inside the root is read as its target
    (ws.path / "leak.txt").unlink()
    (ws.path / "same.md").write_text("inside")
    (ws.path / "alias.md").symlink_to(ws.path / "same.md")
    home = provision(wod, ws, 1)
    assert (home / "WKSHP-Bad" / "alias.md").read_text() == "inside" and not (home / "WKSHP-Bad" / "alias.md").is_symlink()


def test_missing_workshop_folder_or_readme(tmp_path):
    wod = make_wod(tmp_path)
    ws = bad_workshop(tmp_path / "nb")
    (ws.path / "0-ReadMeFirst.ipynb").unlink()
    with pytest.raises(errors.Unprocessable) as e:
        provision(wod, ws, 1)
    assert "has no 0-ReadMeFirst.ipynb" in e.value.message
    shutil.rmtree(ws.path)
    with pytest.raises(errors.NotFound):
        provision(wod, ws, 1)
    assert not (Path(wod.students_root) / "student1").exists()


def test_erase_home(tmp_path):
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    homes.erase_home(wod, 7)  # nothing there yet: fine
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    home = provision(wod, ws, 7)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "f").write_text("x")
    (home / "link").symlink_to(target)
    homes.erase_home(wod, 7)
    assert not os.path.lexists(home) and (target / "f").read_text() == "x"
    assert leftovers(wod) == []
    with pytest.raises(errors.Unprocessable) as e:
        homes.erase_home(wod, 0)
    assert e.value.code == "student_out_of_range"


def test_template_variables_layers(tmp_path):
    vdir = tmp_path / "vars"
    vdir.mkdir()
    (vdir / "variables_WKSHP-PythonBasics.yml").write_text("%YAML 1.1\n---\nBRANDING: from-file\nX: file\nSTDID: 999\n")
    wod = make_wod(tmp_path, variables={"BRANDING": "global", "X": "global", "Y": "global"}, variables_dirs=[str(vdir)])
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    v = template_variables(wod, ws, 3, "pw", modews="CHLG", hook_vars={"X": "hook"}, hostname="h1")
    assert (v["BRANDING"], v["X"], v["Y"], v["STDID"], v["PASSSTU"]) == ("from-file", "hook", "global", 3, "pw")
    assert (v["MODEWS"], v["WORKSHOP"], v["DIR"], v["CHALLENGE"]) == ("CHLG", "WKSHP-PythonBasics", "", True)
    assert v["inventory_hostname"] == "h1" and v["hostvars"]["h1"]["X"] == "hook"
    (vdir / "variables_WKSHP-PythonBasics.yml").write_text("- not\n- a mapping\n")
    with pytest.raises(errors.Unprocessable) as e:
        template_variables(wod, ws, 3, "pw")
    assert "cannot be read" in e.value.message
    with pytest.raises(errors.BadRequest):
        template_variables(wod, ws, 3, "pw", modews="OTHER")


# -- staged seats -------------------------------------------------------------


def modes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.lstat().st_mode for p in folder.rglob("*")}


def staged(wod) -> list:
    return stages(wod.students_root)


def own_workshop(tmp_path, name="WKSHP-PythonBasics"):
    """A private copy of a sample workshop, to edit, with a binary (copied) file beside its templates."""
    root = tmp_path / "nb"
    shutil.copytree(share_dir() / "workshops" / name, root / name)
    (root / name / "Pictures").mkdir(exist_ok=True)
    (root / name / "Pictures" / "logo.png").write_bytes(bytes(range(256)) * 64)
    return root, load_catalog([root]).get(name)


def test_a_staged_seat_comes_out_exactly_as_a_full_provision(tmp_path):
    root, ws = own_workshop(tmp_path)
    full = make_wod(tmp_path / "full", variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    fast = make_wod(tmp_path / "fast", variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    info = {}
    provision(full, ws, 3, info=info)
    assert info == {"staged": False}

    assert homes.stage(fast, ws, 3) is True
    assert homes.stage(fast, ws, 3) is False  # already there: nothing copied twice
    [stage] = staged(fast)
    # Only what the CREATE will not render: the copied files, and for a templated file an empty placeholder
    # with its mode (nothing rendered, so nothing of the student's password).
    assert (Path(fast.students_root) / stage / ws.name / "Pictures" / "logo.png").is_file()
    placeholder = Path(fast.students_root) / stage / ws.name / "0-ReadMeFirst.ipynb"
    assert placeholder.stat().st_size == 0
    full_readme = Path(full.students_root) / "student3" / ws.name / "0-ReadMeFirst.ipynb"
    assert placeholder.stat().st_mode == full_readme.stat().st_mode
    assert not (Path(fast.students_root) / "student3").exists()

    info = {}
    home = provision(fast, ws, 3, info=info)
    assert info == {"staged": True}
    reference = Path(full.students_root) / "student3"
    assert snapshot(home) == snapshot(reference)
    assert modes(home) == modes(reference)
    assert leftovers(fast) == []


def test_a_staged_create_makes_no_new_file(tmp_path):
    """It renders into the stage's files and takes the stage's folder as it is: every inode of the home is the
    stage's (making a file is what costs a CREATE most on some disks, see trees.write_tree)."""
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    homes.stage(wod, ws, 3)
    [stage] = staged(wod)
    top = Path(wod.students_root) / stage
    inodes = {str(p.relative_to(top)): p.lstat().st_ino for p in top.rglob("*")} | {".": top.lstat().st_ino}
    info = {}
    home = provision(wod, ws, 3, info=info)
    assert info == {"staged": True}
    assert {str(p.relative_to(home)): p.lstat().st_ino for p in home.rglob("*")} | {".": home.lstat().st_ino} == inodes
    assert json.loads((home / ws.name / "0-ReadMeFirst.ipynb").read_text())["cells"]  # rendered into the placeholder


def test_a_stage_without_placeholders_still_gives_the_whole_home(tmp_path):
    """A stage missing a placeholder (none of ours does; an admin's hand, a disk full while staging): the file is
    made, with its mode."""
    _, ws = own_workshop(tmp_path)
    full = make_wod(tmp_path / "full", variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    fast = make_wod(tmp_path / "fast", variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    reference = provision(full, ws, 4)
    homes.stage(fast, ws, 4)
    [stage] = staged(fast)
    (Path(fast.students_root) / stage / ws.name / "0-ReadMeFirst.ipynb").unlink()
    info = {}
    home = provision(fast, ws, 4, info=info)
    assert info == {"staged": True}
    assert snapshot(home) == snapshot(reference)
    assert modes(home) == modes(reference)


def test_a_stage_erased_while_it_is_built_is_never_published(tmp_path, monkeypatch):
    """A CREATE or an erase of the seat sweeps a stager's folder while it still writes: the stager stops with
    FileNotFoundError (which the preparer takes for "not needed") and does not make the folder again."""
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    write_tree = homes.write_tree

    def erased_meanwhile(*args, **kwargs):
        written = write_tree(*args, **kwargs)
        homes.erase_home(wod, 3)
        return written

    monkeypatch.setattr(homes, "write_tree", erased_meanwhile)
    with pytest.raises(FileNotFoundError):
        homes.stage(wod, ws, 3)
    monkeypatch.setattr(homes, "write_tree", write_tree)
    assert side_entries(wod.students_root) == []
    info = {}
    home = provision(wod, ws, 3, info=info)
    assert info == {"staged": False} and (home / ws.name / "0-ReadMeFirst.ipynb").stat().st_size > 0


def test_an_erase_never_empties_a_stage_published_under_it(tmp_path, monkeypatch):
    """The eraser has opened a stager's folder when the stager renames it to its published name: the eraser
    claimed it by renaming it first, so the stage is either whole or gone, never published empty."""
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    homes.stage(wod, ws, 3)
    [stage] = staged(wod)
    published = Path(wod.students_root) / stage
    building = published.with_name(f"staging-{os.getpid()}-x")
    os.rename(published, building)  # a live stager's work in progress, about to be published
    writable = fdtrees._writable

    def published_now(fd):  # the eraser opened the folder: the stager's rename lands now
        monkeypatch.setattr(fdtrees, "_writable", writable)
        os.rename(building, published)
        writable(fd)

    monkeypatch.setattr(fdtrees, "_writable", published_now)
    homes.erase_home(wod, 3)
    assert not published.exists() or (published / ws.name / "Pictures" / "logo.png").is_file()
    info = {}
    home = provision(wod, ws, 3, info=info)
    assert (home / ws.name / "Pictures" / "logo.png").is_file()
    assert (home / ws.name / "0-ReadMeFirst.ipynb").stat().st_size > 0


def test_the_real_corpus_staged(corpus, tmp_path):
    ws = load_catalog([corpus]).get("WKSHP-Docker101")
    full, fast = make_wod(tmp_path / "full"), make_wod(tmp_path / "fast")
    n = ws.range[0]
    provision(full, ws, n)
    homes.stage(fast, ws, n)
    info = {}
    home = provision(fast, ws, n, info=info)
    assert info["staged"] and snapshot(home) == snapshot(Path(full.students_root) / f"student{n}")


@pytest.mark.parametrize("change", ["edit a copied file", "add a file", "make a template executable", "new boot", "other workshop"])
def test_an_outdated_stage_is_never_used(tmp_path, monkeypatch, change):
    root, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    homes.stage(wod, ws, 5)
    [old] = staged(wod)
    if change == "edit a copied file":
        (root / ws.name / "Pictures" / "logo.png").write_bytes(b"a new picture")
    elif change == "add a file":
        (root / ws.name / "notes.txt").write_text("added after the stage")
    elif change == "make a template executable":
        # the stage's placeholder has the old mode
        (root / ws.name / "0-ReadMeFirst.ipynb").chmod(0o755)
    elif change == "new boot":
        # unsynced bytes may be lost in a crash of the machine, which also changes the boot id
        monkeypatch.setattr(homes, "_boot_id", lambda: "another-boot")
    else:
        ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-StdlibData")
    info = {}
    home = provision(wod, ws, 5, info=info)
    assert info == {"staged": False}
    if change == "edit a copied file":
        assert (home / ws.name / "Pictures" / "logo.png").read_bytes() == b"a new picture"
    if change == "add a file":
        assert (home / ws.name / "notes.txt").read_text() == "added after the stage"
    if change == "make a template executable":
        assert stat.S_IMODE((home / ws.name / "0-ReadMeFirst.ipynb").stat().st_mode) == 0o700
    assert leftovers(wod) == []  # the outdated stage is gone with the provisioning


def test_restaging_an_edited_workshop_replaces_the_old_stage(tmp_path):
    root, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    homes.stage(wod, ws, 6)
    [first] = staged(wod)
    (root / ws.name / "Pictures" / "logo.png").write_bytes(b"v2")
    assert homes.stage(wod, ws, 6) is True
    [second] = staged(wod)
    assert second != first
    assert (Path(wod.students_root) / second / ws.name / "Pictures" / "logo.png").read_bytes() == b"v2"


@pytest.mark.root(reason="changing owners needs root")
def test_a_stage_belongs_to_the_service_until_the_create_hands_it_over(tmp_path):
    root, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    homes.stage(wod, ws, 8)
    [stage] = staged(wod)
    top = Path(wod.students_root) / stage
    assert {p.lstat().st_uid for p in [top, *top.rglob("*")]} == {os.geteuid()}
    home = provision(wod, ws, 8, uid=43210, gid=43211)
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in [home, *home.rglob("*")]} == {(43210, 43211)}


def test_without_renameat2_the_previous_home_is_moved_aside_and_erased(tmp_path, monkeypatch):
    """A kernel or libc without RENAME_EXCHANGE: the old home is moved into the side folder, the new one put in
    its place, and the old one's bytes go after."""
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    home = provision(wod, ws, 7)
    (home / "mine.txt").write_text("the previous student's")
    monkeypatch.setattr(homes, "_exchange", lambda a, b: False)
    home = provision(wod, ws, 7)
    homes.drain()
    assert not (home / "mine.txt").exists()
    assert (home / ws.name / "0-ReadMeFirst.ipynb").stat().st_size > 0
    assert leftovers(wod) == []


def test_a_failed_render_on_a_stage_leaves_the_home_and_nothing_else(tmp_path):
    wod = make_wod(tmp_path)
    good = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    home = provision(wod, good, 1)
    before = snapshot(home)
    ws = bad_workshop(tmp_path / "nb", "{{ NOT_DEFINED_ANYWHERE }}")
    homes.stage(wod, ws, 1)  # the copied part stages fine; the template fails at the CREATE
    assert len(staged(wod)) == 1
    with pytest.raises(RenderError, match="NOT_DEFINED_ANYWHERE"):
        provision(wod, ws, 1)
    assert snapshot(home) == before
    assert leftovers(wod) == []


def test_erasing_a_seat_removes_its_stage(tmp_path):
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    homes.stage(wod, ws, 9)
    homes.stage(wod, ws, 10)
    homes.erase_home(wod, 9)
    assert [n.split("/staged-")[0] for n in leftovers(wod)] == [".student10"]


def test_staging_refuses_what_provisioning_refuses(tmp_path):
    wod = make_wod(tmp_path)
    ws = bad_workshop(tmp_path / "nb", "x")
    (Path(ws.path) / "out").symlink_to("/etc")
    with pytest.raises(RenderError, match="leading out of the notebooks root"):
        homes.stage(wod, ws, 1)
    with pytest.raises(errors.Unprocessable) as e:
        homes.stage(wod, ws, 0)
    assert e.value.code == "student_out_of_range"
    assert leftovers(wod) == []


def test_what_a_killed_stager_left_is_swept_whatever_the_seat(tmp_path):
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    homes.stage(wod, ws, 11)
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = Path(wod.students_root)
    for n, pid in ((12, dead.pid), (13, os.getpid())):
        (root / f".student{n}").mkdir()
        (root / f".student{n}" / f"staging-{pid}-abc").mkdir()  # 12: killed while staging; 13: a live stager, left alone
    assert homes.sweep_stages(wod) == 1
    assert sorted(n.split("-")[0] for n in leftovers(wod)) == [".student11/staged", ".student13/staging"]


def test_the_sweep_removes_what_the_flat_layout_left_and_nothing_else(tmp_path):
    """Before side folders, a seat's stage and work lay beside the homes as ``.student<N>.<kind>-*``."""
    wod = make_wod(tmp_path)
    root = Path(wod.students_root)
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    hour_ago = time.time() - 2 * 3600
    gone = [".student1.staged-0123abcd", f".student2.staging-{dead.pid}-x", ".student3.new-x", ".student4.old-x", ".student5.trash-x"]
    kept = [
        f".student6.staging-{os.getpid()}-x",  # an older version's stager still at work
        ".student7.new-x",  # an older version's home being built just now
        ".students.keep", ".student-notes.d", ".student8.mine",  # names the flat layout never made
        "student9",  # a home
    ]
    for name in gone + kept:
        (root / name).mkdir()
        (root / name / "f").write_text("x")
    for name in gone[2:]:
        os.utime(root / name, (hour_ago, hour_ago))
    assert homes.sweep_stages(wod) == len(gone)
    assert sorted(os.listdir(root)) == sorted(kept)
    assert all((root / name / "f").read_text() == "x" for name in kept)


def test_a_side_folder_is_ours_alone(tmp_path):
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    provision(wod, ws, 1)
    homes.stage(wod, ws, 2)
    for n in (1, 2):
        st = os.lstat(homes.side_path(wod, n))
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def _side_cases(side: Path, victim: Path):
    """(what, make it, refused?) for a side folder nobody but the service may have made."""
    cases = [
        ("a symlink of ours", lambda: side.symlink_to(victim, target_is_directory=True), False),
        ("a folder open to others", lambda: (side.mkdir(), os.chmod(side, 0o777)), True),
    ]
    if os.geteuid() == 0:  # another user's entry can only be made by root (CI runs as root)
        cases += [
            ("another user's folder", lambda: (side.mkdir(0o700), os.chown(side, 65534, 65534)), True),
            ("another user's symlink", lambda: (side.symlink_to(victim), os.lchown(side, 65534, 65534)), True),
        ]
    return cases


@pytest.mark.parametrize("verb", ["provision", "stage", "erase"])
def test_a_side_folder_not_ours_alone_is_refused_and_followed_nowhere(tmp_path, verb):
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    run = {"provision": lambda: provision(wod, ws, 1), "stage": lambda: homes.stage(wod, ws, 1),
           "erase": lambda: homes.erase_home(wod, 1)}[verb]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    side = Path(homes.side_path(wod, 1))
    for what, make, refused in _side_cases(side, victim):
        provision(wod, ws, 1)
        home_before = snapshot(homes.home_path(wod, 1))
        homes.drain()  # the previous home is erased in the side folder
        shutil.rmtree(side)
        make()
        if refused:
            with pytest.raises(errors.BadRequest) as e:
                run()
            assert e.value.code == "unsafe_side_folder" and "mode 0700" in e.value.message, what
            assert snapshot(homes.home_path(wod, 1)) == home_before, what
            side.unlink() if side.is_symlink() else side.rmdir()
        else:
            run()  # replaced by a folder of its own, never followed
            assert side.is_dir() and not side.is_symlink() and stat.S_IMODE(side.stat().st_mode) == 0o700, what
        assert sorted(os.listdir(victim)) == ["precious"], what


def test_a_file_of_ours_where_the_side_folder_goes_does_not_block_the_seat(tmp_path):
    _, ws = own_workshop(tmp_path)
    wod = make_wod(tmp_path)
    Path(wod.students_root).mkdir()
    Path(homes.side_path(wod, 1)).write_text("not a folder")
    provision(wod, ws, 1)
    assert Path(homes.side_path(wod, 1)).is_dir() and leftovers(wod) == []


_NON_ROOT = """
import os, sys, yaml
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import homes
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.variables import template_variables
root, notebooks, variables = sys.argv[1], sys.argv[2], yaml.safe_load(open(sys.argv[3]))
wod = Wod(students_root=root + "/students", variables=variables)
ws = load_catalog([notebooks]).get("WKSHP-PythonBasics")
values = template_variables(wod, ws, 1, "Pa55word-x")
home = homes.provision(wod, ws, 1, values)
(home / "mine.txt").write_text("x")
os.chmod(home, 0o555)  # the student (the same user in single-user mode) makes the home read-only
homes.provision(wod, ws, 1, values)  # RESET
homes.drain()
assert not (home / "mine.txt").exists(), "not re-provisioned"
os.chmod(home, 0o555)
homes.erase_home(wod, 1)  # CLEANUP
assert not home.exists()
print("ok")
"""


@pytest.mark.root(reason="runs a provisioning as another user, which needs root (CI runs as root)")
def test_without_root_a_read_only_home_is_still_replaced_and_erased(tmp_path):
    """Moving the previous home into the side folder rewrites its ``..``: without root that needs it writable."""
    area = Path(tempfile.mkdtemp(prefix="wod-nonroot-", dir="/tmp"))  # pytest's tmp_path is root's alone
    try:
        # The workshops and the corpus's variables beside it: the clone may sit where another user cannot read.
        workshops, variables = area / "workshops", area / "corpus_variables.yml"
        shutil.copytree(share_dir() / "workshops", workshops)
        shutil.copy(Path(__file__).parents[1] / "corpus_variables.yml", variables)
        subprocess.run(["chown", "-R", "65534:65534", str(area)], check=True)
        # Our venv's Python lies under /root; the students' Python (``make system-users``) is readable by all.
        python = os.environ.get("WOD_STUDENT_PYTHON") or str(Path(__file__).resolve().parents[2] / ".venv-students" / "bin" / "python")
        assert os.access(python, os.X_OK), f"{python} is missing: `make system-users` builds the students' Python"
        r = subprocess.run(
            [python, "-c", _NON_ROOT, str(area), str(workshops), str(variables)],
            user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=60,
            cwd=str(Path(__file__).resolve().parents[2]), env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(area)], check=True)
