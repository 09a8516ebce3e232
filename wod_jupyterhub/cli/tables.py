"""Plain-text builders for the ``wod`` command: aligned tables and a progress bar (pure functions)."""

from ..store.locks import describe_key


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; trailing blanks dropped."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def progress_bar(done: int, total: int, failed: int = 0, label: str = "", width: int = 30) -> str:
    """``CREATE [##########----------]  5/10  1 failed`` (no newline: redrawn in place with \\r)."""
    filled = int(width * done / total) if total else width
    tail = f"  {failed} failed" if failed else ""
    return f"{label} [{'#' * filled}{'-' * (width - filled)}] {done}/{total}{tail}".lstrip()


def format_status(data: dict) -> str:
    """``wod status`` as text: the answer of ``GET api/status``."""
    out = []
    rows = []
    for w in data["workshops"]:
        s = w["seats"]
        c = w["completion"]
        rows.append([
            w["name"], "yes" if w["active"] else "no", f"{w['range'][0]}-{w['range'][1]}" if w["range"] else "-",
            w["capacity"], s["free"], s["active"], s["kept"], s["cleaning"],
            f"{c['mean']} % of {c['count']}" if c["count"] else "-",
        ])
    out.append(format_table(["WORKSHOP", "ACTIVE", "RANGE", "CAPACITY", "FREE", "ACTIVE", "KEPT", "CLEANING", "COMPLETION"], rows))
    held = data.get("seats") or []
    out.append(f"\nHeld seats: {len(held)}")
    if held:
        # What a verb for a seat must name: its workshop and its customer.
        out.append(format_table(
            ["SEAT", "STATE", "WORKSHOP", "CUSTOMER", "SINCE", "ENDS"],
            [[f"student{st['student']}", st["state"], st["workshop"] or "-", st["customer"] or "-", st["since"] or "-",
              st.get("ends_at") or "-"] for st in held],
        ))
    ops = data["operations"]
    for title, key in (("Running operations", "running"), ("Failed operations (latest)", "failed")):
        out.append(f"\n{title}: {len(ops[key])}")
        if ops[key]:
            out.append(format_table(
                ["ID", "VERB", "SEAT", "WORKSHOP", "STATUS", "CREATED", "ERROR"],
                [[o["id"][:8], o["verb"], _seat(o), o["workshop"] or "-", o["status"], o["created"],
                  (o["error"] or "").splitlines()[0][:80] if o["error"] else ""] for o in ops[key]],
            ))
    box = data["outbox"]
    out.append(f"\nCallback outbox: {box['pending']} pending ({box['retrying']} retrying), {box['refused']} refused by the portal"
               + (f", oldest {box['oldest']}" if box["oldest"] else ""))
    mail = data.get("mail_outbox")
    out.append("Mail outbox: " + (f"{mail['pending']} pending, {mail['refused']} refused by the smarthost" if mail else "none in this service"))
    locked = data["locked_logins"]
    out.append(f"Locked logins: {len(locked)}")
    for t in locked:
        # a lock starts a fresh count, so its failures say nothing about it: who is locked, until when
        out.append(f"  {describe_key(t['key'])}  locked until {t['locked_until']} (wod unlock lifts it)")
    if "service" in data:
        svc = data["service"]
        out.append(f"Service: {svc['running']} operation(s) running here, {svc['prepare_pending']} free seat(s) to prepare")
    return "\n".join(out)


def _seat(op: dict) -> str:
    return f"{op['students'][0]}-{op['students'][1]}" if op.get("students") else str(op["student"])
