"""The verbs: what each does to a seat, step by step. The engine runs ``VERBS[op.verb](run, work)``."""

import asyncio
import json
import os

from sqlalchemy import insert, select

from ...errors import Unprocessable, WodError
from ...seats import completion as completion_mod
from ...seats import completion_worker
from ...store.models import SEATS, Completion, SeatState, isoformat, read_seat, update_seat, utcnow
from ...workshops.steps import steps_ratio
from ..expiry import parse_time, seat_end
from ..hooks import new_vars_file, read_vars_file
from .admission import check_active
from .steps import AT_ONCE, FREED, TAKE_BACK, end_sessions_step, hooks_step, rotate_step

# ---------------------------------------------------------------- CREATE


async def create(run, work):
    """CREATE: give seat N to a customer, with fresh notebooks and a new password.

    Steps, in order:
      rotate           a new password: its hash on the seat, sealed on the operation
      ldap             (``ldap: true`` workshops) the password set in the directory; an unreachable one is
                       tried for ``c.WodLdap.retry_for`` seconds, then the CREATE fails: the seat is never
                       handed out with a password the directory does not know
      hub              the hub user exists and the previous holder's tokens are revoked
                       (beside the next three steps: the hub is another process, with its own core)
      hooks-create     the workshop's create hooks; they may hand variables to the templates
      provision        the home rendered from the workshop (a staged seat only renders its templates)
      hooks-post-copy  the workshop's post-copy hooks
      assign           the seat is the customer's until its ``ends_at`` (the request's, else the workshop's
                       ``duration``, else ``c.Wod.default_duration``); the portal hears the password. After ``hub``: the
                       participant hears of the seat once the previous holder's tokens are gone, and a
                       hub that fails leaves no seat half given
      start-server     the participant's server is queued to start ahead (``c.WodOperations.start_server``;
                       it starts when ``c.WodAhead`` gives it a turn)

    A CREATE that fails before ``assign`` erases what it provisioned.
    """
    # Here, not at the top: homes brings Jinja2 and nbformat, which `wod mail` (it only queues) never needs.
    from ...seats import homes
    from ...workshops.variables import template_variables

    n = run.student
    ws, folder, mode = work.catalog.workshop(run.workshop)

    def still_open():
        # The workshop may have changed since the request was queued.
        check_active(ws, folder)
        work.catalog.get().check_student(ws, n, work.wod)

    await rotate_step(run, work, [n], check=still_open, owner_only=True)
    password = work.sealer.open(run.result["password"])
    hub = asyncio.ensure_future(run.step("hub", lambda: _hub_part(run, work)))
    try:

        async def hooks_create():
            vars_file = new_vars_file()
            try:
                detail = await work.run_hooks("create", folder, ws, mode, n, run.customer, vars_file)
                hook_vars = read_vars_file(vars_file)
            except ValueError as e:
                raise Unprocessable(str(e)) from e
            finally:
                os.unlink(vars_file)
            if hook_vars:
                run.result["hook_vars"] = work.sealer.seal(json.dumps(hook_vars))
            return detail

        await run.step("hooks-create", hooks_create, skip=work.hook_skip("create", folder))

        async def provision():
            sealed = run.result.get("hook_vars")
            variables = template_variables(
                work.wod, ws, n, password, modews=mode, hook_vars=json.loads(work.sealer.open(sealed)) if sealed else None,
                hostname=work.hostname,
            )
            uid, info = work.uid(n), {}
            await work.blocking(
                lambda: homes.provision(work.wod, ws, n, variables, renderer=work.renderer, uid=uid, gid=uid, info=info)
            )
            return info

        await run.step("provision", provision)
        await hooks_step(run, work, "post-copy", folder, ws, mode, n)
        await hub
    except BaseException as e:
        hub.cancel()
        await asyncio.gather(hub, return_exceptions=True)
        if not isinstance(e, asyncio.CancelledError):
            await _undo_create(run, work)
        raise

    run.result["login_url"] = work.settings.login_url.format(user=f"student{n}", student=n)

    def assign(conn, _detail):
        # sessions_ended: from now on the participant may log in.
        now = utcnow()
        requested = run.result.get("ends_at")
        ends_at = seat_end(work.wod, ws, parse_time(requested) if requested else None, now)
        run.result["ends_at"] = isoformat(ends_at)
        update_seat(
            conn, n, state=SeatState.ACTIVE, sessions_ended=False, customer=run.customer, email=run.email,
            workshop=run.workshop, assigned_at=now, ends_at=ends_at,
        )
        work.outbox.student_password(conn, n, password, operation_id=run.id)
        work.outbox.customer_active(conn, n, run.customer, True, operation_id=run.id)

    await run.step("assign", None, assign)
    if work.settings.start_server and work.hub.configured and work.ahead is not None:

        async def start_server():
            return work.ahead.request(f"student{n}")

        await run.step("start-server", start_server)


