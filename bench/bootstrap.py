"""Bootstrap of a 2,000-seat backend, end to end: accounts, hub users, every free seat of the public workshops staged.

What an admin does on a new machine, timed from nothing to a class ready
to book, on the 15 public workshops (a copy with every workshop active, so
that every range counts; a workshop whose wod.yml range is unusable is
left out by the catalog, as in production):

1. ``wod users create --from 1 --to 2000`` (the Linux accounts, one batch);
2. the hub starts with its managed wod service;
3. ``wod users create --hub-users`` (the hub's 2,000 users);
4. the service prepares every free seat of the workshops' ranges while idle
   (ends what a seat's hub user may have left, stages its files); done
   when ``api/health`` says no seat is left to prepare and every stage is
   on disk.

Against a floor measured in the same run: the same account entries
appended to copies of the four account files, and ``cp -a`` of each staged
seat's workshop folder -- creating the accounts and copying the files
alone. Prints the total, its parts, the floor and the ratio; goal: under
60 s. Always exits 0; the verdict is printed.

The accounts are machine-wide and other people's tests use student
numbers: the bench re-runs itself in a private mount namespace (``unshare
-m``) with a copy of /etc mounted over /etc, so the 2,000 accounts are real
entries in real account files that nobody else sees, and vanish with it.
Needs root.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.etcutil import private_etc
from tests.homeutil import stages
from tests.hubutil import RealHub
from wod_jupyterhub.cli.hubprocess import REPO
from wod_jupyterhub.seats import accounts
from wod_jupyterhub.workshops.catalog import load_catalog

CORPUS = REPO.parent / "shared" / "wod-notebooks"
UID_BASE = 40000
GOAL = 60.0
INSIDE = "WOD_BENCH_BOOTSTRAP_NS"


def wod(*args, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "wod_jupyterhub.cli", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"`wod {' '.join(map(str, args))}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def all_active(work: Path) -> Path:
    """A copy of the public workshops with every one active (not timed)."""
    root = work / "notebooks"
    shutil.copytree(CORPUS, root, symlinks=True)
    for meta in root.glob("WKSHP-*/wod.yml"):
        meta.chmod(0o644)
        meta.write_text(re.sub(r"(?m)^active:.*$", "active: true", meta.read_text()))
    return root


def staged_seats(notebooks: Path, seats: int) -> dict[int, Path]:
    """Seat → workshop folder, for the seats the service stages: in exactly one valid workshop's range."""
    catalog = load_catalog([notebooks])
    holders: dict[int, list] = {}
    for ws in catalog.workshops.values():
        if ws.active and ws.valid and ws.range:
            for n in range(max(ws.range[0], 1), min(ws.range[1], seats) + 1):
                holders.setdefault(n, []).append(ws)
    return {n: Path(w[0].path) for n, w in holders.items() if len(w) == 1}


def floor(work: Path, seats: int, stage: dict[int, Path]) -> tuple[float, float]:
    """(accounts, copies): the entries appended to copies of the account files; cp -a of every staged seat."""
    etc = work / "floor-etc"
    etc.mkdir()
    for name in accounts.FILES:
        shutil.copy2(f"/etc/{name}", etc / name)
    t = time.perf_counter()
    lines = {
        "passwd": [f"student{n}:x:{UID_BASE + n}:{UID_BASE + n}::/homes/student{n}:/bin/bash" for n in range(1, seats + 1)],
        "shadow": [f"student{n}:!:20000:0:99999:7:::" for n in range(1, seats + 1)],
        "group": [f"student{n}:x:{UID_BASE + n}:" for n in range(1, seats + 1)],
        "gshadow": [f"student{n}:!::" for n in range(1, seats + 1)],
    }
    for name, new in lines.items():
        with open(etc / name, "a") as f:
            f.write("\n".join(new) + "\n")
    t_accounts = time.perf_counter() - t
    copies = work / "floor-copies"
    copies.mkdir()
    t = time.perf_counter()
    for n, src in sorted(stage.items()):
        subprocess.run(["cp", "-a", str(src), str(copies / f"student{n}")], check=True)
    t_copies = time.perf_counter() - t
    shutil.rmtree(copies)
    shutil.rmtree(etc)
    return t_accounts, t_copies


def stages_on_disk(students: Path) -> int:
    return len(stages(students))


