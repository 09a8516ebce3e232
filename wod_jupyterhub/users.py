"""``wod users create``: the Linux accounts ``student<N>`` that ``c.Wod.system_users`` runs servers as.

Account ``student<N>`` gets uid and gid ``uid_base + N``, its own group,
``/bin/bash`` and the seat's home (``<students_root>/student<N>``) as its
home directory; the home itself is made by the service at CREATE. Existing
accounts with the expected uid are left alone, so the command can be run
again after widening the range; an account with another uid is an error
(nothing is changed). Needs root, like ``useradd``.

The accounts are also refused ``cron`` and ``at`` (their names in
``/etc/cron.deny`` and ``/etc/at.deny``): a job a participant left would
run as ``student<N>`` during the next participant's session. (The wipe of
a seat removes spooled jobs too; the refusal means there are none.)
"""

import argparse
import grp
import os
import pwd
import subprocess
import sys

from .config import Wod


def load_wod(config_file: str | None) -> Wod:
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    config = Config()
    if config_file:
        path = os.path.abspath(config_file)
        if not os.path.isfile(path):
            raise SystemExit(f"wod users: {config_file} is not a file")
        config = PyFileConfigLoader(os.path.basename(path), os.path.dirname(path)).load_config()
    return Wod(config=config)


def plan(wod: Wod, first: int, last: int) -> tuple[list[list[str]], list[str]]:
    """(commands to run, problems) for accounts ``first..last``; problems mean nothing may run."""
    commands, problems = [], []
    for n in range(first, last + 1):
        name, uid = f"student{n}", wod.uid_base + n
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is not None:
            if entry.pw_uid != uid:
                problems.append(f"{name} exists with uid {entry.pw_uid}, expected {uid}")
            continue
        try:
            holder = pwd.getpwuid(uid)
            problems.append(f"uid {uid} for {name} is taken by {holder.pw_name}")
            continue
        except KeyError:
            pass
        try:
            grp.getgrnam(name)
        except KeyError:
            commands.append(["groupadd", "--gid", str(uid), name])
        commands.append(
            ["useradd", "--uid", str(uid), "--gid", str(uid), "--no-create-home", "--home-dir", str(wod.home(n)), "--shell", "/bin/bash", name]
        )
    return commands, problems


#: files whose listed users may not use cron and at (read when no ``.allow`` file exists)
DENY_FILES = ("/etc/cron.deny", "/etc/at.deny")


def deny_jobs(names, deny_files=DENY_FILES) -> list[str]:
    """Add ``names`` to each deny file that lacks them (creating it); return what was changed.

    An existing file keeps its owner and mode (``at.deny`` must stay
    readable by ``at``'s group); a new one is ``0644``: the names are no secret.
    """
    changed = []
    for path in deny_files:
        allow = path[: -len(".deny")] + ".allow"
        if os.path.exists(allow):
            # With an allow file the deny file is not read: a student named in it may schedule jobs.
            with open(allow) as f:
                allowed = {line.strip() for line in f} & set(names)
            if allowed:
                print(f"wod users: {allow} allows {', '.join(sorted(allowed))}; remove them from it", file=sys.stderr)
            continue
        try:
            with open(path) as f:
                present = {line.strip() for line in f}
        except FileNotFoundError:
            present = set()
        missing = [n for n in names if n not in present]
        if not missing:
            continue
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "a") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write("\n")
            f.write("".join(f"{n}\n" for n in missing))
        changed.append(f"{path}: +{len(missing)}")
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wod users", description="Manage the Linux accounts of the student seats (system_users mode).")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create the accounts student<N> with uid uid_base + N")
    create.add_argument("--config", "-f", default="jupyterhub_config.py", help="the hub's config file (default: %(default)s)")
    create.add_argument("--from", dest="first", type=int, help="first student number (default: c.Wod.student_min)")
    create.add_argument("--to", dest="last", type=int, help="last student number (default: c.Wod.student_max)")
    create.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)

    try:
        wod = load_wod(args.config if os.path.exists(args.config) or args.config != "jupyterhub_config.py" else None)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    first = wod.student_min if args.first is None else args.first
    last = wod.student_max if args.last is None else args.last
    if not (wod.in_range(first) and wod.in_range(last)) or first > last:
        print(f"wod users: {first}..{last} is not a range within {wod.student_min}..{wod.student_max}", file=sys.stderr)
        return 2
    commands, problems = plan(wod, first, last)
    if problems:
        for p in problems:
            print(f"wod users: {p}", file=sys.stderr)
        print("wod users: nothing was changed", file=sys.stderr)
        return 2
    names = [f"student{n}" for n in range(first, last + 1)]
    if args.dry_run:
        for cmd in commands:
            print(" ".join(cmd))
        for path in DENY_FILES:
            print(f"add student{first}..student{last} to {path} (cron and at refused)")
        return 0
    if os.geteuid() != 0:
        print("wod users: creating accounts needs root (try --dry-run to see the commands)", file=sys.stderr)
        return 2
    for cmd in commands:
        subprocess.run(cmd, check=True)
    denied = deny_jobs(names)
    print(
        f"{sum(1 for c in commands if c[0] == 'useradd')} account(s) created, {last - first + 1} in the range"
        + (f"; cron and at refused ({', '.join(denied)})" if denied else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
