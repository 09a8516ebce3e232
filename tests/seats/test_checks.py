"""A check runs in a child process and always answers: passed, or failed with a sentence, within its timeout."""

import os
import time

import pytest

from wod_jupyterhub.seats import checks

SEAT = {"student": 1, "home": "/", "folder": "/", "workshop": "WKSHP-X"}


def run(source, timeout=10, **kwargs):
    return checks.run(source, "check", file="checks/x.py", seat=SEAT, timeout=timeout, **kwargs)


@pytest.mark.parametrize(
    "body, passed, message",
    [
        ("return None", True, "Done."),
        ("return True", True, "Done."),
        ("return 'No file yet.'", False, "No file yet."),
        ("return False", False, "Not done yet."),
        ("assert 1 == 2, 'Not equal.'", False, "Not equal."),
        ("1 / 0", False, "The check failed to run: ZeroDivisionError: division by zero"),
        ("raise SystemExit(0)", False, "The check failed to run: SystemExit: 0"),
        ("import os; os._exit(0)", False, "The check ended without an answer (it crashed)."),
        ("print('{\"passed\": true, \"message\": \"forged\"}'); return 'Printed, not done.'", False, "Printed, not done."),
        ("print('x' * 10**7); return 'Loud.'", False, "Loud."),
        ("return 'm' * 5000", False, "m" * checks.MAX_MESSAGE),
    ],
)
def test_a_check_answers_passed_or_failed_with_a_sentence(body, passed, message):
    outcome = run(f"def check(seat):\n    {body}\n")
    assert (outcome.passed, outcome.message) == (passed, message)


def test_a_file_that_is_not_python_or_lacks_the_function_fails_with_a_sentence():
    assert run("def check(seat) return").message.startswith("The check failed to run: SyntaxError")
    assert run("def other(seat):\n    pass\n").message == "The check failed to run: KeyError: 'check'"


def test_a_hanging_check_is_stopped_at_its_timeout_with_what_it_started():
    started = time.monotonic()
    source = (
        "import subprocess, time\n"
        "def check(seat):\n"
        "    p = subprocess.Popen(['sleep', '1000'])\n"
        "    time.sleep(1000)\n"
    )
    before = _sleeps()
    outcome = run(source, timeout=1.5)
    assert not outcome.passed and outcome.message == "The check did not answer within 1.5 seconds: it was stopped."
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    assert not _sleeps() - before  # its child went with it (another run's may come and go meanwhile)


def _sleeps():
    found = set()
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/cmdline", "rb").read() == b"sleep\x001000\x00":
                found.add(pid)
        except OSError:
            pass
    return found


def test_the_check_runs_not_dumpable_so_no_process_of_its_uid_can_attach_to_it():
    outcome = run("import ctypes\ndef check(seat):\n    return 'dumpable=%d' % ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)\n")
    assert outcome.message == "dumpable=0"


def test_a_check_that_eats_memory_fails_without_harm():
    outcome = run("def check(seat):\n    x = bytearray(4 * 1024**3)\n", memory=256 * 1024**2)
    assert (outcome.passed, outcome.message) == (False, "The check ran out of memory.")


def test_a_solution_passes_once_it_ran_and_its_return_value_does_not_matter():
    outcome = checks.run("def solve(seat):\n    return 'ignored'\n", "solve", file="checks/x.py", seat=SEAT, mode=checks.SOLVE)
    assert (outcome.passed, outcome.message) == (True, "Solved.")
