"""A private copy of /etc for tests and benches that create Linux accounts (mounted over /etc with `unshare -m`).

Accounts are machine-wide, and other people's tests hold seats `student<N>`
of their own: the copy leaves those out, so what is created in it never
clashes with them, and they never see it.
"""

import re
import subprocess
from pathlib import Path

from wod_jupyterhub.seats import accounts

SEAT = re.compile(r"^student\d+:")


def private_etc(dest) -> Path:
    """Copy /etc to ``dest`` without the seat accounts (and their groups) that exist on this machine."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["cp", "-a", "/etc/.", str(dest)], capture_output=True, text=True)
    # Files that vanish while cp reads /etc (a useradd's temporary files) are no loss; anything else is.
    problems = [line for line in r.stderr.splitlines() if "No such file or directory" not in line]
    if r.returncode != 0 and problems:
        raise RuntimeError(f"copying /etc failed: {' '.join(problems)[:500]}")
    # A useradd running on the machine meanwhile left its locks in the copy: they are not ours to wait for.
    for name in accounts.FILES:
        for leftover in dest.glob(f"{name}.lock"):
            leftover.unlink()
    seats = {
        line.split(":", 1)[0]
        for name in ("passwd", "group")
        for line in (dest / name).read_text().splitlines()
        if SEAT.match(line)
    }
    if seats:
        accounts.remove(seats, str(dest))
    return dest
