"""Steps declared in ``wod.yml``: read, checked (each problem names its step), and their checks kept out of homes."""

import shutil

import pytest

from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.seats.homes import drain, provision
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.steps import find_step, revealed_hints
from wod_jupyterhub.workshops.variables import template_variables

SAMPLE = "WKSHP-VerifiedSteps"


def sample(tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(share_dir() / "workshops" / SAMPLE, root / SAMPLE)
    return root, root / SAMPLE


def test_the_sample_declares_three_steps_with_hints_and_solutions(tmp_path):
    root, _ = sample(tmp_path)
    ws = load_catalog([root]).get(SAMPLE)
    assert ws.problems == [] and ws.valid
    assert [(s.number, s.file, s.function, s.solution, len(s.hints)) for s in ws.steps] == [
        (1, "checks/steps.py", "greeting_written", "write_greeting", 2),
        (2, "checks/steps.py", "server_answers", "start_server", 2),
        (3, "checks/steps.py", "answer_right", "write_answer", 2),
    ]
    assert ws.to_json()["steps"][0] == {"index": 1, "title": "Write a greeting file", "check": "checks/steps.py:greeting_written", "hints": 2, "solution": True}
    step = find_step(ws.steps, 1)
    assert revealed_hints(step, 0) == [] and revealed_hints(step, 1) == [step.hints[0]] and revealed_hints(step, 9) == list(step.hints)
    assert find_step(ws.steps, 4) is None


BAD = [
    ("steps: yes", "steps must be a list of steps", True),
    ("steps:\n  - check: checks/c.py:ok", "step 1: title is missing", True),
    ("steps:\n  - title: T\n    check: c.py:ok", "step 1 ('T'): check must be written checks/<file>.py:<function>", True),
    ("steps:\n  - title: T\n    check: checks/../wod.py:ok", "step 1 ('T'): check must be written", True),
    ("steps:\n  - title: T\n    check: checks/none.py:ok", "step 1 ('T'): checks/none.py does not exist.", True),
    ("steps:\n  - title: T\n    check: checks/c.py:missing", "step 1 ('T'): checks/c.py defines no function missing.", True),
    ("steps:\n  - title: T\n    check: checks/broken.py:ok", "step 1 ('T'): checks/broken.py is not valid Python at line 2", True),
    ("steps:\n  - title: T\n    check: checks/c.py:ok\n    solution: checks/other.py:ok", "the solution must be a function of the check's own file", True),
    ("steps:\n  - title: T\n    check: checks/c.py:ok\n    hints: {a: 1}", "step 1 ('T'): hints must be a list of texts", False),
    ("steps:\n  - title: T\n    check: checks/c.py:ok\n    points: 3", "step 1 ('T'): unknown keys points", False),
    ("steps:\n  - title: T\n    check: checks/link.py:ok", "step 1 ('T'): checks/link.py leads out of the workshop's folder.", True),
]


@pytest.mark.parametrize("steps, sentence, blocking", BAD, ids=[b[1][:40] for b in BAD])
def test_a_bad_step_is_a_problem_naming_the_step(tmp_path, steps, sentence, blocking):
    root, folder = sample(tmp_path)
    checks = folder / "checks"
    (checks / "c.py").write_text("STUDENT = {{ STDID }}\n\ndef ok(seat):\n    return None\n")
    (checks / "other.py").write_text("def ok(seat):\n    pass\n")
    (checks / "broken.py").write_text("def ok(seat):\nreturn\n")
    outside = tmp_path / "outside.py"
    outside.write_text("def ok(seat):\n    pass\n")
    (checks / "link.py").symlink_to(outside)
    meta = (folder / "wod.yml").read_text()
    (folder / "wod.yml").write_text(meta[: meta.index("steps:")] + steps + "\n")
    ws = load_catalog([root]).get(SAMPLE)
    assert any(sentence in p for p in ws.problems), ws.problems
    assert (not ws.valid) == blocking, ws.blocking


def test_a_templated_check_is_accepted_and_the_checks_never_reach_a_home(tmp_path):
    root, folder = sample(tmp_path)
    (folder / "checks" / "deep").mkdir()
    (folder / "checks" / "deep" / "more.py").write_text("X = 1\n")
    (folder / "lab").mkdir()
    (folder / "lab" / "checks").mkdir()
    (folder / "lab" / "checks" / "mine.txt").write_text("a participant's folder that happens to be called checks\n")
    wod = Wod(students_root=str(tmp_path / "students"), notebooks=[str(root)])
    ws = load_catalog([root]).get(SAMPLE)
    assert ws.valid, ws.problems
    home = provision(wod, ws, 41, template_variables(wod, ws, 41, "pw"))
    drain()
    names = {p.name for p in (home / SAMPLE).iterdir()}
    assert "checks" not in names and "0-ReadMeFirst.ipynb" in names
    assert (home / SAMPLE / "lab" / "checks" / "mine.txt").is_file()
