"""A wrong password costs the same for every name (before this was fixed: 131 ms for an admin name, 5.6 ms for others).

A WodAuthenticator on a temporary SQLite database, with one admin hashed the
way ``wod hash-password`` does (``passwords.ADMIN_COST``) and one provisioned
student. Refusals are timed for the admin name, the student name, a name in
range with no seat and a name that is nobody's, interleaved. Printed: the
median of each, their ratio to one another (goal: within 0.8..1.25) and to
the floor measured in the same run: one scrypt verification at each cost in
use, the least a refusal that hides the admin names must do.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from traitlets.config import Config

from wod_jupyterhub import passwords
from wod_jupyterhub.hub.auth import WodAuthenticator
from wod_jupyterhub.store.models import Student

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
            s.add(Student(number=3, password_hash=passwords.hash_password("Student-pw-3"), state="active", generation=1))
        times = {name: [] for name in NAMES}
        for _ in range(REPEAT):
            for name in NAMES:
                t0 = time.perf_counter()
                assert auth.check_login(name, "a wrong password", "192.0.2.1") == {"kind": "bad"}
                times[name].append((time.perf_counter() - t0) * 1000)
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
    for name, m in medians.items():
        print(f"refusal for {name!r:12} {m:7.1f} ms  ({m / f:.2f} x the floor)")
    spread = max(medians.values()) / min(medians.values())
    print(f"floor (one scrypt at each cost in use): {f:.1f} ms")
    print(f"slowest / fastest refusal: {spread:.2f}  (goal: under 1.25: {'met' if spread < 1.25 else 'MISSED'})")
    return 0 if spread < 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
