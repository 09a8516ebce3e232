"""Files holding secrets are the owner's only: the wod database, its -wal/-shm, the key file."""

import os
import stat

from sqlalchemy import text

from wod_jupyterhub.passwords import load_or_create_key
from wod_jupyterhub.store.models import Seat, Store


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_sqlite_database_and_its_wal_and_shm_are_private(tmp_path):
    old = os.umask(0o022)  # the usual umask, which made them 0644
    try:
        db = tmp_path / "wod.sqlite"
        store = Store(f"sqlite:///{db}")
        with store.session() as s:
            s.add(Seat(number=1, password_hash="scrypt$x", state="free", generation=0))
        with store.engine.connect() as c:  # the -wal and -shm exist while a connection is open
            c.execute(text("select 1"))
            files = {p.name: mode(p) for p in tmp_path.iterdir()}
        store.dispose()
    finally:
        os.umask(old)
    assert {"wod.sqlite", "wod.sqlite-wal", "wod.sqlite-shm"} <= set(files)
    assert set(files.values()) == {0o600}, files


def test_an_existing_open_database_is_made_private(tmp_path):
    db = tmp_path / "wod.sqlite"
    Store(f"sqlite:///{db}").engine.dispose()
    for name in ("wod.sqlite", "wod.sqlite-wal", "wod.sqlite-shm"):
        path = tmp_path / name
        path.touch()
        path.chmod(0o644)
    store = Store(f"sqlite:///{db}")
    with store.engine.connect() as c:  # (SQLite removes -wal and -shm when the last connection closes)
        c.execute(text("select 1"))
        files = {p.name: mode(p) for p in tmp_path.iterdir() if p.name.startswith("wod.sqlite")}
    store.dispose()
    assert files == {"wod.sqlite": 0o600, "wod.sqlite-wal": 0o600, "wod.sqlite-shm": 0o600}


def test_the_key_file_is_private_new_or_old(tmp_path):
    key_file = tmp_path / "wod_secret.key"
    key = load_or_create_key(str(key_file))
    assert mode(key_file) == 0o600
    key_file.chmod(0o644)
    assert load_or_create_key(str(key_file)) == key and mode(key_file) == 0o600
