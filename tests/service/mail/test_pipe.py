"""``wod mail``: one mail on stdin, as postfix's pipe (or the original's procmail) hands it over, run for real."""

import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.hubutil import write_workshop
from tests.mailutil import SENDER, participant_bytes, portal_bytes
from tests.svcutil import DB
from wod_jupyterhub.store.models import MailMessage

WOD = [sys.executable, "-m", "wod_jupyterhub.cli", "mail"]


@pytest.fixture
def site(tmp_path):
    nb = tmp_path / "notebooks"
    write_workshop(nb, "WKSHP-Pipe", (1, 10))
    db_url = f"sqlite:///{tmp_path / 'wod.sqlite'}"
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()  # noqa\n"
        f"c.Wod.db_url = {db_url!r}\nc.Wod.notebooks = [{str(nb)!r}]\nc.Wod.base_student_id = 400\n"
        f"c.WodMail.sender = {SENDER!r}\nc.WodMail.relay = '127.0.0.1:9'\n"
    )
    db = DB(db_url)
    yield config, db
    db.dispose()


def wod_mail(config, data: bytes, *args):
    return subprocess.run([*WOD, "--config", str(config), *args], input=data, capture_output=True, timeout=120)


def mails(db):
    from sqlalchemy.orm import Session

    with Session(db.engine) as s:
        return list(s.scalars(select(MailMessage).order_by(MailMessage.id)))


def test_a_verb_dialog_queues_the_operation_once(site):
    config, db = site
    r = wod_mail(config, portal_bytes("CREATE 402 4242 p@example.org", "WKSHP-Pipe"))
    assert r.returncode == 0, r.stderr
    (op,) = db.ops()
    assert (op.verb, op.student, op.customer, op.workshop, op.status) == ("CREATE", 2, "4242", "WKSHP-Pipe", "queued")
    assert op.id in r.stdout.decode()
    # postfix delivering it again (a message, the envelope on the command line): not queued twice
    again = wod_mail(config, b"Subject: CREATE 402 4242 p@example.org\nWKSHP-Pipe\n", "--from", SENDER, "--to", "wodadmin@backend")
    assert again.returncode == 0 and b"already operation" in again.stdout
    assert db.count_ops() == 1


def test_a_participant_mail_waits_in_the_relay_outbox(site):
    config, db = site
    r = wod_mail(config, participant_bytes("zoe@example.org", "Bienvenue", "Bonjour Zoé"))
    assert r.returncode == 0, r.stderr
    (row,) = mails(db)
    assert (row.kind, row.recipient, row.subject, row.body) == ("relay", "zoe@example.org", "Bienvenue", "Bonjour Zoé\n")
    assert row.delivered is None and row.message_id


@pytest.mark.parametrize(
    "data,args,words",
    [
        (participant_bytes("v@example.org", "Hi", "spam", sender="mallory@evil.example"), (), b"not accepted"),
        (portal_bytes("CREATE 499 1 a@example.org", "WKSHP-Pipe"), (), b"outside the range"),
        (portal_bytes("CREATE 402 1 a@example.org", "WKSHP-Nope"), (), b"WKSHP-Nope"),
        (portal_bytes("CREATE 402", "WKSHP-Pipe"), (), b"not a verb"),
        (portal_bytes("CLEANUP 402 1", "WKSHP-Pipe")[:-3], (), b"no complete message"),
        (b"Subject: hi\n\nno envelope\n", (), b"--from and --to"),
        (b"\x00\xff" * 100, ("--from", SENDER), b"--from and --to"),
    ],
)
def test_refused_mail_exits_2_with_the_reason_and_stores_nothing(site, data, args, words):
    config, db = site
    r = wod_mail(config, data, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr and b"Traceback" not in r.stderr
    assert db.count_ops() == 0 and mails(db) == []


def test_a_database_it_cannot_reach_means_try_again(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()  # noqa\nc.Wod.db_url = 'postgresql://nobody@127.0.0.1:1/nothing'\n"
        f"c.WodMail.sender = {SENDER!r}\nc.WodMail.relay = '127.0.0.1:9'\n"
    )
    r = wod_mail(config, participant_bytes("zoe@example.org", "Bienvenue", "x"))
    assert r.returncode == 75, (r.stdout, r.stderr)
    assert b"try again" in r.stderr and b"Traceback" not in r.stderr


def test_without_config_it_reads_the_current_folders_configuration_as_every_command(site):
    config, db = site
    r = subprocess.run(WOD, input=portal_bytes("CREATE 403 4243 q@example.org", "WKSHP-Pipe"),
                       capture_output=True, timeout=120, cwd=config.parent)
    assert r.returncode == 0, r.stderr
    assert db.count_ops() == 1


@pytest.mark.parametrize("text,words", [("c = get_config()  # noqa\nc.Wod.db_url = (\n", b"cannot read"), (None, b"does not exist")])
def test_a_configuration_it_cannot_read_is_one_sentence_and_the_mail_waits(tmp_path, text, words):
    config = tmp_path / "jupyterhub_config.py"
    if text is not None:
        config.write_text(text)
    r = wod_mail(config, portal_bytes("CREATE 402 4242 p@example.org", "WKSHP-Pipe"))
    assert r.returncode == 75, (r.stdout, r.stderr)
    assert words in r.stderr and b"waits" in r.stderr and b"Traceback" not in r.stderr
