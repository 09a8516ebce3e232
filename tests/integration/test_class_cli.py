"""`wod create|cleanup|reset|purge WORKSHOP STUDENTS` and `wod status`, run for real against a real hub and service.

The hub (its proxy, the managed wod service) is real; the `wod` command runs
in a subprocess as an admin would run it, through the hub's public URL.
"""

import json
import os
import signal
import subprocess

import pytest

from tests.cliutil import REPO, WOD, run_json, wod
from tests.hubutil import write_workshop

# Seats of workshops' ranges: no Linux accounts are made here (single-user mode).
CLASS = "WKSHP-Class"  # reset: true, seats 11-15
HOOKED = "WKSHP-Hooked"  # its create hook fails for seat 23 only
SLOW = "WKSHP-Slow"  # its create hook takes a second


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    notebooks = root / "notebooks"
    write_workshop(notebooks, CLASS, (11, 15), reset=True)
    write_workshop(notebooks, HOOKED, (21, 25))
    scripts = root / "scripts"
    scripts.mkdir()
    hook = scripts / f"create-{HOOKED}.sh"
    hook.write_text('#!/bin/sh\nif [ "$STDID" = 23 ]; then echo "appliance of $STDID is down" >&2; exit 4; fi\n')
    hook.chmod(0o755)
    write_workshop(notebooks, SLOW, (31, 35))
    slow = scripts / f"create-{SLOW}.sh"
    slow.write_text("#!/bin/sh\nsleep 1\n")
    slow.chmod(0o755)
    with module_hubs(root, notebooks=[notebooks], wod_config={"scripts": [str(scripts)]}) as h:
        yield h


def seats(data):
    return {s["student"]: s for s in data["seats"]}


def executed(hub, n, cells=1):
    """The participant runs ``cells`` code cells of the exercise (what CLEANUP measures)."""
    path = hub.students_root / f"student{n}" / CLASS / "1-Exercise.ipynb"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    for i, cell in enumerate(code[:cells]):
        cell["execution_count"] = i + 1
    path.write_text(json.dumps(nb))


def test_a_new_pools_seats_are_prepared_without_asking_the_hub_seat_by_seat(hub):
    """First in this module: before any verb. The service made the pool's hub users itself at its start:
    new users have no server and no token, so no seat's preparation asks the hub for them (a 2,000-seat
    bootstrap would otherwise make a call per seat to a hub busy creating users)."""
    import time

    import httpx
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from wod_jupyterhub.store.models import Seat, make_engine

    deadline = time.monotonic() + 60
    while httpx.get(hub.service_url + "api/health", timeout=10).json()["prepare_pending"]:
        assert time.monotonic() < deadline, "the free seats were not prepared"
        time.sleep(0.2)
    seats = [*range(11, 16), *range(21, 26), *range(31, 36)]
    assert all(hub.hub_api("GET", f"/users/student{n}").status_code == 200 for n in seats)
    with Session(make_engine(hub.db_url)) as s:
        ended = dict(s.execute(select(Seat.number, Seat.sessions_ended).where(Seat.number.in_(seats))).all())
    assert ended == {n: True for n in seats}
    log = (hub.root / "hub.log").read_text()
    assert "/tokens" not in log and "DELETE /hub/api/users/student" not in log


