"""A workshop's verified steps (``steps:`` in ``wod.yml``): each a title, a check, hints and a solution.

A check is a Python function in a file of the workshop's ``checks/``
folder, named ``checks/<file>.py:<function>``. That folder is the authors':
it is never copied into a home (``trees.workshop_tree``), so a participant
can neither read nor edit what checks them; the service renders the file
for the seat (``STDID``, the appliance's address …) and runs its own copy.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: the workshop folder holding the checks; never copied into a home
CHECKS_FOLDER = "checks"
#: a check file larger than this is a problem (real ones are a few KB)
MAX_CHECK_BYTES = 256 * 1024
#: most steps one workshop declares
MAX_STEPS = 100
MAX_TITLE = 200
MAX_HINT = 2000
_REF = re.compile(r"^checks/([A-Za-z0-9_][A-Za-z0-9_.-]*/)*[A-Za-z0-9_][A-Za-z0-9_.-]*\.py:([A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class Step:
    """One declared step: ``number`` counts from 1, as the participant reads it."""

    number: int
    title: str
    #: the check's file, relative to the workshop (``checks/steps.py``), and its function
    file: str
    function: str
    hints: tuple[str, ...] = ()
    #: the function of the same file that does the step (``wod check --execute`` proves the check with it)
    solution: str | None = None

    def to_json(self) -> dict:
        return {
            "index": self.number, "title": self.title, "check": f"{self.file}:{self.function}",
            "hints": len(self.hints), "solution": bool(self.solution),
        }


def _ref(value, what: str, where: str, ws) -> tuple[str, str] | None:
    """``checks/<file>.py:<function>`` split in two, or None with a problem naming the step."""
    if not isinstance(value, str) or not _REF.fullmatch(value.strip()):
        ws.problem(f"{where}: {what} must be written checks/<file>.py:<function>, not {value!r}.", blocking=True)
        return None
    file, function = value.strip().rsplit(":", 1)
    if ".." in file.split("/"):
        ws.problem(f"{where}: {what} {value!r} leaves the checks folder.", blocking=True)
        return None
    return file, function


def _functions(ws, rel: str, where: str, cache: dict) -> set[str] | None:
    """The top-level functions the workshop's file ``rel`` defines (parsed once per file), or None with a problem."""
    if rel in cache:
        return cache[rel]
    found, path = None, Path(ws.path) / rel
    try:
        real = path.resolve(strict=True)
        if os.path.commonpath([str(real), str(Path(ws.path).resolve())]) != str(Path(ws.path).resolve()):
            ws.problem(f"{where}: {rel} leads out of the workshop's folder.", blocking=True)
        elif not real.is_file():
            ws.problem(f"{where}: {rel} is not a file.", blocking=True)
        elif real.stat().st_size > MAX_CHECK_BYTES:
            ws.problem(f"{where}: {rel} is larger than {MAX_CHECK_BYTES} bytes.", blocking=True)
        else:
            source = real.read_text(encoding="utf-8")
            # The templates' tags are not Python: the file is checked as a participant's seat would get it
            # only once rendered; here its function names are what must hold.
            tree = ast.parse(_untag(source), filename=rel)
            found = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except FileNotFoundError:
        ws.problem(f"{where}: {rel} does not exist.", blocking=True)
    except (OSError, UnicodeDecodeError) as e:
        ws.problem(f"{where}: {rel} cannot be read ({e}).", blocking=True)
    except SyntaxError as e:
        ws.problem(f"{where}: {rel} is not valid Python at line {e.lineno}: {e.msg}.", blocking=True)
    cache[rel] = found
    return found


_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def _untag(source: str) -> str:
    """``source`` with its Jinja2 tags replaced by a Python constant (``{{ STDID }}`` → ``0``), for a syntax check."""
    return _TAG.sub(lambda m: "0" if m.group(0).startswith("{{") else "", source)


def _texts(value, what: str, where: str, ws, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        ws.problem(f"{where}: {what} must be a list of texts, not {value!r}.")
        return ()
    too_long = [v for v in value if len(v) > limit]
    if too_long:
        ws.problem(f"{where}: a hint is longer than {limit} characters.")
    return tuple(v.strip()[:limit] for v in value)


def steps_of(meta: dict, ws) -> tuple[Step, ...]:
    """The steps ``wod.yml`` declares, each checked; problems (naming the step) go to ``ws``.

    A step whose check cannot run (its file or function missing, not
    Python) blocks the workshop: its seats could never be verified.
    """
    value = meta.get("steps")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        ws.problem(f"steps must be a list of steps (title, check, hints, solution), not {value!r}.", blocking=True)
        return ()
    if len(value) > MAX_STEPS:
        ws.problem(f"steps lists {len(value)} steps; at most {MAX_STEPS} are allowed.", blocking=True)
        return ()
    steps, cache = [], {}
    for i, item in enumerate(value, 1):
        where = f"step {i}"
        if not isinstance(item, dict):
            ws.problem(f"{where} must be a mapping with title and check, not {item!r}.", blocking=True)
            continue
        title = item.get("title")
        if isinstance(title, str) and title.strip():
            where = f"step {i} ({title.strip()[:60]!r})"
        else:
            ws.problem(f"{where}: title is missing or not a text.", blocking=True)
            continue
        if len(title) > MAX_TITLE:
            ws.problem(f"{where}: title is longer than {MAX_TITLE} characters.")
        unknown = sorted(str(k) for k in item if k not in ("title", "check", "hints", "solution"))
        if unknown:
            ws.problem(f"{where}: unknown keys {', '.join(unknown)} (a step has title, check, hints, solution).")
        check = _ref(item.get("check"), "check", where, ws)
        if check is None:
            continue
        file, function = check
        names = _functions(ws, file, where, cache)
        if names is None:
            continue
        if function not in names:
            ws.problem(f"{where}: {file} defines no function {function}.", blocking=True)
            continue
        solution = None
        if item.get("solution") is not None:
            solved = _ref(item["solution"], "solution", where, ws)
            if solved is not None:
                if solved[0] != file:
                    ws.problem(f"{where}: the solution must be a function of the check's own file {file}.", blocking=True)
                elif solved[1] not in names:
                    ws.problem(f"{where}: {file} defines no function {solved[1]}.", blocking=True)
                else:
                    solution = solved[1]
        hints = _texts(item.get("hints"), "hints", where, ws, MAX_HINT)
        steps.append(Step(i, title.strip()[:MAX_TITLE], file, function, hints, solution))
    return tuple(steps)


def find_step(steps, number) -> Step | None:
    """The step numbered ``number`` (from 1), or None."""
    return next((s for s in steps if s.number == number), None)


def revealed_hints(step: Step, failures: int) -> list[str]:
    """The hints shown after ``failures`` failed checks: one more per failure, the first with the first failure."""
    return list(step.hints[: max(0, min(failures, len(step.hints)))])


def steps_ratio(verified: int, total: int) -> int:
    """The completion percentage of a workshop with steps: verified steps over steps."""
    return round(100 * verified / total) if total else 0
