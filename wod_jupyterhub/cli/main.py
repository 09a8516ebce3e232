"""The ``wod`` command: the admin's view of the same code the service runs."""

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from .. import __version__
from ..errors import BadRequest, Unprocessable, WodError

PROG = "wod"

#: subcommands implemented elsewhere: name → (module, help)
DELEGATES = {
    "service": ("wod_jupyterhub.service.app", "run the wod service (a JupyterHub managed service); arguments go to it"),
    "mail": ("wod_jupyterhub.service.mail.pipe", "take one mail from stdin as the mail listener does (`wod mail --config FILE --from S --to R`)"),
    "users": ("wod_jupyterhub.cli.users", "manage the student accounts (`wod users create [--config FILE]`)"),
}

VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class UsageError(WodError):
    """Bad command line: same exit as any other bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage first; one line is the rule here.
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# -- wod workshops -------------------------------------------------------------------------


def _base_wod(args):
    """The c.Wod settings of ``--config``, else of ``./jupyterhub_config.py`` when present, else the defaults."""
    from ..hubconfig import load_wod

    return load_wod(getattr(args, "config", None))


def _roots(args) -> list[str]:
    roots = args.notebooks or _base_wod(args).notebooks
    for root in roots:
        if not Path(root).is_dir():
            raise BadRequest(f"notebooks folder {root} does not exist or is not a folder")
    return roots


def _check_renders(args, roots, catalog) -> dict:
    """Render each valid workshop's templates once with the given variables: its name -> repair warnings.

    A template that would fail a CREATE makes its workshop unusable (a blocking problem).
    """
    from ..workshops.templating import default_renderer
    from ..workshops.trees import check_templates
    from ..workshops.variables import template_variables

    wod = _base_wod(args)
    wod.notebooks = roots
    wod.variables = {**wod.variables, **_variables(args)}
    wod.strict_undefined = wod.strict_undefined and not args.lenient
    renderer = default_renderer(wod)
    warnings = {}
    for ws in catalog.workshops.values():
        if not ws.valid:
            continue
        n = max(ws.range[0], 1)
        values = template_variables(wod, ws, n, "Wod-Check-Pw1", modews="WKSHP")
        problems, warnings[ws.name] = check_templates(renderer, ws, values)
        for problem in problems:
            ws.problem(problem, blocking=True)
    return warnings


def cmd_workshops(args) -> int:
    from ..workshops.catalog import load_catalog

    roots = _roots(args)
    catalog = load_catalog(roots, prefer_private=args.prefer_private)
    warnings = {} if args.no_render else _check_renders(args, roots, catalog)
    data = catalog.to_json()
    for item in data:
        item["warnings"] = warnings.get(item["name"], [])
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return 1 if any(item["problems"] for item in data) else 0
    workshops = [catalog.workshops[k] for k in sorted(catalog.workshops)]
    rows = [("WORKSHOP", "RANGE", "ACTIVE", "USABLE", "FOLDER")]
    for w in workshops:
        rng = f"{w.range[0]}-{w.range[1]}" if w.range else "-"
        rows.append((w.name, rng, "yes" if w.active else "no", "yes" if w.valid else "NO", str(w.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1])
    problems = [(w.name, p) for w in workshops for p in w.problems]
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for name, p in problems:
            print(f"  {name}: {p}")
    repaired = [(name, w) for name in sorted(warnings) for w in warnings[name]]
    if repaired:
        print(f"\n{len(repaired)} warning(s):")
        for name, w in repaired:
            print(f"  {name}: {w}")
    return 1 if problems else 0


# -- wod render ----------------------------------------------------------------------------


def _variables(args) -> dict:
    from ..workshops.catalog import load_yaml

    variables = {}
    if args.vars_file:
        with open(args.vars_file, encoding="utf-8") as f:
            loaded = load_yaml(f.read())
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise BadRequest(f"{args.vars_file} must hold a mapping of variable names to values")
        for key in loaded:
            if not isinstance(key, str) or not VARIABLE_NAME.fullmatch(key):
                raise BadRequest(f"{args.vars_file}: {key!r} is not a valid variable name")
        variables.update(loaded)
    for item in args.var or ():
        key, sep, value = item.partition("=")
        if not sep or not VARIABLE_NAME.fullmatch(key):
            raise BadRequest(f"--var {item!r}: expected KEY=VALUE with KEY a variable name")
        variables[key] = value
    return variables


def cmd_render(args) -> int:
    from ..config import Wod
    from ..passwords import generate
    from ..workshops.catalog import load_catalog, parse_workshop_name

    folder, modews = parse_workshop_name(args.workshop)
    variables = _variables(args)
    if args.student < 1:
        raise BadRequest(f"--student must be 1 or more, not {args.student}")
    out = Path(args.out).expanduser().absolute()
    home_name = f"student{args.student}"
    direct = out.name == home_name
    if out.exists() and not out.is_dir():
        raise BadRequest(f"--out {out} exists and is not a folder")
    if not direct and out.is_dir() and any(out.iterdir()):
        raise BadRequest(
            f"--out {out} is not empty; give an empty or new folder, or a home named {home_name} to re-provision it"
        )
    roots = _roots(args)
    settings = dict(
        notebooks=roots,
        prefer_private=args.prefer_private,
        students_root=str(out.parent),
        variables=variables,
        strict_undefined=not args.lenient,
    )
    wod = Wod(**settings)
    catalog = load_catalog(roots, prefer_private=args.prefer_private, readme=wod.readme_notebook)
    workshop = catalog.get(folder)
    if not workshop.valid:
        raise Unprocessable(f"workshop {workshop.name} cannot be provisioned: {'; '.join(workshop.blocking)}")
    catalog.check_student(workshop, args.student, wod)
    # heavy (nbformat, jsonschema): only once the input is known good
    from ..seats.homes import drain, drop_side_folder, provision, side_path
    from ..workshops.templating import default_renderer
    from ..workshops.variables import template_variables

    password = args.password or generate(wod.password_length, wod.password_alphabet)
    # computed for the real students root: templates may print STDDIR/WODSTUDDIR
    values = template_variables(wod, workshop, args.student, password, modews=modews)
    renderer = default_renderer(wod)

    created = _missing_parents(out.parent)
    # The side folder provision() keeps beside a home: gone afterwards, unless it was there before (a service's).
    side_was_there = direct and os.path.lexists(side_path(wod, args.student))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if direct:
            home = provision(wod, workshop, args.student, values, renderer=renderer)
        else:
            # provision() writes students_root/student<N>: give it a scratch root
            # beside --out (same file system) and move the finished home in.
            scratch = tempfile.mkdtemp(prefix=".wod-render-", dir=out.parent)
            try:
                scratch_wod = Wod(**{**settings, "students_root": scratch})
                built = provision(scratch_wod, workshop, args.student, values, renderer=renderer)
                if out.is_dir():
                    out.rmdir()  # checked empty above
                os.replace(built, out)
                home = out
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        drain()  # a replaced home is erased in the background: finish before exiting
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        if direct and not side_was_there:
            drop_side_folder(wod, args.student)
    print(f"{args.workshop} rendered for student {args.student} into {home}")
    return 0


def _missing_parents(path: Path) -> Path | None:
    """The outermost folder mkdir(parents=True) would create for ``path``, if any."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