def test_a_class_of_five_created_cleaned_reset_and_purged(hub):
    data, r = run_json(hub, "create", CLASS, "11-15", "--show-passwords")
    got = seats(data)
    assert sorted(got) == [11, 12, 13, 14, 15] and data["failed"] == [] and not data["interrupted"]
    assert all(s["status"] == "succeeded" and len(s["password"]) >= 8 and s["seconds"] >= 0 for s in got.values())
    assert all((hub.students_root / f"student{n}" / CLASS / "0-ReadMeFirst.ipynb").is_file() for n in got)
    # Not a terminal: one line per seat on stderr.
    assert sorted(line.split()[0] for line in r.stderr.splitlines()) == [f"student{n}" for n in range(11, 16)]

    status, _ = run_json(hub, "status", CLASS)
    ws = {w["name"]: w for w in status["workshops"]}[CLASS]
    assert ws["capacity"] == 5 and ws["seats"] == {"free": 0, "active": 5, "kept": 0, "cleaning": 0}
    assert {s["student"] for s in status["seats"]} == set(range(11, 16))
    assert {s["customer"] for s in status["seats"]} == {"0"}

    executed(hub, 11, cells=1)  # 1 of 2 code cells of the exercise; ReadMeFirst's one cell not run
    executed(hub, 12, cells=2)
    data, _ = run_json(hub, "cleanup", CLASS, "11-15")
    got = seats(data)
    assert all(s["status"] == "succeeded" for s in got.values()), got
    assert (got[11]["completion"], got[12]["completion"], got[13]["completion"]) == (33, 66, 0)  # rounded down
    assert "password" not in got[11]

    # Text output: the table with the completion column.
    status = wod(hub, "status")
    assert status.returncode == 0, status.stderr
    assert CLASS in status.stdout and "Running operations: 0" in status.stdout

    data, _ = run_json(hub, "reset", CLASS, "11-15")
    got = seats(data)
    assert all(s["status"] == "succeeded" for s in got.values())
    assert len({s["operation"] for s in got.values()}) == 1  # a contiguous run is one RESET, as the service does it

    run_json(hub, "create", CLASS, "11,13")
    data, _ = run_json(hub, "purge", CLASS, "11-13")
    assert all(s["status"] == "succeeded" for s in seats(data).values())
    status, _ = run_json(hub, "status", CLASS)
    ws = {w["name"]: w for w in status["workshops"]}[CLASS]
    assert ws["seats"]["free"] == 5 and ws["completion"]["count"] == 5
    assert ws["completion"]["histogram"][0] == 3 and ws["completion"]["histogram"][3] == 1


def test_table_shows_passwords_only_when_asked(hub):
    r = wod(hub, "create", HOOKED, "21")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEAT", "STATUS", "TIME", "ERROR"] and lines[1].split()[:2] == ["student21", "succeeded"]
    r = wod(hub, "cleanup", HOOKED, "21")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ["SEAT", "STATUS", "TIME", "COMPLETION", "ERROR"]


def test_a_failing_seat_is_named_and_fails_the_exit_status(hub):
    data, r = run_json(hub, "create", HOOKED, "22-24", "--show-passwords", expect=1)
    got = seats(data)
    assert data["failed"] == [23]
    assert got[23]["status"] == "failed" and "appliance of 23 is down" in got[23]["error"]
    assert got[22]["status"] == got[24]["status"] == "succeeded"
    assert "1 of 3 seat(s) failed: student23" in r.stderr
    run_json(hub, "purge", HOOKED, "22-24")


def test_an_unknown_workshop_fails_every_seat_with_the_service_sentence(hub):
    data, r = run_json(hub, "create", "WKSHP-Nope", "11-12", expect=1)
    assert data["failed"] == [11, 12]
    assert all(s["status"] == "refused" and "WKSHP-Nope" in s["error"] for s in data["seats"])
    r = wod(hub, "status", "WKSHP-Nope")
    assert r.returncode == 2 and r.stderr.startswith("wod: error: ") and "WKSHP-Nope" in r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (("create", CLASS, "5-2"), ["5-2"]),
        (("create", CLASS, "x"), ["STUDENTS"]),
        (("create", "not-a-workshop", "1"), ["WKSHP-"]),
        (("status",), ["token"]),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(hub, args, words):
    r = wod(hub, *args, token=None if args == ("status",) else "portal")
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("wod: error: ") and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr


def test_a_token_without_the_scope_is_refused(hub):
    r = wod(hub, "status", token="noscope")
    assert r.returncode == 2 and "custom:wod" in r.stderr


