"""Hooks run as real processes: the timeout holds whatever the hook's children do."""

import asyncio
import os
import signal

import pytest

from wod_jupyterhub.config import Wod
from wod_jupyterhub.service.hooks import WodHooks as Hooks


def _hooks(tmp_path, text, timeout):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    script = scripts / "create-WKSHP-X.sh"
    script.write_text(text)
    script.chmod(0o755)
    hooks = Hooks(Wod(scripts=[str(scripts)]))
    hooks.timeout = timeout
    return hooks


def _kill_pidfile(path):
    try:
        os.kill(int(path.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


@pytest.mark.parametrize("main", ["sleep 600", "echo done"], ids=["hook-hangs", "hook-exits"])
def test_a_setsid_child_holding_the_output_does_not_hold_the_operation(tmp_path, main):
    pidfile = tmp_path / "child.pid"
    # The child leaves the hook's process group (setsid) and keeps its stdout open for 10 minutes.
    text = f'#!/bin/sh\necho started\nsetsid sh -c \'echo $$ > "{pidfile}"; exec sleep 600\' &\n{main}\n'
    hooks = _hooks(tmp_path, text, timeout=1.0)
    try:
        # Without the fix this waits for the child's EOF (600 s); 60 s is a hang detector, not a speed bound.
        runs = asyncio.run(asyncio.wait_for(_run_or_fail(hooks), 60))
    finally:
        _kill_pidfile(pidfile)
    (record,) = runs
    assert "started" in record["output"]
    if main.startswith("sleep"):
        assert record["timed_out"] and record["exit"] == -1
    else:
        assert not record["timed_out"] and record["exit"] == 0 and "done" in record["output"]


async def _run_or_fail(hooks):
    from wod_jupyterhub.service.hooks import HookFailed

    try:
        return await hooks.run("create", "WKSHP-X", student=1)
    except HookFailed as e:
        return e.runs


def test_the_output_tail_is_kept(tmp_path):
    hooks = _hooks(tmp_path, "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' a\necho END\n", timeout=30)
    hooks.max_output = 1000
    (record,) = asyncio.run(hooks.run("create", "WKSHP-X", student=1))
    assert record["exit"] == 0 and len(record["output"]) == 1000 and record["output"].endswith("END\n")


def test_vars_file_aliases_are_refused(tmp_path):
    from wod_jupyterhub.service.hooks import read_vars_file

    path = tmp_path / "vars.yml"
    path.write_text("a: &a [x, x, x]\nb: [*a, *a, *a]\n")
    with pytest.raises(ValueError, match=r"alias \(\*a\) is not allowed"):
        read_vars_file(str(path))