async def _hub_part(run, work) -> dict:
    n = run.student
    if not work.hub.configured:
        return {"skipped": "no hub API configured"}
    if await work.hub.ensure_user(f"student{n}"):
        return {"created": True}  # a new user has no token to revoke
    if not _needs_revoke(run):
        return {"revoked": "already: at the seat's last CLEANUP, PURGE or RESET, or while it was free"}
    return await work.end_hub_sessions(n, stop=False)


def _needs_revoke(run) -> bool:
    """False when the seat's sessions were ended on the hub already (``Seat.sessions_ended``).

    CLEANUP, PURGE and RESET end them, and so does the preparation of a
    free seat while the service is idle; since then no one could log in
    (the seat was not active), so there is nothing new to revoke.
    """
    seen = run.seat
    if seen is not None:  # read by this run's rotate step; the lease kept the seat since
        return not seen["sessions_ended"]
    with run.store.engine.connect() as conn:
        return not read_seat(conn, run.student).sessions_ended


async def _undo_create(run, work):
    """A CREATE that failed before the assignment leaves no half-provisioned home behind."""
    with run.store.engine.connect() as conn:
        st = read_seat(conn, run.student)
    held = st is not None and st.state in SeatState.HELD
    if not held:
        try:
            await work.blocking(work.wipe, run.student)
        except Exception:
            work.log.exception("Erasing the home of student %s after a failed CREATE failed", run.student)


# ---------------------------------------------------------------- CLEANUP

_ADD_COMPLETION = insert(Completion.__table__)  # built once, like the statements of store.update_seat


