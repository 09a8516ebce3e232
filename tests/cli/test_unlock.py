"""``wod unlock``: an admin lifts the throttle's locks on a name or an address; ``wod status`` says who is locked."""



from tests.cliutil import run_wod as wod
from tests.lockutil import SETTINGS, lock, locked_keys
from wod_jupyterhub.cli.tables import format_status
from wod_jupyterhub.hub.throttle import LoginThrottle
from wod_jupyterhub.store.models import Store


def test_unlock_a_name_then_an_address(tmp_path):
    db = f"sqlite:///{tmp_path / 'wod.sqlite'}"
    (tmp_path / "jupyterhub_config.py").write_text(f"c = get_config()\nc.Wod.db_url = {db!r}\n")
    store = Store(db)
    throttle = LoginThrottle(store, SETTINGS)
    lock(throttle, "student3", "10.0.0.1")
    lock(throttle, "student4", "10.0.0.9")
    lock(throttle, "student5", "10.0.0.9")  # the address's third failing name locks it
    assert {"pair:student3@10.0.0.1", "user:student3", "ip:10.0.0.9"} <= locked_keys(store)

    r = wod("unlock", "student3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("unlocked student3: ") and "student3 from 10.0.0.1" in r.stdout and "student3 (the name" in r.stdout
    assert not [k for k in locked_keys(store) if "student3" in k]
    assert "ip:10.0.0.9" in locked_keys(store)  # another name's lock stays

    r = wod("unlock", "--address", "10.0.0.9", cwd=tmp_path)
    assert r.returncode == 0 and "address 10.0.0.9 (every name)" in r.stdout, r.stdout
    assert not [k for k in locked_keys(store) if "10.0.0.9" in k]

    r = wod("unlock", "student3", cwd=tmp_path)
    assert r.returncode == 0 and "was not locked" in r.stdout
    r = wod("unlock", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("wod: error: give a NAME")


def test_status_names_who_is_locked_not_a_count_of_zero():
    data = {
        "generated": "now", "workshops": [], "seats": [], "operations": {"running": [], "failed": [], "recent": []},
        "outbox": {"pending": 0, "retrying": 0, "refused": 0, "oldest": None},
        "mail_outbox": {"pending": 0, "refused": 0, "oldest": None},
        "locked_logins": [{"key": "pair:student3@10.0.0.1", "failures": 0, "locked_until": "2026-01-01T10:05:00Z"}],
    }
    text = format_status(data)
    assert "student3 from 10.0.0.1  locked until 2026-01-01T10:05:00Z (wod unlock lifts it)" in text
    assert "0 failures" not in text
