"""The steps several verbs share, with one name each in every journal."""

from ...errors import Unprocessable
from ...store.models import SeatState, read_seat, update_seat, utcnow
from ..hubclient import HubAPIError
from .admission import check_holder

#: What a verb does with the rotated password, for the ``ldap`` step: hands it out (the directory must have
#: it before anyone hears it), takes the seat back (a directory still down is a warning), or takes it back at
#: once (PURGE: one attempt).
HAND_OUT, TAKE_BACK, AT_ONCE = "hand-out", "take-back", "at-once"


async def rotate_step(run, work, seats, *, check=None, owner_only=False, seat=None, directory=HAND_OUT):
    """The ``rotate`` step for ``seats``: a password each, its hash on the seat, sealed on the operation.

    Then, for an ``ldap: true`` workshop, the ``ldap`` step (:func:`directory_step`, as ``directory``
    says): every verb that rotates a password keeps the directory in step through here.

    ``check()``: raises when the step must not run (a CREATE's workshop became
    inactive). ``owner_only``: a seat held by another customer than the run's
    fails the step (``check_holder``). ``seat(conn, n, password)``: what the
    verb does to seat ``n`` in the same transaction; it returns the seat's
    columns to set with the rotation (a dict, or None). The one seat's password
    goes to ``result["password"]``, a range's to ``result["passwords"]``; a run
    without a workshop takes the seat's.
    """
    fresh = {}

    async def rotate():
        if check is not None:
            check()
        with run.store.engine.connect() as conn:
            for n in seats:
                st = read_seat(conn, n)
                if owner_only:
                    check_holder(n, st.customer if st.state in SeatState.HELD else None, run.customer)
                run.seat = {"sessions_ended": st.sessions_ended}
                run.workshop = run.workshop or st.workshop
        for n in seats:
            fresh[n] = await work.new_password()
        if len(seats) == 1:
            run.result["password"] = work.sealer.seal(fresh[seats[0]][0])
        else:
            run.result["passwords"] = {str(n): work.sealer.seal(password) for n, (password, _) in fresh.items()}

    def rotated(conn, _detail):
        # A verb handing the password out to an ldap: true workshop's seat does what it does with it (tell the
        # portal) in the ldap step instead, once the directory knows it.
        later = directory == HAND_OUT and _ldap_workshop(run, work) is not None
        for n, (password, hashed) in fresh.items():
            more = (seat(conn, n, password) or {}) if seat is not None and not later else {}
            # The new generation ends every session issued before the seat changed hands.
            update_seat(conn, n, new_generation=True, password_hash=hashed, rotated_at=utcnow(), **more)

    await run.step("rotate", rotate, rotated)
    await directory_step(run, work, seats, directory, seat=seat if directory == HAND_OUT else None)


def _ldap_workshop(run, work):
    """The run's workshop if it has ``ldap: true``, else None."""
    ws = work.catalog.workshop_or_none(run.workshop)[0]
    return ws if ws is not None and ws.ldap else None


async def directory_step(run, work, seats, directory=HAND_OUT, seat=None):
    """The ``ldap`` step: the rotated passwords of ``seats`` set in the directory, if the run's workshop has ``ldap: true``.

    The passwords come from the operation's sealed result, so a run resumed
    after a crash sets the very passwords the rotation stored. ``directory``:
    :data:`HAND_OUT` keeps trying an unreachable directory for
    ``c.WodLdap.retry_for`` seconds, then fails the verb (before anyone
    hears the password); :data:`TAKE_BACK` tries as long, then journals a
    warning and goes on; :data:`AT_ONCE` tries once, a failure a warning.
    ``seat(conn, n, password)``: the verb's work with the password, left
    by the ``rotate`` step to this step's effects (:data:`HAND_OUT` only).
    """
    ws = _ldap_workshop(run, work)
    if ws is None:
        return None
    if len(seats) == 1 and "password" in run.result:
        sealed = {seats[0]: run.result["password"]}
    else:
        sealed = {int(k): v for k, v in run.result.get("passwords", {}).items() if int(k) in seats}
    if not sealed:
        raise Unprocessable(f"the rotated passwords of {ws.name} are not in the operation: the directory cannot be set")

    async def set_passwords():
        passwords = {n: work.sealer.open(v) for n, v in sealed.items()}
        return await work.set_directory_passwords(
            passwords, retry=directory != AT_ONCE, required=directory == HAND_OUT, workshop=ws.name
        )

    def handed_out(conn, _detail):
        for n, v in sealed.items():
            more = seat(conn, n, work.sealer.open(v))
            if more:
                update_seat(conn, n, **more)

    return await run.step("ldap", set_passwords, handed_out if seat is not None else None)


def end_sessions_step(run, work, seats, *, tolerate_hub_errors=False):
    """The ``end-sessions`` step: stop the servers and revoke the tokens of ``seats`` on the hub.

    Its detail: what the hub said for the one seat, or per seat (``{"11": {...}, ...}``) for several.

    Records ``Seat.sessions_ended`` per seat; a skipped or failed attempt leaves the next CREATE to ask the hub.
    """

    async def end():
        detail = {}
        for n in seats:
            try:
                detail[str(n)] = await work.end_hub_sessions(n, stop=True)
            except HubAPIError as e:
                if not tolerate_hub_errors:
                    raise
                detail[str(n)] = {"warning": str(e)}
        return detail if len(seats) > 1 else detail[str(seats[0])]

    def ended(conn, detail):
        per_seat = detail if len(seats) > 1 else {str(seats[0]): detail}
        for n in seats:
            d = per_seat[str(n)]
            update_seat(conn, n, sessions_ended="skipped" not in d and "warning" not in d)

    return run.step("end-sessions", end, ended)


def hooks_step(run, work, kind, folder, ws, mode, n):
    """The step ``hooks-<kind>``: the workshop's hooks of that kind for seat ``n``, skipped when it has none."""
    async def hooks():
        return await work.run_hooks(kind, folder, ws, mode, n, run.customer)

    return run.step(f"hooks-{kind}", hooks, skip=work.hook_skip(kind, folder))


#: The columns of a seat given back (``update_seat(conn, n, **FREED)``).
FREED = {"state": SeatState.FREE, "customer": None, "email": None, "workshop": None, "assigned_at": None, "ends_at": None}
