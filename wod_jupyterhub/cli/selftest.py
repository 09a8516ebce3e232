"""``wod check``: does a workshop render, are its notebooks valid, and do they run?"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..service.hooks import read_tail

#: statuses of a notebook
PASSED, FAILED, NO_KERNEL, NOT_RUN = "passed", "failed", "no-kernel", "not-run"
SCRATCH_PASSWORD = "Scratch-Pa55word"


def _first_line(text: str, limit: int = 300) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:limit] if text else ""


def _notebooks(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
        found += [Path(dirpath) / f for f in files if f.endswith(".ipynb") and not f.endswith("-checkpoint.ipynb")]
    return sorted(found, key=lambda p: (p.relative_to(folder).parts[:-1], p.name))


def _code_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "".join(c.source).strip()]


def run_notebook(path: Path, timeout: float, startup_timeout: float = 60) -> dict:
    """Execute ``path`` in the kernel of its kernelspec; stop at the first failing cell."""
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    spec = nb.metadata.get("kernelspec") or {}
    kernel = spec.get("name") or "python3"
    code = _code_cells(nb)
    done: list[int] = []
    current = {"index": None}

    def on_execute(cell, cell_index, **_):
        current["index"] = cell_index

    def on_executed(cell, cell_index, execute_reply=None, **_):
        if cell_index in code and (execute_reply or {}).get("content", {}).get("status") == "ok":
            done.append(cell_index)

    # The kernel's sockets are Unix sockets in a folder of its own (0700): on loopback ports any
    # local process, a student's included, could subscribe to its output.
    sockets = tempfile.mkdtemp(prefix="wod-kernel-")
    config = Config({"KernelManager": {"transport": "ipc", "connection_file": os.path.join(sockets, "kernel.json")}})
    client = NotebookClient(
        nb, timeout=timeout, startup_timeout=startup_timeout, kernel_name=kernel, allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_execute=on_execute, on_cell_executed=on_executed, config=config,
    )
    out = {"kernel": kernel, "cells": len(code), "run": 0, "status": PASSED, "failed_cell": None, "error": None}
    started = time.monotonic()
    # The kernel's own output (its warnings, its traceback when killed at a timeout) is not the
    # report: kept aside, its tail reported only when the kernel itself failed.
    kernel_log = tempfile.TemporaryFile()
    try:
        client.execute(stdout=subprocess.DEVNULL, stderr=kernel_log)
    except NoSuchKernel:
        out.update(status=NO_KERNEL, error=f"kernel {kernel!r} ({spec.get('display_name') or kernel}) is not installed here")
    except CellTimeoutError:
        out.update(status=FAILED, failed_cell=_cell(nb, current["index"], "Timeout", f"the cell ran longer than {timeout:g} s"))
    except CellExecutionError as e:
        out.update(status=FAILED, failed_cell=_cell(nb, current["index"], e.ename, e.evalue))
    except DeadKernelError as e:
        out.update(status=FAILED, failed_cell=_cell(nb, current["index"], "DeadKernel", _first_line(str(e))), error=read_tail(kernel_log, 1000).strip())
    except Exception as e:  # a kernel that cannot start is this notebook's failure, not ours
        out.update(status=FAILED, error=f"{e.__class__.__name__}: {_first_line(str(e))}; kernel output: {read_tail(kernel_log, 1000).strip()}")
    finally:
        kernel_log.close()
        shutil.rmtree(sockets, ignore_errors=True)
    out["run"] = len(done)
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def _cell(nb, index, ename: str, evalue: str) -> dict:
    cell = nb.cells[index] if index is not None and index < len(nb.cells) else None
    source = "".join(cell.source) if cell is not None else ""
    return {
        "index": index,
        # "cell 3" as a person counts code cells in the notebook, 1-based
        "number": sum(1 for c in nb.cells[: index + 1] if c.cell_type == "code") if index is not None else None,
        "source": source[:500],
        "ename": ename,
        "evalue": _first_line(str(evalue)),
    }


def check_workshop(wod, catalog, name: str, *, execute: bool, timeout: float, variables=None) -> dict:
    """Render ``name`` for a scratch seat, validate its notebooks, run them with ``execute``."""
    from ..config import Wod
    from ..errors import WodError
    from ..seats import homes
    from ..workshops.catalog import parse_workshop_name
    from ..workshops.templating import default_renderer
    from ..workshops.variables import template_variables

    report = {"workshop": name, "status": PASSED, "problems": [], "notebooks": [], "student": None}
    try:
        folder, mode = parse_workshop_name(name)
        ws = catalog.get(folder)
    except WodError as e:
        report.update(status=FAILED, problems=[e.message])
        return report
    report["workshop"] = ws.name
    if not ws.valid:
        report.update(status=FAILED, problems=list(ws.problems))
        return report
    if ws.problems:
        # usable, but its wod.yml says something wrong (capacity: lots, an overlap): a check fails on it
        report.update(status=FAILED, problems=list(ws.problems))
    lo = max(ws.range[0], wod.student_min)
    report["student"] = n = lo
    scratch = tempfile.mkdtemp(prefix="wod-check-")
    try:
        settings = {k: getattr(wod, k) for k in ("notebooks", "prefer_private", "variables_dirs", "strict_undefined", "clear_outputs", "skel")}
        settings["variables"] = {**wod.variables, **(variables or {})}
        scratch_wod = Wod(students_root=scratch, **settings)
        try:
            values = template_variables(scratch_wod, ws, n, SCRATCH_PASSWORD, modews=mode, hostname="wod-check")
            home = homes.provision(scratch_wod, ws, n, values, renderer=default_renderer(scratch_wod), compiled_scripts=False)
        except WodError as e:
            report.update(status=FAILED, problems=[f"render: {e.message}"])
            return report
        rendered = home / ws.name
        if execute and ws.steps:
            # On the fresh seat, before its notebooks run (they may do the steps).
            report["steps"] = prove_steps(scratch_wod, ws, n, timeout)
        for path in _notebooks(rendered):
            rel = str(path.relative_to(rendered))
            entry = {"path": rel, "valid": True, "error": None, "status": NOT_RUN, "cells": None, "run": None}
            problem = _validate(path)
            if problem:
                entry.update(valid=False, status=FAILED, error=f"not a valid notebook: {problem}")
            elif execute:
                entry.update(run_notebook(path, timeout))
            report["notebooks"].append(entry)
        failed_steps = any(s["status"] == FAILED for s in report.get("steps", ()))
        if report["problems"] or failed_steps or any(nb["status"] == FAILED for nb in report["notebooks"]):
            report["status"] = FAILED
        elif execute and report["notebooks"] and all(nb["status"] == NO_KERNEL for nb in report["notebooks"]):
            report["status"] = NO_KERNEL
        return report
    finally:
        homes.drain()
        shutil.rmtree(scratch, ignore_errors=True)


PR_SET_CHILD_SUBREAPER = 36


def prove_steps(wod, ws, n: int, timeout: float) -> list[dict]:
    """Each step's check must fail on the fresh seat, and pass once its solution ran (where one is given).

    What the solutions leave running (a step's server) is ended afterwards:
    this process adopts it (a child subreaper) and kills what it adopted.
    """
    import ctypes

    from ..seats import checks
    from ..workshops.templating import default_renderer

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    renderer = default_renderer(wod)
    out = []
    try:
        for step in ws.steps:
            entry = {"index": step.number, "title": step.title, "status": PASSED, "fresh": None, "solved": None, "error": None}
            fresh = checks.for_seat(wod, ws, step, n, renderer=renderer, timeout=timeout, private_tmp=False)
            entry["fresh"] = fresh.message
            if fresh.passed:
                entry.update(status=FAILED, error="its check passes on a fresh seat: it cannot tell a done step from one not started")
            elif step.solution:
                solved = checks.for_seat(wod, ws, step, n, renderer=renderer, mode=checks.SOLVE, timeout=timeout, private_tmp=False)
                after = checks.for_seat(wod, ws, step, n, renderer=renderer, timeout=timeout, private_tmp=False)
                entry["solved"] = after.message
                if not solved.passed:
                    entry.update(status=FAILED, error=f"its solution failed: {solved.message}")
                elif not after.passed:
                    entry.update(status=FAILED, error=f"its check fails after the solution ran: {after.message}")
            out.append(entry)
    finally:
        _end_adopted()
    return out


def _end_adopted() -> None:
    """Kill and reap the processes this one adopted (those whose parent is this process and that it did not start itself)."""
    import signal

    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
                os.waitpid(int(entry), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _validate(path: Path) -> str | None:
    import json

    from ..workshops.templating import validate_notebook

    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return f"not JSON: {e}"
    return validate_notebook(nb)


def check(wod, names: list[str] | None, *, execute: bool = False, timeout: float = 60, variables=None, progress=None) -> dict:
    """The report for ``names`` (None: every active workshop of the catalog, and every one whose wod.yml is missing or unreadable)."""
    from ..workshops.catalog import load_catalog

    catalog = load_catalog(wod.notebooks, prefer_private=wod.prefer_private)
    if names is None:
        names = sorted(w.name for w in catalog.workshops.values() if w.active or not w.meta)
    started = time.monotonic()
    reports = []
    for name in names:
        if progress:
            progress(name)
        reports.append(check_workshop(wod, catalog, name, execute=execute, timeout=timeout, variables=variables))
    return {
        "ok": all(r["status"] != FAILED for r in reports),
        "executed": execute,
        "workshops": reports,
        "seconds": round(time.monotonic() - started, 2),
    }


def exit_status(report: dict) -> int:
    """0 when every workshop of ``report`` passed, else 1."""
    return 0 if report["ok"] else 1


def format_report(report: dict) -> str:
    """``report`` as the lines ``wod check`` prints: each workshop, its problems, each notebook and its first failure."""
    lines = []
    for ws in report["workshops"]:
        lines.append(f"{ws['workshop']}: {ws['status'].upper()}" + (f" (seat {ws['student']})" if ws["student"] else ""))
        for p in ws["problems"]:
            lines.append(f"  problem: {p}")
        for nb in ws["notebooks"]:
            if nb["status"] == NOT_RUN:
                lines.append(f"  {nb['path']}: valid")
                continue
            head = f"  {nb['path']}: {nb['status']}"
            if nb.get("cells") is not None:
                head += f", {nb['run']}/{nb['cells']} code cells run"
            if nb.get("kernel"):
                head += f" (kernel {nb['kernel']})"
            lines.append(head)
            cell = nb.get("failed_cell")
            if cell:
                lines.append(f"    first failing cell: code cell {cell['number']} (index {cell['index']}): {cell['ename']}: {cell['evalue']}")
                lines.append("      > " + _first_line(cell["source"], 120))
            elif nb.get("error"):
                lines.append(f"    {nb['error']}")
        for step in ws.get("steps", ()):
            line = f"  step {step['index']} ({step['title']}): {step['status']}"
            lines.append(line + (f": {step['error']}" if step["error"] else ", fails fresh" + (" and passes solved" if step["solved"] else "")))
    passed = sum(1 for w in report["workshops"] if w["status"] == PASSED)
    lines.append(f"{passed} of {len(report['workshops'])} workshop(s) passed" + ("" if report["ok"] else "; some FAILED"))
    return "\n".join(lines)
