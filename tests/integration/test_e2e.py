"""Students in a real JupyterHub: real proxy, real wod service, real single-user servers and kernels.

One hub serves the whole module (a start costs ~7 s, a lab server ~6 s);
the tests book different seats so that they do not depend on each other's
order, except the restart test, which runs last and restarts the hub.
"""

import asyncio
import json
import re
from pathlib import Path

import httpx
import nbformat
import pytest
from sqlalchemy import select, update

from tests.seatutil import WORKSHOP, browser, cleanup, create, logged_in, login_form, open_lab, run_cells, server_get, spawn, wait_ready, whoami
from wod_jupyterhub.passwords import hash_password
from wod_jupyterhub.store.models import Completion, Seat, Store

ADMIN_PASSWORD = "admin-pass-for-e2e"
THROTTLE = 3


def write_workshop(root: Path, name: str, rng) -> None:
    """ReadMeFirst: 1 code cell; exercise: 2 code cells and a blank one (which does not count)."""
    v4 = nbformat.v4
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "wod.yml").write_text(f"name: e2e\nactive: true\ncapacity: 30\nrange: [{rng[0]},{rng[1]}]\nreset: false\n")
    readme = v4.new_notebook(cells=[v4.new_markdown_cell("# {{ WORKSHOP }} for student{{ STDID }}"), v4.new_code_cell("print('hello')")])
    exercise = v4.new_notebook(cells=[v4.new_code_cell("1 + 1"), v4.new_code_cell("2 + 2"), v4.new_code_cell("")])
    nbformat.write(readme, folder / "0-ReadMeFirst.ipynb")
    nbformat.write(exercise, folder / "1-Exercise.ipynb")


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    notebooks = root / "notebooks"
    write_workshop(notebooks, WORKSHOP, (1, 30))
    extra = "\n".join(
        [
            "c.JupyterHub.cookie_max_age_days = 4 / 24",
            f"c.WodAuthenticator.admin_password_hashes = {{'admin': {hash_password(ADMIN_PASSWORD)!r}}}",
            f"c.WodAuthenticator.throttle_failures = {THROTTLE}",
            # every test logs in from 127.0.0.1; the per-address limit is unit-tested
            "c.WodAuthenticator.throttle_ip_failures = 0",
        ]
    )
    with module_hubs(
        root,
        notebooks=[notebooks],
        authenticator_class="wod",
        spawner_class="wod",
        extra_config=extra,
        wod_config={"student_max": 40},
    ) as h:
        yield h


# -- the tests ---------------------------------------------------------------


