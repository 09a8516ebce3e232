"""JupyterHub's internals that the hub parts use (wod_jupyterhub/hub/internals.py), checked against the installed JupyterHub.

Whatever a JupyterHub release changes of them fails here first, by name; setup.cfg allows only the
versions these internals are known for.
"""

import configparser
import inspect
from pathlib import Path

import jupyterhub
import pytest
from jupyterhub import orm, roles
from jupyterhub.app import JupyterHub
from jupyterhub.auth import Authenticator
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.user import User
from packaging.requirements import Requirement
from packaging.version import Version
from traitlets import Float, Integer

from wod_jupyterhub.hub import internals
from wod_jupyterhub.hub.auth import WodAuthenticator

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"


def required_jupyterhub() -> Requirement:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    lines = [line.split("#")[0].strip() for line in cfg["options"]["install_requires"].splitlines()]
    return next(Requirement(line) for line in lines if line and Requirement(line).name == "jupyterhub")


def test_setup_cfg_allows_the_versions_the_internals_are_known_for():
    assert str(required_jupyterhub().specifier) == str(Requirement(f"jupyterhub{internals.JUPYTERHUB_VERSIONS}").specifier)
    assert Version(jupyterhub.__version__) in required_jupyterhub().specifier


def test_the_hub_application_and_its_users_hold_what_is_read():
    assert "users" in JupyterHub.class_traits()
    assert "self.db = " in inspect.getsource(JupyterHub)
    assert "self.spawners = " in inspect.getsource(User) and "self.db = " in inspect.getsource(User)
    assert isinstance(BaseHandler.db, property) and isinstance(BaseHandler.users, property)
    # hub/frameless.py extends these two and sets their headers
    assert all(hasattr(cls, "set_default_headers") for cls in (internals.CacheControlStaticFilesHandler, internals.LogoHandler))
    assert internals.hub_users(object()) is None and internals.hub_db(object()) is None


def test_auth_refresh_age_is_an_integer_in_jupyterhub_compared_with_a_monotonic_difference():
    # Why WodAuthenticator may re-declare it a Float (see internals.refresh_age).
    assert isinstance(Authenticator.class_traits()["auth_refresh_age"], Integer)
    source = inspect.getsource(BaseHandler.refresh_auth)
    assert "time.monotonic()" in source and "< refresh_age" in source
    assert isinstance(WodAuthenticator.class_traits()["auth_refresh_age"], Float)


@pytest.fixture
def hubdb():
    db = orm.new_session_factory("sqlite://")()
    db.add(orm.OAuthClient(identifier="jupyterhub"))
    db.commit()
    yield db
    db.close()


def test_cookie_id_and_tokens_through_the_hub_orm(hubdb):
    row = orm.User(name="student3")
    hubdb.add(row)
    hubdb.commit()
    user = User(row, settings={}, db=hubdb)
    assert internals.orm_user(user) is row and internals.user_db(user) is hubdb and internals.user_db(row) is hubdb
    assert internals.find_orm_user(hubdb, "student3") is row
    assert internals.find_orm_user(hubdb, "student3", users={row.id: user}) is row
    assert internals.find_orm_user(hubdb, "nobody") is None
    internals.set_cookie_id(user, "wodg2.abc")
    assert internals.cookie_id(user) == "wodg2.abc" == row.cookie_id
    kept, gone = row.new_api_token(note="a server's"), row.new_api_token(note="a personal one")
    kept_id = internals.token_id(hubdb, kept)
    assert kept_id is not None and internals.token_id(hubdb, "not-a-token") is None and internals.token_id(None, kept) is None
    assert internals.revoke_tokens(hubdb, user, keep={kept_id}) == 1
    hubdb.commit()
    assert [t.id for t in row.api_tokens] == [kept_id] and internals.token_id(hubdb, gone) is None
    assert internals.spawners(user) == list(user.spawners.values()) and internals.spawners(None) == []
    assert internals.random_token() != internals.random_token()