def test_url_and_token_come_from_the_environment_or_the_config_here(hub, tmp_path):
    env = {"WOD_API_TOKEN": hub.portal_token, "WOD_URL": hub.url}
    r = wod(hub, "status", "--json", token=None, url=False, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    # No --url, no $WOD_URL: the hub's URL from ./jupyterhub_config.py (the hub's own file)
    r = wod(hub, "status", "--json", token=None, url=False, cwd=hub.root, env={"WOD_API_TOKEN": hub.portal_token})
    assert r.returncode == 0, r.stderr
    assert CLASS in {w["name"] for w in json.loads(r.stdout)["workshops"]}
    r = wod(hub, "status", token=None, url=False, cwd=tmp_path, env={"WOD_API_TOKEN": hub.portal_token})
    assert r.returncode == 2 and "--url" in r.stderr


def test_ctrl_c_stops_submitting_waits_for_the_running_seat_and_reports(hub):
    argv = list(WOD) + ["create", SLOW, "31-35", "--parallel", "1", "--json", "--url", hub.url, "--token", hub.portal_token]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    first = proc.stderr.readline()  # the first seat is done; the second is running
    assert first.startswith("student31 succeeded"), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    data = json.loads(out)
    got = seats(data)
    assert data["interrupted"] and data["failed"] == []
    done = [n for n, s in got.items() if s["status"] == "succeeded"]
    assert done[0] == 31 and 2 <= len(done) <= 3, got  # the one running at Ctrl-C was waited for
    assert all(got[n]["status"] == "not submitted" for n in got if n not in done)
    assert "interrupted" in err and "not submitted" in err and "Traceback" not in err
    run_json(hub, "purge", SLOW, ",".join(map(str, done)))


def test_api_status_matches_its_openapi_schema_and_needs_the_read_scope(hub):
    from tests.svcutil import check

    with hub.client("portal", via_proxy=True) as api:
        data = check(api.get("api/status"), 200)
        assert {w["name"] for w in data["workshops"]} == {CLASS, HOOKED, SLOW}
        check(api.get("api/status?workshop=WKSHP-Nope"), 404)
        check(api.get("api/status?workshop=bad name"), 400)
    with hub.client("noscope") as api:
        check(api.get("api/status"), 403)


@pytest.mark.parametrize(
    "spec, seats",
    [("7", [7]), ("3-5", [3, 4, 5]), ("1,4,10-12", [1, 4, 10, 11, 12]), (" 2 , 2-3 ", [2, 3])],
)
def test_students_specs(spec, seats):
    from wod_jupyterhub.cli.batch import parse_students

    assert parse_students(spec) == seats


@pytest.mark.parametrize("spec", ["", "0", "5-2", "a", "1-", "-3", "1-20000", "1;2"])
def test_bad_students_specs(spec):
    from wod_jupyterhub.cli.batch import parse_students
    from wod_jupyterhub.errors import BadRequest

    with pytest.raises(BadRequest):
        parse_students(spec)


def test_completion_histogram_buckets():
    from wod_jupyterhub.service.overview import histogram

    assert histogram([0, 9, 10, 55, 99, 100]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]


def test_wod_users_creates_the_hubs_users_of_a_range_in_batches(hub):
    from wod_jupyterhub.cli.users import create_hub_users

    names = [f"student{n}" for n in range(501, 508)]
    seen = []
    assert create_hub_users(hub.api_url, hub.admin_token, names, batch=3, progress=lambda done, total: seen.append((done, total))) == 7
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert all(hub.hub_api("GET", f"/users/{name}").status_code == 200 for name in names)
    assert create_hub_users(hub.api_url, hub.admin_token, names) == 0  # all there: nothing new, no error
    with pytest.raises(SystemExit, match="refused"):
        create_hub_users(hub.api_url, hub.noscope_token, ["student509"])


def test_text_builders():
    from wod_jupyterhub.cli.tables import format_table, progress_bar

    assert format_table(["A", "BB"], [["xxx", "y"], ["z", ""]]).splitlines() == ["A    BB", "xxx  y", "z"]
    assert progress_bar(5, 10, 1, "CREATE", width=10) == "CREATE [#####-----] 5/10  1 failed"
    assert progress_bar(0, 0, width=4) == "[####] 0/0"


def test_status_counts_the_mail_relays_backlog(hub):
    """Participant mails waiting for the smarthost (the mail API's relay queue) show in api/status."""
    from sqlalchemy.orm import Session

    from tests.svcutil import check
    from wod_jupyterhub.store.models import MailMessage, make_engine, utcnow

    engine = make_engine(hub.db_url)
    with Session(engine) as s:
        for i, (delivered, failed) in enumerate(((None, None), (None, None), (utcnow(), None), (None, utcnow()))):
            s.add(MailMessage(kind="relay", sender="portal@example.com", recipient=f"p{i}@example.com", received=utcnow(),
                              delivered=delivered, failed=failed))
        s.add(MailMessage(kind="verb", sender="portal@example.com", recipient="wodadmin@example.com", received=utcnow()))
        s.commit()
    with hub.client("portal") as api:
        mail = check(api.get("api/status"), 200)["mail_outbox"]
    assert (mail["pending"], mail["refused"]) == (2, 1) and mail["oldest"]
    r = wod(hub, "status")
    assert "Mail outbox: 2 pending, 1 refused by the smarthost" in r.stdout, r.stdout