def test_create_login_spawn_run_cleanup(hub):
    n, name = 1, "student1"
    password, customer = create(hub, n)
    c = logged_in(hub, name, password)
    assert whoami(c) == name
    spawn(hub, c, name)

    # the server serves the ReadMeFirst rendered into the student's home
    home = Path(hub.students_root) / name
    lab = open_lab(c, name)
    assert lab.status_code == 200 and lab.url.path == f"/user/{name}/lab"
    r = server_get(c, name, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
    assert r.status_code == 200, r.text[:500]
    model = r.json()
    assert model["type"] == "notebook"
    assert f"for student{n}" in "".join(model["content"]["cells"][0]["source"])
    assert (home / WORKSHOP / "0-ReadMeFirst.ipynb").is_file()

    # a real kernel runs the ReadMeFirst's code cell and the first exercise cell
    readme = model["content"]
    exercise = server_get(c, name, f"api/contents/{WORKSHOP}/1-Exercise.ipynb").json()["content"]
    code_cells = [readme["cells"][1], exercise["cells"][0]]
    counts, headers = asyncio.run(run_cells(hub, c, name, ["".join(cell["source"]) for cell in code_cells]))
    assert counts == [1, 2]
    for cell, count in zip(code_cells, counts):
        cell["execution_count"] = count
    for nb_name, nb in (("0-ReadMeFirst.ipynb", readme), ("1-Exercise.ipynb", exercise)):
        r = c.put(f"/user/{name}/api/contents/{WORKSHOP}/{nb_name}", json={"type": "notebook", "format": "json", "content": nb}, headers=headers)
        assert r.status_code == 200, r.text

    op = cleanup(hub, n, customer)
    # 2 of the 3 counted code cells ran (the blank one does not count)
    assert (op["result"]["completion"]["executed"], op["result"]["completion"]["total"], op["result"]["completion"]["ratio"]) == (2, 3, 66)
    store = Store(hub.db_url)
    with store.session() as s:
        rows = s.scalars(select(Completion).where(Completion.student == n)).all()
    store.dispose()
    kinds = {row.kind: (row.executed, row.total, row.customer) for row in rows}
    assert kinds["snapshot"] == (2, 3, customer)  # WodSpawner.post_stop_hook, at the server's stop
    # the old password is refused, the server is stopped, the home wiped
    assert login_form(browser(hub), name, password).status_code == 403
    assert hub.hub_api("GET", f"/users/{name}").json()["servers"] == {}
    assert not home.exists() or not any(home.iterdir())
    # and the session from before the CLEANUP is over
    assert whoami(c) is None


def test_previous_participants_session_ends_and_others_stay_out(hub):
    n, name = 2, "student2"
    old_password, old_customer = create(hub, n)
    old = logged_in(hub, name, old_password)
    assert whoami(old) == name
    old_cookies = dict(old.cookies)
    # the old participant also made an API token on the hub
    xsrf = old.cookies.get("_xsrf", path="/hub/")
    r = old.post(f"/hub/api/users/{name}/tokens", json={"note": "mine"}, headers={"X-XSRFToken": xsrf, "Referer": hub.url + "hub/token"})
    assert r.status_code == 201, r.text
    old_token = r.json()["token"]
    assert httpx.get(hub.api_url + "/user", headers={"Authorization": f"token {old_token}"}).json()["name"] == name
    cleanup(hub, n, old_customer)
    new_password, _ = create(hub, n)
    assert new_password != old_password

    def stale_browser():
        b = browser(hub)
        b.cookies.update(old_cookies)
        return b

    # the old browser, with every cookie it had, gets the login page ...
    assert whoami(stale_browser()) is None
    # ... before and after the new participant logged in and started the server
    new = logged_in(hub, name, new_password)
    spawn(hub, new, name)
    assert open_lab(new, name).status_code == 200
    assert server_get(new, name, f"api/contents/{WORKSHOP}").status_code == 200
    stale = stale_browser()
    assert whoami(stale) is None
    r = open_lab(stale, name)
    assert r.url.path == "/hub/login" and r.status_code == 200
    r = server_get(stale, name, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
    assert r.status_code == 403 and "cells" not in r.text
    # nor does the old API token
    assert httpx.get(hub.api_url + "/user", headers={"Authorization": f"token {old_token}"}).status_code == 403
    # the new participant is not logged out by any of it
    assert whoami(new) == name

    # another student, logged in, cannot reach student2's server either
    pw3, _ = create(hub, 3)
    s3 = logged_in(hub, "student3", pw3)
    r = open_lab(s3, name)
    assert r.status_code == 403, (r.status_code, r.url)
    r = server_get(s3, name, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
    assert r.status_code == 403 and "cells" not in r.text
    assert s3.get(f"/hub/api/users/{name}", headers={"Referer": hub.url + "hub/home"}).status_code in (403, 404)
    hub.hub_api("DELETE", f"/users/{name}/server")


def test_a_token_noted_like_a_servers_ends_with_the_seat_generation(hub):
    """The hub keeps a running server's own token, recognised by what it knows, not by a note."""
    n, name = 21, "student21"
    password, _ = create(hub, n)
    c = logged_in(hub, name, password)
    xsrf = c.cookies.get("_xsrf", path="/hub/")
    # users choose their own notes: this one claims to be a server's
    r = c.post(f"/hub/api/users/{name}/tokens", json={"note": f"Server at /user/{name}/"}, headers={"X-XSRFToken": xsrf, "Referer": hub.url + "hub/token"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]

    def me():
        return httpx.get(hub.api_url + "/user", headers={"Authorization": f"token {token}"}).status_code

    assert me() == 200
    # the seat changes hands in the wod database before the service got to the hub (its revoke call
    # failed or is yet to come): the hub alone must end what the participant had
    store = Store(hub.db_url)
    with store.session() as s:
        s.execute(update(Seat).where(Seat.number == n).values(generation=Seat.generation + 1))
    store.dispose()
    assert me() == 403
    assert me() == 403  # not only refused once: the token is gone
    tokens = hub.hub_api("GET", f"/users/{name}/tokens").json()["api_tokens"]
    assert not [t for t in tokens if (t.get("note") or "").startswith("Server at")], tokens


def test_admin_login_and_refusals(hub):
    admin = logged_in(hub, "admin", ADMIN_PASSWORD)
    me = admin.get("/hub/api/user", headers={"Referer": hub.url + "hub/home"}).json()
    assert me["name"] == "admin" and me["admin"] is True
    assert login_form(browser(hub), "admin", "not-it").status_code == 403

    # an unassigned seat, an out-of-range one and a stranger: the generic refusal
    for name in ("student5", "student41", "nobody"):
        r = login_form(browser(hub), name, "whatever-pass")
        assert r.status_code == 403 and "Invalid username or password" in r.text

    # a seat whose workshop ended: the right password gets a sentence saying why
    pw, customer = create(hub, 6)
    store = Store(hub.db_url)
    with store.session() as s:  # a RESET-kept seat: the home waits, nobody logs in
        s.execute(update(Seat).where(Seat.number == 6).values(state="kept"))
    store.dispose()
    r = login_form(browser(hub), "student6", pw)
    assert r.status_code == 403 and "no workshop booked" in r.text


def test_throttle_shows_429_on_the_form_and_survives_a_restart(hub):
    pw, _ = create(hub, 7)
    for _ in range(THROTTLE):
        assert login_form(browser(hub), "student7", "guessing").status_code == 403
    r = login_form(browser(hub), "student7", "guessing")
    assert r.status_code == 429
    assert "Too many failed logins" in r.text and 'name="username"' in r.text  # shown on the login form

    # a session opened before the restart survives it; the lockout too
    pw8, _ = create(hub, 8)
    kept = logged_in(hub, "student8", pw8)
    hub.stop()
    hub.start()
    assert login_form(browser(hub), "student7", "guessing").status_code == 429
    assert whoami(kept) == "student8"
    # the lock slows guessing, it never locks the owner out
    assert login_form(browser(hub), "student7", pw).status_code == 302


@pytest.mark.hub
def test_make_demo_path_books_a_seat_and_logs_in(tmp_path):
    """What `make demo` runs, in its self-check mode: the repository's jupyterhub_config.py, free ports."""
    import subprocess
    import sys

    from wod_jupyterhub.cli.hubprocess import hub_env

    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli.demo", "--check", "--state", str(tmp_path / "state")],
        env=hub_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert re.search(r"student\s+student\d+", r.stdout)
    assert re.search(r"password\s+\S{12}", r.stdout)
    assert re.search(r"portal token\s+[0-9a-f]{64}", r.stdout)
    assert "logged in through the login form" in r.stdout
    # everything it wrote stayed in its state folder
    assert (tmp_path / "state" / "wod.sqlite").exists() and (tmp_path / "state" / "students").is_dir()


@pytest.mark.root(reason="system-users mode is root's")
def test_the_demo_in_system_users_mode_without_the_students_python_says_so(tmp_path):
    import subprocess
    import sys

    from wod_jupyterhub.cli.hubprocess import hub_env

    env = {**hub_env(), "WOD_SYSTEM_USERS": "1", "WOD_STUDENT_PYTHON": str(tmp_path / "no-such-python")}
    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli.demo", "--check", "--state", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"demo: {tmp_path / 'no-such-python'} cannot run jupyterhub as another account; run `make system-users`" in r.stderr


def test_create_can_start_the_students_server(hubs, tmp_path):
    """c.WodOperations.start_server: CREATE ends with the participant's server starting; CLEANUP stops it."""
    notebooks = tmp_path / "notebooks"
    write_workshop(notebooks, WORKSHOP, (1, 5))
    with hubs(
        tmp_path / "hub",
        notebooks=[notebooks],
        authenticator_class="wod",
        spawner_class="wod",
        wod_config={"student_max": 5},
        service_config={"WodOperations.start_server": True},
    ) as hub:
        n, name = 3, "student3"
        password, customer = create(hub, n)
        with hub.client("portal") as c:
            [op] = c.get(f"api/operations?student={n}").json()["operations"]
        [step] = [s for s in op["steps"] if s["name"] == "start-server"]
        assert step["detail"].get("queued") is True, step
        # Started by the service, not by a login: ready without anyone asking.
        wait_ready(hub, name)
        # The participant's login lands on the running server, which serves the home the CREATE rendered.
        c = logged_in(hub, name, password)
        assert open_lab(c, name).status_code == 200
        r = server_get(c, name, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
        assert r.status_code == 200 and f"for student{n}" in json.dumps(r.json()["content"]), r.text[:300]
        op = cleanup(hub, n, customer)
        [stop] = [s for s in op["steps"] if s["name"] == "end-sessions"]
        assert stop["detail"]["stopped"] is True
        assert hub.hub_api("GET", f"/users/{name}").json()["servers"] == {}

        # The seat's next participant: the login ends the previous generation's sessions, and keeps
        # the token the hub gave the server the service started for this one.
        password, customer = create(hub, n)
        wait_ready(hub, name)
        c = logged_in(hub, name, password)
        assert open_lab(c, name).status_code == 200
        assert server_get(c, name, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb").status_code == 200
        tokens = hub.hub_api("GET", f"/users/{name}/tokens").json()["api_tokens"]
        assert [t for t in tokens if t["note"] == f"Server at /user/{name}/"], tokens  # the hub's, not a user's
        cleanup(hub, n, customer)