def test_the_admin_page_starts_servers_with_the_global_fetch_and_shows_no_reason():
    # What hub/templates/admin.html builds on: the admin app's Start calls window.fetch (which the page wraps)
    # and says only "Failed to start server." itself; a release that shows the hub's reason makes the wrapper moot.
    from jupyterhub._data import DATA_FILES_PATH

    static = Path(DATA_FILES_PATH)
    app = (static / "static" / "js" / "admin-react.js").read_text(encoding="utf-8")
    assert "fetch(n,{method:t" in app and 's("Failed to ".concat(a.toLowerCase(),"."))' in app
    assert '{% block main %}' in (static / "templates" / "admin.html").read_text(encoding="utf-8")


def test_a_service_knows_its_own_host_and_prefix_for_the_landing_page():
    from jupyterhub.services.service import Service

    assert isinstance(BaseHandler.services, property)
    assert {"host", "prefix"} <= set(Service.class_traits()) | {n for n, v in vars(Service).items() if isinstance(v, property)}


def test_a_servers_oauth_tokens_tell_it_was_opened_and_a_services_request_tells_who_started_it():
    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="student4")
    db.add_all([user, orm.OAuthClient(identifier="jupyterhub"), client := orm.OAuthClient(identifier="jupyterhub-user-student4")])
    db.commit()
    user.new_api_token(note="Server at /user/student4/")  # the server's own token: not a browser's
    db.commit()
    assert not internals.has_oauth_token(user, client.identifier)
    user.new_api_token(oauth_client=client)  # what the hub gives a browser that logs in to the server
    db.commit()
    assert internals.has_oauth_token(user, client.identifier)

    class Request:
        current_user = orm.Service(name="wod")

    assert internals.requested_by_service(Request())
    Request.current_user = user
    assert not internals.requested_by_service(Request())
    assert not internals.requested_by_service(None)


def test_the_hubs_sqlite_file_commits_without_waiting_and_an_in_memory_one_is_left_alone(tmp_path):
    # JupyterHub's own engine (orm.new_session_factory, as init_db makes it), behind an application's ``db``.
    class Hub:
        db = orm.new_session_factory(f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}")()

    Hub.db.add(orm.User(name="student5"))  # a write left open: the journal mode changes only outside a transaction
    assert internals.sqlite_without_waiting_commits(Hub)
    assert internals.sqlite_without_waiting_commits(Hub)  # again: still so, one listener
    engine = Hub.db.get_bind()
    assert orm.User.find(Hub.db, "student5") is not None  # the pending write was committed, not lost
    engine.dispose()
    with engine.connect() as other:  # a connection the engine opens later gets the same
        raw = other.connection.dbapi_connection
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # JupyterHub's own pragma kept
    raw = Hub.db.connection().connection.dbapi_connection
    assert raw.execute("PRAGMA synchronous").fetchone()[0] == 1
    Hub.db.close()

    class Memory:
        db = orm.new_session_factory("sqlite://")()

    assert not internals.sqlite_without_waiting_commits(Memory)
    assert Memory.db.connection().connection.dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    assert not internals.sqlite_without_waiting_commits(object())


def test_a_servers_oauth_secret_is_stored_as_its_token_row_stores_the_same_token():
    from types import SimpleNamespace

    from jupyterhub.utils import compare_token, hash_token, new_token

    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="student6")
    db.add_all([user, orm.OAuthClient(identifier="jupyterhub")])
    db.commit()
    token = user.new_api_token(note="Server at /user/student6/")  # as User.spawn makes it: generated, one round
    client = orm.OAuthClient(identifier="jupyterhub-user-student6", secret=hash_token(token))  # as add_client stores it
    db.add(client)
    db.commit()
    spawner = SimpleNamespace(orm_spawner=SimpleNamespace(oauth_client=client), api_token=token)
    assert client.secret.startswith("sha512:16384:")

    assert internals.client_secret_as_its_token(db, spawner)
    db.commit()
    assert client.secret.startswith("sha512:1:") and compare_token(client.secret, token)
    assert not compare_token(client.secret, new_token())
    assert not internals.client_secret_as_its_token(db, spawner)  # already so

    # A secret that is not the server's token, or a token the hub did not generate (hashed at full rounds): left alone.
    other = hash_token(new_token())
    client.secret = other
    assert not internals.client_secret_as_its_token(db, spawner) and client.secret == other
    own = new_token()
    user.new_api_token(own, generated=False, note="retrieved from spawner")
    client.secret = chosen = hash_token(own)
    spawner.api_token = own
    assert not internals.client_secret_as_its_token(db, spawner) and client.secret == chosen
    # No OAuth client, no token, no database: nothing.
    assert not internals.client_secret_as_its_token(db, SimpleNamespace(orm_spawner=SimpleNamespace(oauth_client=None), api_token=token))
    assert not internals.client_secret_as_its_token(db, SimpleNamespace(api_token=""))
    assert not internals.client_secret_as_its_token(None, spawner)
    db.close()


