"""The steps several verbs share, with one name each in every journal.

- ``rotate``: a new password, its hash on the seat (which ends every session
  issued before: the seat's generation changes), sealed on the operation;
- ``end-sessions``: on the hub, the seat's server stopped, its tokens revoked;
- ``hooks-<kind>``: the workshop's hooks, ``skipped`` when it has none.
"""

from ..hubapi import HubAPIError
from ..store import Seat, Student, utcnow
from .admission import check_holder


def rotate_step(run, work, seats, *, check=None, owner_only=False, seat=None):
    """The ``rotate`` step for ``seats``: a password each, its hash on the seat, sealed on the operation.

    ``check()``: raises when the step must not run (a CREATE's workshop became
    inactive). ``owner_only``: a seat held by another customer than the run's
    fails the step (``check_holder``). ``seat(st, password, s)``: what the
    verb does to each seat in the same transaction. The one seat's password
    goes to ``result["password"]``, a range's to ``result["passwords"]``; a run
    without a workshop takes the seat's.
    """
    fresh = {}

    async def rotate():
        if check is not None:
            check()
        with run.store.Session() as s:
            for n in seats:
                st = s.get(Student, n)
                if owner_only:
                    check_holder(n, st.customer if st.state in Seat.HELD else None, run.customer)
                run.seat = {"sessions_ended": st.sessions_ended}
                run.workshop = run.workshop or st.workshop
        for n in seats:
            fresh[n] = await work.new_password()
        if len(seats) == 1:
            run.result["password"] = work.sealer.seal(fresh[seats[0]][0])
        else:
            run.result["passwords"] = {str(n): work.sealer.seal(password) for n, (password, _) in fresh.items()}

    def rotated(s, _detail):
        for n, (password, hashed) in fresh.items():
            st = s.get(Student, n)
            st.password_hash = hashed
            st.rotated_at = utcnow()
            # The generation ends every session issued before the seat changed hands.
            st.generation = (st.generation or 0) + 1
            if seat is not None:
                seat(st, password, s)

    return run.step("rotate", rotate, rotated)


def end_sessions_step(run, work, seats, *, tolerate_hub_errors=False):
    """The ``end-sessions`` step: stop the servers and revoke the tokens of ``seats`` on the hub.

    Its detail: what the hub said for the one seat, or per seat (``{"11": {...}, ...}``) for several.

    Records ``Student.sessions_ended`` per seat; a skipped or failed attempt leaves the next CREATE to ask the hub.
    """

    async def end():
        detail = {}
        for n in seats:
            try:
                detail[str(n)] = await work.end_sessions(n, stop=True)
            except HubAPIError as e:
                if not tolerate_hub_errors:
                    raise
                detail[str(n)] = {"warning": str(e)}
        return detail if len(seats) > 1 else detail[str(seats[0])]

    def ended(s, detail):
        per_seat = detail if len(seats) > 1 else {str(seats[0]): detail}
        for n in seats:
            d = per_seat[str(n)]
            s.get(Student, n).sessions_ended = "skipped" not in d and "warning" not in d

    return run.step("end-sessions", end, ended)


def hooks_step(run, work, kind, folder, ws, mode, n):
    async def hooks():
        return await work.run_hooks(kind, folder, ws, mode, n, run.customer)

    return run.step(f"hooks-{kind}", hooks, skip=work.hook_skip(kind, folder))


def free_seat(st: Student):
    st.state = Seat.FREE
    st.customer = None
    st.email = None
    st.workshop = None
    st.assigned_at = None