def hub_database(kind: str):
    """(URL, drop) of a fresh PostgreSQL database for the hub's own tables, or (None, no-op) for its SQLite file."""
    if kind == "sqlite":
        return None, lambda: None
    import psycopg

    admin = os.environ.get("WOD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"wod_bootstrap_hub_{os.getpid()}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:  # the bench says what it measured instead
        print(f"  (PostgreSQL at {admin} not usable: {e.__class__.__name__}; the hub uses SQLite)")
        return None, lambda: None

    def drop():
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return "postgresql+psycopg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name, drop


def kill_leftovers(markers: list[str]) -> int:
    """SIGKILL the processes whose command line holds one of ``markers``; return how many.

    The hub runs its proxy and managed service in sessions of their own: a hub
    killed because it did not stop in time (busy creating users on a loaded
    machine) leaves them behind, and a bench leaves nothing running.
    """
    import signal

    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def run(args) -> int:
    hub_db, drop_hub_db = hub_database(args.hub_db)
    try:
        return _run(args, hub_db)
    finally:
        drop_hub_db()


def _run(args, hub_db) -> int:
    work = Path(tempfile.mkdtemp(prefix="wod-bootstrap-"))
    tty = sys.stdout.isatty()
    load = os.getloadavg()[0]
    hub = None
    try:
        notebooks = all_active(work)
        stage = staged_seats(notebooks, args.seats)
        cfg = work / "wod_users_config.py"
        cfg.write_text(
            f"c.Wod.students_root = {str(work / 'hub' / 'students')!r}\nc.Wod.uid_base = {UID_BASE}\n"
            f"c.Wod.student_max = {args.seats}\n"
        )
        extra = f"c.JupyterHub.db_url = {hub_db!r}" if hub_db else ""
        hub = RealHub(
            work / "hub", notebooks=[notebooks], extra_config=extra,
            wod_config={"student_min": 1, "student_max": args.seats, "uid_base": UID_BASE, "skel": ""},
        )
        parts = {}
        t0 = time.perf_counter()
        out = wod("users", "create", "--config", cfg, "--from", 1, "--to", args.seats).stdout.strip()
        parts["accounts"] = time.perf_counter() - t0
        print(f"  {out}", flush=True)
        t = time.perf_counter()
        with hub:
            parts["hub start"] = time.perf_counter() - t
            t = time.perf_counter()
            out = wod("users", "create", "--config", cfg, "--from", 1, "--to", args.seats, "--hub-users", "--url", hub.url,
                      env={"JUPYTERHUB_API_TOKEN": hub.admin_token}).stdout.strip().splitlines()[-1]
            parts["hub users"] = time.perf_counter() - t
            print(f"  {out}", flush=True)
            t = time.perf_counter()
            deadline = t + args.timeout
            while True:
                health = httpx.get(hub.service_url + "api/health", timeout=10).json()
                done = stages_on_disk(hub.students_root)
                line = f"  preparing free seats: {done}/{len(stage)} staged, {health['prepare_pending']} to go"
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
                if health["prepare_pending"] == 0 and done >= len(stage):
                    break
                if time.perf_counter() > deadline:
                    print(f"\n  gave up after {args.timeout:.0f} s", flush=True)
                    break
                time.sleep(0.25 if tty else 2)
            if tty:
                print()
            parts["staging"] = time.perf_counter() - t
            staged = stages_on_disk(hub.students_root)
            users = httpx.get(hub.api_url + "/users?limit=1&name_filter=student", timeout=30, headers={
                "Authorization": f"token {hub.admin_token}", "Accept": "application/jupyterhub-pagination+json"}).json()
        total = time.perf_counter() - t0
        f_accounts, f_copies = floor(work, args.seats, stage)
        size = sum(f.stat().st_size for src in set(stage.values()) for f in src.rglob("*") if f.is_file())
        volume = sum(sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) for src in stage.values())
    finally:
        left = kill_leftovers([str(work), f"--api-port {hub.proxy_api_port} "]) if hub is not None else 0
        if left:
            print(f"  ({left} process(es) the hub left behind were killed)")
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    floor_total = f_accounts + f_copies
    hub_users = users.get("_pagination", {}).get("total") if isinstance(users, dict) else None
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at the start (other work slows every part alike)")
    print(f"bootstrap: {args.seats} accounts (uid {UID_BASE}+N, private /etc), {hub_users} hub users "
          f"(hub database: {'PostgreSQL' if hub_db else 'SQLite'}), "
          f"{staged}/{len(stage)} free seats of {len(set(stage.values()))} public workshops staged "
          f"({volume / 1e6:.0f} MB copied; the workshops hold {size / 1e6:.0f} MB)")
    print("  parts   : " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
          + "  (the hub's start includes the service creating the hub users of the workshops' seats)")
    print(f"  floor   : {floor_total:.2f} s (account entries appended {f_accounts:.3f} s + cp -a per staged seat {f_copies:.2f} s)")
    print(f"  total   : {total:.2f} s end to end = {total / floor_total:.1f}x the floor; without the hub's start "
          f"{total - parts['hub start']:.2f} s = {(total - parts['hub start']) / floor_total:.1f}x")
    ok = total < GOAL and staged >= len(stage) and hub_users == args.seats
    print(f"verdict: {'OK' if ok else 'GOAL MISSED'} ({total:.1f} s, goal < {GOAL:.0f} s)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seats", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=300, help="give up waiting for the staging after this long")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs) for a look")
    ap.add_argument("--hub-db", choices=("postgres", "sqlite"), default="postgres",
                    help="the hub's own database: PostgreSQL as a 2,000-seat hub runs in production (default), or SQLite")
    args = ap.parse_args()
    if not CORPUS.is_dir():
        print(f"SKIPPED: the public workshops are not at {CORPUS}")
        return 0
    if os.environ.get(INSIDE):
        return run(args)
    if os.geteuid() != 0 or not shutil.which("unshare"):
        print("SKIPPED: the bootstrap bench needs root and unshare (it creates accounts in a private /etc)")
        return 0
    # Again, inside a private mount namespace with a private copy of /etc.
    etc = tempfile.mkdtemp(prefix="wod-bootstrap-etc-")
    try:
        # Other people's seats (their tests' student<N>) exist machine-wide: the private copy starts without them.
        private_etc(etc)
        script = 'mount --bind "$0" /etc && exec "$@"'
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, etc, sys.executable, "-m", "bench.bootstrap", *sys.argv[1:]],
            env={**os.environ, INSIDE: "1"}, cwd=REPO,
        ).returncode
    finally:
        shutil.rmtree(etc, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
