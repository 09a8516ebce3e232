"""The mail listener taking 200 participant mails the portal's way, against the database floor.

Each mail is one portal connection: the whole dialog written at once before
the greeting, the client gone after the first byte. The listener (and its
ingress) parses it and writes it to the relay's outbox before answering. We
time the 200 mails from the first connect until all 200 rows are committed,
against a floor measured in the same run: the same 200 rows written through
the same ``Relay.enqueue``, one transaction each, with no SMTP at all. The
ratio says what the lenient SMTP handling adds to the durable write it
cannot avoid. (The smarthost is not involved: delivery is the relay loop's
job, after the answer.)
"""

import asyncio
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from wod_jupyterhub.config import Wod
from wod_jupyterhub.service.mail.ingress import Ingress
from wod_jupyterhub.service.mail.listener import MailListener
from wod_jupyterhub.service.mail.relay import Relay
from wod_jupyterhub.service.mail.settings import WodMail
from wod_jupyterhub.store.models import MailMessage, Store

MAILS = 200
REPEAT = 3
SENDER = "wodmailer@portal.example.com"


def dialog(i: int) -> bytes:
    body = f"\nBonjour participant {i},\n\nvotre mot de passe : Xq7-{i}\nhttps://hub.example.com/hub/login\n"
    return (
        f"HELO portal\nMAIL FROM: {SENDER}\nRCPT TO: p{i}@example.org\nDATA\nSubject: Vos accès {i}\n{body}\n.\n"
    ).encode()


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.recv(1)


def count(store) -> int:
    with store.Session() as s:
        return s.scalar(select(func.count()).select_from(MailMessage))


async def listener_run(store, settings) -> float:
    ingress = Ingress(settings, Wod(), store, Relay(store, settings))
    listener = await MailListener(settings, ingress).start()
    port = listener.address[1]
    before = count(store)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    # The portal sends from its own process: 8 senders at once, in threads of their own (the
    # listener's commits use the loop's default executor; the senders must not take its threads).
    with ThreadPoolExecutor(8) as senders:
        await asyncio.gather(*(loop.run_in_executor(senders, send, port, dialog(i)) for i in range(MAILS)))
    while count(store) < before + MAILS:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    await listener.stop()
    assert sum(ingress.refused.values()) == 0, ingress.refused
    return elapsed


def floor_run(store, settings) -> float:
    relay = Relay(store, settings)
    started = time.perf_counter()
    for i in range(MAILS):
        with store.session() as s:
            relay.enqueue(s, sender=SENDER, recipient=f"p{i}@example.org", subject=f"Vos accès {i}",
                          body=f"Bonjour participant {i},\n", peer="127.0.0.1")  # fmt: skip
    return time.perf_counter() - started


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'wod.sqlite'}")
        settings = WodMail(sender=SENDER, relay="127.0.0.1:9", ip="127.0.0.1", port=0, max_connections=256)
        floors, runs = [], []
        for _ in range(REPEAT):
            floors.append(floor_run(store, settings))
            runs.append(asyncio.run(listener_run(store, settings)))
        store.dispose()
    floor, run = statistics.median(floors), statistics.median(runs)
    print(f"{MAILS} portal mails through the listener: {run * 1000:.0f} ms ({MAILS / run:.0f} mails/s)")
    print(f"floor, the same {MAILS} outbox rows written directly: {floor * 1000:.0f} ms")
    print(f"ratio listener / floor: {run / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