# -- wod completion ------------------------------------------------------------------------


def cmd_completion(args) -> int:
    from ..seats.completion import completion

    result = completion(args.path)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    width = max([len(n["path"]) for n in result["notebooks"]] + [8])
    for n in result["notebooks"]:
        detail = f"unreadable: {n['error']}" if n["error"] else f"{n['executed']}/{n['total']}"
        print(f"{n['path'].ljust(width)}  {detail}")
    print(f"{'ratio'.ljust(width)}  {result['ratio']} % ({result['executed']} of {result['total']} code cells run)")
    return 0


# -- wod hash-password ---------------------------------------------------------------------


def cmd_hash_password(args) -> int:
    from ..passwords import ADMIN_COST, hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise BadRequest("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise BadRequest("empty password")
    print(hash_password(password, cost=ADMIN_COST))
    return 0


# -- wod create|cleanup|reset|purge, wod status: the service's REST API -------------------------


def _client_args(args):
    from .serviceclient import resolve_token, resolve_url

    return resolve_url(args.url), resolve_token(args.token)


def cmd_verb(args) -> int:
    from ..workshops.catalog import parse_workshop_name
    from .batch import parse_students, run_command
    from .serviceclient import AsyncWodClient, check_service

    parse_workshop_name(args.workshop)
    parse_students(args.students)  # bad input is refused before anything is sent
    if args.parallel < 1:
        raise BadRequest(f"--parallel must be 1 or more, not {args.parallel}")
    url, token = _client_args(args)
    entry = check_service(url, token, parse_workshop_name(args.workshop)[0])
    if args.verb == "create" and entry.get("name") and not entry.get("valid", True):
        raise Unprocessable(f"workshop {entry['name']} cannot be provisioned: {' '.join(entry.get('problems') or [])}")
    return run_command(args, AsyncWodClient(url, token, concurrency=args.parallel))


def cmd_status(args) -> int:
    from .serviceclient import WodClient
    from .tables import format_status

    if args.workshop:
        from ..workshops.catalog import parse_workshop_name

        parse_workshop_name(args.workshop)
    url, token = _client_args(args)
    with WodClient(url, token) as client:
        data = client.get("api/status", workshop=args.workshop)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return 0


def cmd_extend(args) -> int:
    """``wod extend STUDENTS --minutes M | --until TIME``: move the end of active seats, one request each."""
    from .batch import parse_students
    from .serviceclient import ServiceError, WodClient

    numbers = parse_students(args.students)
    if (args.minutes is None) == (args.until is None):
        raise BadRequest("give --minutes M or --until TIME (ISO 8601)")
    body = {"minutes": args.minutes} if args.minutes is not None else {"ends_at": args.until}
    url, token = _client_args(args)
    failed = 0
    with WodClient(url, token) as client:
        for n in numbers:
            try:
                answer = client.post(f"api/students/{n}/extend", body)
            except ServiceError as e:
                failed += 1
                print(f"student{n}: not extended: {e}", file=sys.stderr)
                continue
            print(f"student{n}: ends at {answer['ends_at']} (was {answer['previous'] or 'no end'})")
    return 1 if failed else 0


# -- wod check -----------------------------------------------------------------------------


def cmd_check(args) -> int:
    from . import selftest

    if bool(args.workshop) == bool(args.all):
        raise BadRequest("give one WORKSHOP or --all")
    if not 0 < args.timeout <= 3600:
        raise BadRequest(f"--timeout must be between 0 and 3600 seconds, not {args.timeout}")
    wod = _base_wod(args)
    if args.notebooks:
        wod.notebooks = _roots(args)
    if args.prefer_private:
        wod.prefer_private = True
    names = None if args.all else [args.workshop]
    progress = None if args.json else (lambda name: print(f"checking {name} …", file=sys.stderr, flush=True))
    report = selftest.check(wod, names, execute=args.execute, timeout=args.timeout, variables=_variables(args), progress=progress)
    print(json.dumps(report, indent=2) if args.json else selftest.format_report(report))
    return selftest.exit_status(report)


# -- wod unlock ----------------------------------------------------------------------------


def cmd_unlock(args) -> int:
    from ..store.locks import unlock
    from ..store.models import Store

    if not (args.name or args.address):
        raise BadRequest("give a NAME (student<N> or an admin) or --address ADDRESS to unlock")
    wod = _base_wod(args)
    lifted = unlock(Store(wod.db_url), args.name, args.address)
    who = " and ".join(x for x in (args.name, args.address and f"address {args.address}") if x)
    if lifted:
        print(f"unlocked {who}: " + "; ".join(lifted))
    else:
        print(f"{who} was not locked; its failed logins are forgotten")
    return 0


# -- wod config ----------------------------------------------------------------------------


def cmd_config(args) -> int:
    from .options import CLASSES, describe, option_classes

    unknown = [n for n in args.classes if n not in CLASSES]
    if unknown:
        raise BadRequest(f"no option class {unknown[0]}; the classes are {', '.join(CLASSES)}")
    print("\n\n".join(describe(cls) for cls in option_classes(args.classes)))
    return 0


# -- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``wod`` command's parser, every subcommand with its options."""
    parser = _Parser(prog=PROG, description="Workshops-on-Demand for JupyterHub: admin commands.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def notebooks_options(p):
        p.add_argument(
            "--notebooks", action="append", metavar="DIR",
            help="a notebooks root holding WKSHP-* folders; repeat for several, public first (default: the bundled samples)",
        )
        p.add_argument("--prefer-private", action="store_true", help="take a workshop found in several roots from the last one")

    def variables_options(p):
        p.add_argument("--var", action="append", metavar="KEY=VALUE", help="a template variable; repeat for several")
        p.add_argument("--vars-file", metavar="FILE.yml", help="template variables from a YAML mapping (--var wins)")
        p.add_argument("--lenient", action="store_true", help="render undefined variables empty instead of failing")

    p = sub.add_parser(
        "workshops", help="list the workshops and the problems found in them",
        description="List the workshops of the notebooks roots. Each usable one is rendered once, in memory, with "
        "the built-in variables and those given (--var, --vars-file), so that USABLE means a CREATE can provision it; "
        "notebooks repaired as Jupyter does on load are reported as warnings.",
    )
    notebooks_options(p)
    variables_options(p)
    p.add_argument("--config", "-f", metavar="FILE", help="the hub's jupyterhub_config.py: its c.Wod notebooks, variables and variables_dirs "
                   "(default ./jupyterhub_config.py when present, as wod check)")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON")
    p.add_argument("--no-render", action="store_true", help="read the wod.yml files only; do not render the templates")
    p.set_defaults(func=cmd_workshops)

    p = sub.add_parser(
        "render", help="provision a workshop for one student, as the service does at CREATE",
        description="Provision WORKSHOP for student N into the folder --out. --out must be new or empty, "
        "unless it is named student<N>: then it is a home and is replaced, as the service does.",
    )
    p.add_argument("workshop", metavar="WORKSHOP", help="WKSHP-<Name>, or CHLG-<Name> for the challenge")
    notebooks_options(p)
    p.add_argument("--student", type=int, required=True, metavar="N", help="student number")
    p.add_argument("--out", required=True, metavar="HOME", help="the student's home to write")
    variables_options(p)
    p.add_argument("--password", metavar="PW", help="the student's password for PASSSTU (default: a new random one)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("completion", help="completion ratio of a workshop folder or one notebook")
    p.add_argument("path", metavar="PATH", help="a workshop folder (every notebook in it) or one .ipynb file")
    p.add_argument("--json", action="store_true", help='print {"ratio", "executed", "total", "notebooks"}')
    p.set_defaults(func=cmd_completion)

    p = sub.add_parser(
        "hash-password", help="hash an admin password for the config (read from stdin, or asked twice)",
    )
    p.set_defaults(func=cmd_hash_password)

    def service_options(p):
        p.add_argument("--url", help="the hub's public URL (the service answers under /services/wod/); default $WOD_URL, "
                       "else the hub's URL in ./jupyterhub_config.py")
        p.add_argument("--token", help="an API token with custom:wod:operate (verbs) or custom:wod:read; default $WOD_API_TOKEN")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    verb_help = {
        "create": "provision seats and rotate their passwords (CREATE)",
        "cleanup": "measure completion and wipe seats (CLEANUP)",
        "reset": "wipe the kept seats of a reset: true workshop (RESET; a contiguous run is one operation)",
        "purge": "wipe seats whatever their state (PURGE)",
        "passwords": "new passwords for active seats, their homes untouched (PASSWORD; the table shows them)",
    }
    for verb, text in verb_help.items():
        p = sub.add_parser(verb, help=f"{text} over a range of students, through the service")
        p.add_argument("workshop", metavar="WORKSHOP", help="WKSHP-<Name> (or CHLG-<Name>)")
        p.add_argument("students", metavar="STUDENTS", help="N, A-B or a list like 1,4,10-12")
        service_options(p)
        p.add_argument("--customer", help="the customer id sent (default: CREATE 0; the others: the seat's holder)")
        if verb == "create":
            p.add_argument("--email", help="the participant's address sent with CREATE (default wod-cli@localhost)")
            p.add_argument("--force", action="store_true",
                           help="provision seats that are held again (their homes are erased); without it, held seats "
                                "are named and nothing is sent")
        if verb == "passwords":
            p.set_defaults(show_passwords=True)
        else:
            p.add_argument("--show-passwords", action="store_true", help="show the new passwords of CREATE in the table and JSON")
        p.add_argument("--parallel", type=int, default=8, metavar="N", help="operations in flight at once (default %(default)s)")
        p.set_defaults(func=cmd_verb, verb=verb)

    p = sub.add_parser("status", help="seats by state per workshop, operations, outbox backlog, locked logins")
    p.add_argument("workshop", metavar="WORKSHOP", nargs="?", help="only this workshop")
    service_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("extend", help="move the end of active seats (journaled on the service as EXTEND)")
    p.add_argument("students", metavar="STUDENTS", help="seats: N, N-M or N,M,...")
    p.add_argument("--minutes", type=int, metavar="M", help="minutes added to each seat's end")
    p.add_argument("--until", metavar="TIME", help="the new end, ISO 8601 (UTC without a zone)")
    service_options(p)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser(
        "check", help="render a workshop for a scratch seat, validate its notebooks, run them with --execute",
        description="Exit status 0 when every workshop passed (a kernel not installed here is no failure), 1 when one failed.",
    )
    p.add_argument("workshop", metavar="WORKSHOP", nargs="?", help="WKSHP-<Name>")
    p.add_argument("--all", action="store_true", help="every active workshop")
    p.add_argument("--execute", action="store_true", help="run every notebook in a real kernel (nbclient)")
    p.add_argument("--timeout", type=float, default=60, metavar="SECONDS", help="per-cell timeout with --execute (default %(default)s)")
    p.add_argument("--config", metavar="FILE", help="the hub's config for c.Wod (default ./jupyterhub_config.py when present)")
    notebooks_options(p)
    p.add_argument("--var", action="append", metavar="KEY=VALUE", help="a template variable; repeat for several")
    p.add_argument("--vars-file", metavar="FILE.yml", help="template variables from a YAML mapping (--var wins)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "unlock", help="lift the login throttle's locks on a name (every address) or an address (every name)",
        description="Forget the failed logins and locks of NAME and/or --address in the shared database (c.Wod.db_url), "
        "so a locked-out participant logs in at once. Reads --config, else ./jupyterhub_config.py.",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="student<N>, or an admin's name")
    p.add_argument("--address", metavar="ADDRESS", help="a client address (an IPv6 address counts by its /64)")
    p.add_argument("--config", "-f", metavar="FILE", help="the hub's jupyterhub_config.py (default ./jupyterhub_config.py when present)")
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser(
        "config", help="every c.Wod* option of jupyterhub_config.py with its default and help",
        description="Print the options of wod-jupyterhub's classes as `jupyterhub --help-all` prints JupyterHub's.",
    )
    p.add_argument("classes", nargs="*", metavar="CLASS", help="only these classes (Wod, WodAuthenticator, WodService …)")
    p.set_defaults(func=cmd_config)

    for name, (_, text) in DELEGATES.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    module_name = DELEGATES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return _fail(f"`{PROG} {name}` is not available: {module_name} is not installed")
    return module.main(argv) or 0


#: ``wod mail``'s exit status when the mail should wait in the mail system's queue (sysexits' EX_TEMPFAIL)
MAIL_TRY_AGAIN = 75


def _mail_argv(argv: list[str]) -> list[str]:
    """``wod mail``'s arguments with its configuration found and read as every command's is.

    ``--config`` (which must exist), else ``./jupyterhub_config.py`` when
    present; passed on as one absolute ``--config``. A file that exists but
    cannot be read raises with the reason.
    """
    from ..hubconfig import find_config, load_config

    options = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options.add_argument("--config", "-f")
    known, rest = options.parse_known_args(argv)
    path = find_config(known.config)  # BadRequest: the named file is not there
    if path is None:
        return rest
    load_config(path)  # BadRequest with the reason; the mail then waits for a fixed file
    return ["--config", path, *rest]


def main(argv=None) -> int:
    """The ``wod`` command: parse ``argv`` (``sys.argv[1:]`` by default), run the subcommand; the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Handed over whole: their options are theirs, argparse must not read them.
    if argv and argv[0] == "mail":
        try:
            mail_argv = _mail_argv(argv[1:])
        except BadRequest as e:
            # Not the mail's fault: the mail system keeps it and tries again once the file is fixed.
            print(f"{PROG} mail: error: {e.message}; the mail waits until it is fixed", file=sys.stderr)
            return MAIL_TRY_AGAIN
        return _delegate("mail", mail_argv)
    if argv and argv[0] in DELEGATES:
        return _delegate(argv[0], argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except BrokenPipeError:
        # `wod status | head`: the reader has gone, which is no error; nothing more is written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except WodError as e:
        _fail(e.message)
        return getattr(e, "exit_status", 2)
    except yaml.YAMLError as e:
        return _fail(f"invalid YAML: {' '.join(str(e).split())}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
