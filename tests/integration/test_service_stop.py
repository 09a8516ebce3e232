"""SIGTERM or SIGINT at random moments: the service exits within ``shutdown_grace`` + 5 s, cleanly, every time.

The service runs beside a real hub (not managed by it, so the test signals
it), with a portal that accepts connections and never answers, hooks that
sleep (a verb is running when the signal lands) and a workshop big enough
that staging its free seats takes a while. The moments: while it starts and
warms up, while it prepares and stages free seats, while verbs run, and with
a hub that does not answer either. A clean stop logs "Stopped", exits 0,
and never needs the last-resort timer ("exiting now").
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.hubutil import free_port, write_workshop
from tests.mailutil import SENDER, participant_bytes, portal_bytes, portal_send

GRACE = 1.0  # the hooks sleep longer: a verb still runs when it is over
MAIL_PORT = free_port()
WORKSHOP = "WKSHP-Stop"
TRIALS = 12


@pytest.fixture(scope="module")
def silent():
    """A TCP port that takes connections and never answers (a hung portal or hub)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, silent):
    root = tmp_path_factory.mktemp("stop")
    nb = root / "notebooks"
    folder = write_workshop(nb, WORKSHOP, (1, 30))
    data = folder / "data"
    data.mkdir()
    for i in range(300):  # staging a seat copies these: long enough for a signal to land in it
        (data / f"part{i}.bin").write_bytes(os.urandom(32 * 1024))
    scripts = root / "scripts"
    scripts.mkdir()
    for kind in ("create", "cleanup"):
        hook = scripts / f"{kind}-{WORKSHOP}.sh"
        hook.write_text("#!/bin/sh\nsleep 3\n")
        hook.chmod(0o755)
    with module_hubs(
        root / "hub",
        notebooks=[nb],
        managed_service=False,
        api_db_url=silent,
        wod_config={"student_min": 1, "student_max": 30, "scripts": [str(scripts)], "skel": ""},
        service_config={"shutdown_grace": GRACE},
        # The mail API too: its listener takes mail while the signal lands, its relay hangs on a silent smarthost.
        extra_config="c.WodOperations.prepare_rescan = 0.5\nc.WodPortal.timeout = 30\n"
        f"c.WodMail.sender = {SENDER!r}\nc.WodMail.ip = '127.0.0.1'\nc.WodMail.port = {MAIL_PORT}\n"
        f"c.WodMail.relay = {silent.split('//', 1)[1]!r}\nc.WodMail.relay_timeout = 30\n",
    ) as hub:
        yield hub


def start(hub, log: Path, hub_api_url=None) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack into the log (see below)
    env.update(hub.service_env())
    env["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{hub.service_port}"
    if hub_api_url:
        env["JUPYTERHUB_API_URL"] = hub_api_url + "/hub/api"
    return subprocess.Popen(
        [sys.executable, "-m", "wod_jupyterhub.service", "--config", str(hub.config_path)],
        cwd=hub.root, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def ready(hub, proc, timeout=60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(hub.service_url + "api/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def test_the_service_stops_in_time_whatever_it_is_doing(hub, silent, tmp_path):
    rng = random.Random(20261127)
    moments = ["starting", "preparing", "verbs", "hub silent"]
    results = []
    for trial in range(TRIALS):
        moment = moments[trial % len(moments)]
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        log = tmp_path / f"service-{trial}.log"
        proc = start(hub, log, hub_api_url=silent if moment == "hub silent" else None)
        try:
            if moment in ("starting", "hub silent"):
                time.sleep(rng.uniform(0.0, 3.0))  # importing, migrating, warming up, asking the (silent) hub
            else:
                assert ready(hub, proc), log.read_text()[-3000:]
                if moment == "verbs":
                    with hub.client() as api:
                        for n in rng.sample(range(1, 31), 4):
                            api.post("api/create", json={"student": n, "customer": f"c{trial}", "email": "e@x", "workshop": WORKSHOP})
                    portal_send(MAIL_PORT, participant_bytes(f"p{trial}@example.org", "Welcome", "hello"))
                    portal_send(MAIL_PORT, portal_bytes(f"CREATE {rng.randint(1, 30)} m{trial} m@example.org", WORKSHOP))
                time.sleep(rng.uniform(0.0, 2.0))
            signalled = time.monotonic()
            proc.send_signal(sig)
            try:
                rc = proc.wait(GRACE + 5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # where it hangs, for the failure message
                proc.wait(10)
                pytest.fail(f"trial {trial} ({moment}, {sig.name}): still running {GRACE + 5} s after the signal\n" + log.read_text()[-8000:])
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text()
        results.append((trial, moment, sig.name, rc, round(took, 2)))
        assert "exiting now" not in text, f"trial {trial} ({moment}) needed the last-resort timer:\n{text[-3000:]}"
        assert rc == 0, f"trial {trial} ({moment}, {sig.name}) exited {rc}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"trial {trial} ({moment}):\n{text[-3000:]}"
    # The signals landed in each kind of moment, verbs running included.
    assert {m for _, m, *_ in results} == set(moments), results
    print(results)
