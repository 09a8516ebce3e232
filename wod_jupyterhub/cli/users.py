"""``wod users create``: the Linux accounts ``student<N>`` that ``c.Wod.system_users`` runs servers as."""

import argparse
import os
import sys
import time

from ..config import Wod
from ..errors import WodError
from ..hubconfig import load_config as read_config
from ..seats import accounts
from ..seats.accounts import Account
from .tables import progress_bar


def load_config(config_file: str | None):
    """The traitlets config of ``config_file`` (empty without one)."""
    if config_file and not os.path.isfile(config_file):
        raise SystemExit(f"wod users: {config_file} is not a file")
    return read_config(config_file)  # quietly: what the file prints is not this command's output


def load_wod(config_file: str | None) -> Wod:
    """The ``c.Wod`` settings of ``config_file`` (a ``jupyterhub_config.py``), or the defaults without one."""
    return Wod(config=load_config(config_file))


def create_directory_entries(config, first: int, last: int) -> int:
    """``--ldap``: the directory entries of seats ``first..last`` (``directory.Directory.create_entries``); an exit status."""
    from traitlets import TraitError

    from ..seats.directory import Directory, WodLdap

    try:
        directory = Directory(WodLdap(config=config))
    except TraitError as e:
        print(f"wod users: {e}", file=sys.stderr)
        return 2
    if not directory.configured:
        print("wod users: --ldap needs c.WodLdap.uri (and bind_dn, and its password) in the configuration", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        added, existing = directory.create_entries(range(first, last + 1))
    except WodError as e:
        print(f"wod users: {e.message}", file=sys.stderr)
        return 2
    print(f"{added} directory entr{'y' if added == 1 else 'ies'} created, {existing} already there ({time.monotonic() - started:.2f} s)")
    return 0


def accounts_for(wod: Wod, first: int, last: int) -> list[Account]:
    return [
        Account(f"student{n}", wod.uid_base + n, wod.uid_base + n, str(wod.home(n)))
        for n in range(first, last + 1)
    ]


def create_hub_users(hub_api: str, token: str, names: list[str], batch: int = 500, progress=None) -> int:
    """Create the hub's users ``names`` (existing ones are skipped) with ``POST /users``; return how many were new."""
    import httpx

    created = 0
    with httpx.Client(base_url=hub_api.rstrip("/") + "/", headers={"Authorization": f"token {token}"}, timeout=300) as http:
        for i in range(0, len(names), batch):
            chunk = names[i : i + batch]
            try:
                r = http.post("users", json={"usernames": chunk})
            except httpx.HTTPError as e:
                raise SystemExit(f"wod users: cannot reach the hub API at {hub_api}: {e}") from None
            if r.status_code == 201:
                created += len(r.json())
            elif r.status_code != 409:  # 409: every one of them existed
                raise SystemExit(f"wod users: the hub refused to create users ({r.status_code}): {r.text[:300]}")
            if progress:
                progress(min(i + batch, len(names)), len(names))
    return created


def _hub_api(args) -> str:
    if args.hub_api:
        return args.hub_api
    from .serviceclient import resolve_url

    # The hub's public URL (as `wod status` finds it) + hub/api.
    return resolve_url(args.url).rsplit("services/wod/", 1)[0] + "hub/api"


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
    """``wod users``: plan, create or remove the seats' Linux accounts; the exit status."""
    parser = argparse.ArgumentParser(prog="wod users", description="Manage the Linux accounts of the student seats (system_users mode).")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create the accounts student<N> with uid uid_base + N, in one locked batch")
    create.add_argument("--config", "-f", default="jupyterhub_config.py", help="the hub's config file (default: %(default)s)")
    create.add_argument("--from", dest="first", type=int, help="first student number (default: c.Wod.student_min)")
    create.add_argument("--to", dest="last", type=int, help="last student number (default: c.Wod.student_max)")
    create.add_argument("--dry-run", action="store_true", help="print the /etc/passwd entries instead of adding them")
    create.add_argument(
        "--hub-users", action="store_true",
        help="also create the hub's users student<N> (POST /hub/api/users) with $JUPYTERHUB_API_TOKEN, a token with admin:users",
    )
    create.add_argument(
        "--ldap", action="store_true",
        help="also create the seats' entries in the directory of c.WodLdap (for ldap: true workshops); existing ones are kept",
    )
    create.add_argument("--ldap-only", action="store_true", help="create the directory entries only, no account (needs no root)")
    create.add_argument("--url", help="the hub's public URL for --hub-users (default $WOD_URL, else ./jupyterhub_config.py's)")
    create.add_argument("--hub-api", help="the hub's API URL for --hub-users (default: the public URL + hub/api)")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config if os.path.exists(args.config) or args.config != "jupyterhub_config.py" else None)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    wod = Wod(config=config)
    first = wod.student_min if args.first is None else args.first
    last = wod.student_max if args.last is None else args.last
    if not (wod.in_range(first) and wod.in_range(last)) or first > last:
        print(f"wod users: {first}..{last} is not a range within {wod.student_min}..{wod.student_max}", file=sys.stderr)
        return 2
    if args.ldap_only:
        return create_directory_entries(config, first, last)
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if args.hub_users and not token:
        print("wod users: --hub-users needs $JUPYTERHUB_API_TOKEN (a hub token with admin:users)", file=sys.stderr)
        return 2
    wanted = accounts_for(wod, first, last)
    new, problems = accounts.plan(wanted)
    if problems:
        for p in problems:
            print(f"wod users: {p}", file=sys.stderr)
        print("wod users: nothing was changed", file=sys.stderr)
        return 2
    names = [f"student{n}" for n in range(first, last + 1)]
    if args.dry_run:
        for a in new:
            print(f"{a.name}:x:{a.uid}:{a.gid}::{a.home}:{a.shell}")
        for path in DENY_FILES:
            print(f"add student{first}..student{last} to {path} (cron and at refused)")
        return 0
    if os.geteuid() != 0:
        print("wod users: creating accounts needs root (try --dry-run to see the entries)", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        added = accounts.add(wanted)
    except accounts.AccountsError as e:
        print(f"wod users: {e}; nothing was changed", file=sys.stderr)
        return 2
    denied = deny_jobs(names)
    print(
        f"{added} account(s) created, {len(wanted)} in the range ({time.monotonic() - started:.2f} s)"
        + (f"; cron and at refused ({', '.join(denied)})" if denied else ""),
        flush=True,
    )
    if args.hub_users:
        try:
            hub_api = _hub_api(args)
        except WodError as e:
            print(f"wod users: {e.message}", file=sys.stderr)
            return 2
        started = time.monotonic()
        tty = sys.stderr.isatty()

        def progress(done, total):
            if tty:
                sys.stderr.write("\r" + progress_bar(done, total, label="hub users"))
                sys.stderr.flush()

        made = create_hub_users(hub_api, token, [a.name for a in wanted], progress=progress)
        if tty:
            sys.stderr.write("\n")
        print(f"{made} hub user(s) created, {len(wanted)} in the range ({time.monotonic() - started:.2f} s)")
    if args.ldap:
        return create_directory_entries(config, first, last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