async def cleanup(run, work):
    """CLEANUP: take seat N back from its customer, measuring how far they got.

    Steps, in order:
      rotate         a new password; the seat is ``cleaning``; the portal hears the password
      ldap           (``ldap: true`` workshops) the password set in the directory (a directory still down
                     after ``c.WodLdap.retry_for``: a warning, the seat's next CREATE sets it)
      hooks-cleanup  the workshop's cleanup hooks
      verify-steps   (workshops with steps) the checks of the steps not verified yet run again, while what
                     the participant left running still runs
      end-sessions   the server stopped, the tokens revoked
      completion     the completion ratio, stored and sent to the portal: verified steps over steps for a
                     workshop with steps, else the workshop's own notebooks' executed cells (both are stored)
      release        the home erased and the seat free; or, for a reset: true workshop, kept for RESET

    The hooks read the home as the participant left it; the rotation before
    them already stopped anyone from starting a new session. The ratio is
    read once the server is stopped, not merely before the erase: a running
    server could still write the notebooks it counts.
    """
    n, outbox = run.student, work.outbox

    def cleaning(conn, n, password):
        outbox.student_password(conn, n, password, operation_id=run.id)
        return {"state": SeatState.CLEANING}  # from here no one logs in as N: the assignment ends with the old password

    await rotate_step(run, work, [n], owner_only=True, seat=cleaning, directory=TAKE_BACK)
    ws, folder, mode = work.catalog.workshop_or_none(run.workshop)
    await hooks_step(run, work, "cleanup", folder, ws, mode, n)
    checker = getattr(work, "steps", None)
    if checker is not None and ws is not None and ws.steps:

        async def verify_steps():
            run.result["steps"] = await work.blocking(checker.verify_remaining, n, run.workshop)
            return run.result["steps"] or {"skipped": "the seat holds no assignment to check"}

        await run.step("verify-steps", verify_steps)

    # Stop, then measure, then erase: what the participant's server
    # could still write is written before the ratio is read.
    await end_sessions_step(run, work, [n])

    async def measure():
        ratio = await work.blocking(seat_completion, work.wod, n, folder, ws)
        verified = run.result.get("steps")
        if verified:
            # The cells' ratio stays in the detail; the ratio that counts is what the checks verified.
            ratio = {**ratio, "cells_ratio": ratio["ratio"], "steps": verified,
                     "ratio": steps_ratio(verified["verified"], verified["total"])}
        run.result["completion"] = ratio
        return {"ratio": ratio["ratio"], **({"steps": f"{verified['verified']}/{verified['total']}"} if verified else {})}

    def store_completion(conn, _detail):
        ratio = run.result["completion"]
        conn.execute(
            _ADD_COMPLETION,
            dict(
                student=n, customer=run.customer, workshop=run.workshop, kind="cleanup",
                ratio=ratio["ratio"], executed=ratio["executed"], total=ratio["total"], detail=ratio,
            ),
        )
        outbox.customer_completion(conn, n, run.customer, ratio["ratio"], operation_id=run.id)

    await run.step("completion", measure, store_completion)
    keep = ws is not None and ws.reset

    async def release():
        detail = {"kept": keep}
        # Every CLEANUP kills and clears the uid's leftovers; a kept home stays (unless over its size limit).
        detail.update(await work.blocking(work.wipe, n, keep))
        return detail

    def released(conn, _detail):
        if keep:
            update_seat(conn, n, state=SeatState.KEPT)
            outbox.student_assigned(conn, n, True, operation_id=run.id)
            outbox.customer_active(conn, n, run.customer, False, operation_id=run.id)
        else:
            update_seat(conn, n, **FREED)
            outbox.student_assigned(conn, n, False, operation_id=run.id)
        outbox.customer_cleaned(conn, n, run.customer, operation_id=run.id)

    await run.step("release", release, released)


def seat_completion(wod, n: int, folder: str | None, ws) -> dict:
    """The ratio of the notebooks the workshop provisions in seat N's home, measured in a bounded worker.

    Only those count (a notebook the participant added gave 100 %); none
    is ever followed through a link, and nothing the home holds raises.
    """
    if not folder:
        return completion_worker.failed("no workshop on this seat: nothing to measure")
    if ws is None:
        return completion_worker.failed(f"{folder} is not in the catalog any more: its notebooks are not known")
    try:
        notebooks = completion_mod.provisioned_notebooks(ws)
    except WodError as e:  # the workshop's own folder broke since the CREATE (an admin's matter)
        return completion_worker.failed(f"the notebooks of {folder} cannot be listed: {e}")
    return completion_worker.measure(wod.home(n) / folder, notebooks=notebooks, **wod.completion_limits())


# ---------------------------------------------------------------- RESET


