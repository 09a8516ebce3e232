"""``wod mail``: one mail on stdin, taken as the listener takes it (for sites that keep postfix)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

EX_TEMPFAIL = 75
EX_REFUSED = 2


def _load_config(path: str | None):
    """The hub's configuration of ``--config`` (empty without one); a missing file is ``FileNotFoundError``."""
    from ...hubconfig import load_config

    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"configuration file {path} does not exist")
    return load_config(path)


def build_parser():
    """The parser of ``wod mail``'s options."""
    p = argparse.ArgumentParser(prog="wod mail", description="Take one mail from stdin as the mail listener would.")
    p.add_argument("--config", "-f", metavar="FILE", help="the hub's jupyterhub_config.py (c.Wod, c.WodMail)")
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="envelope sender (postfix: ${sender})")
    p.add_argument("--to", dest="recipients", action="append", metavar="ADDRESS", help="envelope recipient (postfix: ${recipient}); repeat for several")
    p.add_argument("--peer", metavar="IP", help="the client's address, checked against c.WodMail.allowed_sources (postfix: ${client_address})")
    return p


async def take(ingress, data: bytes, sender: str | None, recipients: list[str] | None, peer: str | None):
    """The Reply for one mail read whole: the listener's checks, in its order."""
    from .ingress import Envelope
    from .message import parse_dialog, parse_message

    dialog = parse_dialog(data)
    if dialog is not None:
        if dialog.data is None:
            return ingress.refuse("incomplete", 554, "5.6.0 The dialog on stdin has no complete message (no '.' line).")
        sender, recipients, data = sender or dialog.sender, recipients or dialog.recipients, dialog.data
    if sender is None or not recipients:
        headers = parse_message(data).headers
        sender = sender or _address(headers.get("return-path") or headers.get("from") or "")
        recipients = recipients or [a for a in (_address(x) for x in (headers.get("to") or "").split(",")) if a]
    if not sender or not recipients:
        return ingress.refuse("syntax", 554, "5.5.1 No sender or recipient: give --from and --to (postfix: ${sender} ${recipient}).")
    refused = ingress.check_source(peer, _local_submission(ingress.wod, peer))
    if refused is not None:
        return refused
    env = Envelope(peer=peer)
    answer = ingress.check_sender(env, sender)
    if not answer.ok:
        return answer
    env.sender = sender
    for rcpt in recipients:
        answer = ingress.check_recipient(env, rcpt)
        if not answer.ok:
            return answer
        env.recipients.append(rcpt)
    if len(data) > ingress.settings.max_message_size:
        return ingress.refuse("too_large", 552, f"5.3.4 Message larger than {ingress.settings.max_message_size} bytes; refused.")
    return await ingress.deliver(env, data)


def _local_submission(wod, peer: str | None) -> str | None:
    """Why a piped mail counts as a student's, or None: in system-users mode, one submitted on this machine."""
    from ...local_peers import is_local_address

    if getattr(wod, "system_users", False) and (not peer or is_local_address(peer)):
        return f"submitted on this machine ({'no --peer' if not peer else f'--peer {peer}'}), maybe by a student"
    return None


def _address(value: str) -> str | None:
    from email.utils import parseaddr

    address = parseaddr(value)[1]
    return address or None


async def _run(args, config, data: bytes) -> int:
    from ...config import Wod
    from ...store.models import Store
    from .ingress import Ingress
    from .relay import Relay
    from .settings import WodMail
    from .submit import engine_submit

    log = logging.getLogger("wod.mail")
    wod = Wod(config=config)
    settings = WodMail(config=config)
    if not settings.enabled:
        print("wod mail: c.WodMail.sender is not set: the mail API is off", file=sys.stderr)
        return EX_REFUSED
    store = Store(wod.db_url)
    try:
        submit, holding, close = engine_submit(config, wod, store, log)
        try:
            ingress = Ingress(settings, wod, store, Relay(store, settings, log=log), submit, log=log, holding=holding)
            reply = await take(ingress, data, args.sender, args.recipients, args.peer)
        finally:
            close()
    finally:
        store.dispose()
    stream = sys.stdout if reply.ok else sys.stderr
    print(f"wod mail: {reply}", file=stream)
    if reply.ok:
        return 0
    return EX_TEMPFAIL if 400 <= reply.code < 500 else EX_REFUSED


def main(argv=None) -> int:
    """``wod mail``: take the mail on stdin; 0 when taken, 75 to try again later, 2 when refused."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)1.1s %(asctime)s wod mail] %(message)s", stream=sys.stderr)
    logging.getLogger("wod").setLevel(logging.INFO)
    from .settings import WodMail

    limit = WodMail.max_message_size.default_value
    config = problem = None
    try:
        config = _load_config(args.config)
        limit = WodMail(config=config).max_message_size
    except Exception as e:  # reported below with its reason, once the mail is read
        problem = e
    data = sys.stdin.buffer.read(limit * 2 + 65536)
    try:
        if problem is not None:
            raise problem
        return asyncio.run(_run(args, config, data))
    except FileNotFoundError as e:
        print(f"wod mail: error: {e}", file=sys.stderr)
        return EX_REFUSED
    except Exception as e:  # postfix keeps the mail and tries again
        reason = " ".join(str(e).split())[:300]
        print(f"wod mail: could not take the mail now ({type(e).__name__}: {reason}); try again", file=sys.stderr)
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