def test_the_hubs_sqlite_connection_is_used_without_a_ping_and_other_databases_keep_theirs(tmp_path):
    from sqlalchemy import event

    class Hub:
        db = orm.new_session_factory(f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}")()

    engine = Hub.db.get_bind()
    statements = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *a: statements.append(statement))

    names = iter(range(10, 20))

    def a_transaction():
        statements.clear()
        Hub.db.add(orm.User(name=f"student{next(names)}"))
        Hub.db.commit()
        Hub.db.close()  # its connection back to the pool: the next use checks it out again
        orm.User.find(Hub.db, "nobody")
        return statements

    assert any(s.strip().upper().startswith("SELECT 1") for s in a_transaction())  # JupyterHub's ping, as installed
    assert internals.sqlite_without_pings(Hub)
    assert not any(s.strip().upper().startswith("SELECT 1") for s in a_transaction())
    assert not internals.sqlite_without_pings(Hub)  # nothing left to drop
    assert not internals.sqlite_without_pings(object())
    Hub.db.close()


def test_a_servers_oauth_token_is_made_for_its_own_user_with_the_scopes_authorize_grants():
    from jupyterhub.scopes import access_scopes, identify_scopes

    db = orm.new_session_factory("sqlite://")()
    owner, other = orm.User(name="student7"), orm.User(name="student8")
    client = orm.OAuthClient(identifier="jupyterhub-user-student7", allowed_scopes=[])
    db.add_all([owner, other, orm.OAuthClient(identifier="jupyterhub"), client])
    db.commit()
    for role in roles.get_default_roles():
        roles.create_role(db, role)
    for user in (owner, other):
        roles.assign_default_roles(db, user)  # as the hub gives every user the "user" role
    db.add(orm.Spawner(user=owner, name="", oauth_client=client))
    db.commit()

    class Spawner:
        orm_spawner = owner._orm_spawners[0]

    token = internals.oauth_token_for_server(db, owner, Spawner, "session-1", 3600)
    row = orm.APIToken.find(db, token)
    assert row.user is owner and row.oauth_client is client and row.session_id == "session-1"
    assert row.expires_at is not None and not row.note
    # What JupyterHub's authorize grants a server's client that asks for nothing more: identifying the user, the server.
    assert set(row.scopes) == set(identify_scopes()) | set(access_scopes(client))
    with pytest.raises(PermissionError):
        internals.oauth_token_for_server(db, other, Spawner, "session-2", 3600)
    Spawner.orm_spawner = None
    with pytest.raises(PermissionError):
        internals.oauth_token_for_server(db, owner, Spawner, "session-3", 3600)
    assert [t.session_id for t in owner.api_tokens] == ["session-1"] and not other.api_tokens
    db.close()


def test_a_handler_sets_a_plain_cookie_and_knows_its_session_and_the_oauth_token_age():
    assert "encrypted" in inspect.signature(BaseHandler._set_cookie).parameters
    assert "_session_id" in inspect.getsource(BaseHandler.get_session_cookie)
    assert "oauth_token_expires_in" in JupyterHub.class_traits()
    from types import SimpleNamespace

    handler = SimpleNamespace(authenticator=SimpleNamespace(parent=SimpleNamespace(oauth_token_expires_in=600)), settings={})
    assert internals.oauth_token_expires_in(handler) == 600
    handler = SimpleNamespace(authenticator=SimpleNamespace(parent=None), settings={"cookie_max_age_days": 2})
    assert internals.oauth_token_expires_in(handler) == 2 * 24 * 3600
