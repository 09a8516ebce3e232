"""A wrong password takes the same time for every name, and costs the hub CPU only at the name's own hash cost.

A WodAuthenticator on a temporary SQLite database, with one admin hashed the
way ``wod hash-password`` does (``passwords.ADMIN_COST``) and one provisioned
student. Refusals go the login's own way (``checked``: the check, then the
wait that pads every refusal to the costliest check's time) for the admin
name, the student name, a name in range with no seat and a name that is
nobody's, interleaved. Printed: the median wall time of each, their ratio to
one another (goal: within 0.8..1.25, so the time tells no admin name apart),
against the floor measured in the same run (one scrypt verification at each
cost in use); and the CPU each refusal took (the process's, so the hashing
thread's too): a flood of refusals at student or unknown names must not cost
the admin's hash each (goal: their CPU under a quarter of the floor).
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from traitlets.config import Config

from wod_jupyterhub import passwords
from wod_jupyterhub.hub.auth import WodAuthenticator
from wod_jupyterhub.store.models import Seat

REPEAT = 15
NAMES = ("admin", "student3", "student7", "nobody")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wod-bench-refusal-") as tmp:
        c = Config()
        c.Wod.db_url = f"sqlite:///{Path(tmp) / 'wod.sqlite'}"
        c.Wod.student_max = 40
        c.Authenticator.admin_users = {"admin"}
        c.WodAuthenticator.admin_password_hashes = {"admin": passwords.hash_password("Admin-pass-42", passwords.ADMIN_COST)}
        c.WodAuthenticator.throttle_failures = 0  # timing the check, not the lock
        c.WodAuthenticator.throttle_ip_failures = 0
        auth = WodAuthenticator(config=c)
        with auth.store.session() as s:
            s.add(Seat(number=3, password_hash=passwords.hash_password("Student-pw-3"), state="active", generation=1))
        times = {name: [] for name in NAMES}
        cpu = {name: [] for name in NAMES}

        async def refusals():
            for _ in range(REPEAT):
                for name in NAMES:
                    t0, c0 = time.perf_counter(), time.process_time()
                    assert (await auth.checked(name, "a wrong password", "192.0.2.1"))[0] == {"kind": "bad"}
                    times[name].append((time.perf_counter() - t0) * 1000)
                    cpu[name].append((time.process_time() - c0) * 1000)

        asyncio.run(refusals())
        auth.store.dispose()
    floor = []
    stored = [passwords.hash_password("x", passwords.STUDENT_COST), passwords.hash_password("x", passwords.ADMIN_COST)]
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        for h in stored:
            passwords.verify_password("y", h)
        floor.append((time.perf_counter() - t0) * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    f = statistics.median(floor)
    cpus = {name: statistics.median(c) for name, c in cpu.items()}
    for name, m in medians.items():
        print(f"refusal for {name!r:12} {m:7.1f} ms  ({m / f:.2f} x the floor), CPU {cpus[name]:6.1f} ms")
    spread = max(medians.values()) / min(medians.values())
    print(f"floor (one scrypt at each cost in use): {f:.1f} ms")
    print(f"slowest / fastest refusal: {spread:.2f}  (goal: under 1.25: {'met' if spread < 1.25 else 'MISSED'})")
    cheap = max(cpus[name] for name in NAMES if name != "admin") / f
    print(f"CPU of a refusal at a student's or nobody's name / floor: {cheap:.2f}  (goal: under 0.25: {'met' if cheap < 0.25 else 'MISSED'})")
    return 0 if spread < 1.25 and cheap < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