async def reset(run, work):
    """RESET: erase the seats of N..M kept for a reset: true workshop and free them, whoever held them.

    Steps, in order:
      seats         which seats of the range are kept for this workshop: the only ones it touches
                    (not a free seat, not a seat of another workshop whose range overlaps)
      rotate        a new password per seat; the seats are ``cleaning``; the portal hears the passwords
      ldap          (``ldap: true`` workshops) the passwords set in the directory, as for CLEANUP
      end-sessions  the servers stopped, the tokens revoked
      hooks-reset   the workshop's reset hooks
      erase         the homes erased, the seats free; the portal hears the workshop's capacity (for a range)
    """
    ws, folder, mode = work.catalog.workshop(run.workshop)
    outbox = work.outbox

    async def choose():
        # Under the range's leases: no other operation changes these seats until this one ends.
        with run.store.engine.connect() as conn:
            return {"seats": kept_for(work, conn, list(run.students), folder)}

    numbers = (await run.step("seats", choose))["seats"]

    def cleaning(conn, n, password):
        outbox.student_password(conn, n, password, operation_id=run.id)
        return {"state": SeatState.CLEANING}

    if numbers:
        await rotate_step(run, work, numbers, seat=cleaning, directory=TAKE_BACK)
        await end_sessions_step(run, work, numbers)
    else:
        none = f"no seat of {run.student}..{run.last} is kept for {folder}"
        for name in ("rotate", "end-sessions"):
            await run.step(name, skip=none)
    await hooks_step(run, work, "reset", folder, ws, mode, run.student)

    async def erase():
        for n in numbers:
            await work.blocking(work.wipe, n)

    def erased(conn, _detail):
        for n in numbers:
            update_seat(conn, n, **FREED)
            outbox.student_assigned(conn, n, False, operation_id=run.id)
        if run.last != run.student:
            outbox.workshop_capacity(conn, folder, run.last - run.student + 1, operation_id=run.id)
        run.result["students"] = [run.student, run.last]

    await run.step("erase", erase, erased)


def kept_for(work, conn, numbers, folder) -> list:
    """The seats of ``numbers`` kept for workshop ``folder`` (their workshop may be named ``CHLG-…``)."""
    rows = conn.execute(
        select(SEATS.c.number, SEATS.c.workshop).where(SEATS.c.number.in_(numbers), SEATS.c.state == SeatState.KEPT)
    ).all()
    return sorted(n for n, ws in rows if ws and work.catalog.workshop_or_none(ws)[1] == folder)


# ---------------------------------------------------------------- PURGE


async def purge(run, work):
    """PURGE: take seat N back at once, whatever state it and the hub are in.

    Steps, in order:
      rotate        a new password; the seat is ``cleaning``
      ldap          (``ldap: true`` workshops) the password set in the directory: one attempt, a failure a warning
      end-sessions  the server stopped, the tokens revoked; a hub error is kept as a warning, not a failure
      erase         the home erased, the seat free; the portal hears the new password
    """
    n, outbox = run.student, work.outbox

    def cleaning(_conn, _n, _password):
        return {"state": SeatState.CLEANING}

    await rotate_step(run, work, [n], seat=cleaning, directory=AT_ONCE)
    # PURGE must get the seat back even when the hub side is broken too.
    await end_sessions_step(run, work, [n], tolerate_hub_errors=True)

    async def erase():
        return await work.blocking(work.wipe, n)

    def erased(conn, _detail):
        update_seat(conn, n, **FREED)
        outbox.student_assigned(conn, n, False, operation_id=run.id)
        outbox.student_password(conn, n, work.sealer.open(run.result["password"]), operation_id=run.id)

    await run.step("erase", erase, erased)


# ---------------------------------------------------------------- PASSWORD


async def password(run, work):
    """PASSWORD: a new password for active seat N; its home, its workshop and its customer stay as they are.

    Steps, in order:
      rotate        a new password: its hash on the seat (every session issued before ends), sealed on the
                    operation; the portal hears it, as after a CREATE
      end-sessions  the server stopped, the tokens revoked: no one works on with the old password
      reopen        the seat's hub sessions are its holder's again (the next CREATE asks the hub to revoke them)
    """
    n = run.student

    def renewed(conn, n, password):
        work.outbox.student_password(conn, n, password, operation_id=run.id)

    await rotate_step(run, work, [n], owner_only=True, seat=renewed)
    await end_sessions_step(run, work, [n])

    def reopened(conn, _detail):
        # The participant logs in again with the new password: the seat's sessions are live once more.
        update_seat(conn, n, sessions_ended=False)

    await run.step("reopen", None, reopened)


#: verb -> the function that runs it; the engine runs ``VERBS[op.verb](run, work)``.
VERBS = {"CREATE": create, "CLEANUP": cleanup, "RESET": reset, "PURGE": purge, "PASSWORD": password}
