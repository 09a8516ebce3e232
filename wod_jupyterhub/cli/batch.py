"""``wod create|cleanup|reset|purge|passwords WORKSHOP STUDENTS``: one verb over a range of seats, through the REST API."""

import asyncio
import json
import signal
import sys
import time

from ..errors import BadRequest
from .serviceclient import AsyncWodClient, ServiceError
from .tables import format_table, progress_bar

VERBS = ("create", "cleanup", "reset", "purge", "passwords")
#: the REST verb of a command, where its name differs
ENDPOINTS = {"passwords": "password"}
#: the commands whose table and JSON carry each seat's new password
SHOWS_PASSWORDS = ("create", "passwords")
#: a seat's outcome when nothing was sent for it (Ctrl-C came first)
NOT_SUBMITTED = "not submitted"
MAX_SEATS = 10_000


def parse_students(spec: str) -> list[int]:
    """``7``, ``3-9`` or ``1,4,10-12`` → the sorted seat numbers; BadRequest for anything else."""
    seats: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise BadRequest(f"STUDENTS {spec!r}: expected N, A-B or a list like 1,4,10-12")
        a, b = int(first), int(last) if sep else int(first)
        if a < 1 or b < a:
            raise BadRequest(f"STUDENTS {spec!r}: {part} is not a range of student numbers (1 or more, low-high)")
        if len(seats) + b - a + 1 > MAX_SEATS:
            raise BadRequest(f"STUDENTS {spec!r}: more than {MAX_SEATS} seats at once")
        seats.update(range(a, b + 1))
    if not seats:
        raise BadRequest("STUDENTS is empty")
    return sorted(seats)


def runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted ``numbers``: [1,2,3,7] → [(1,3),(7,7)]."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return [(a, b) for a, b in out]


class SeatOutcome:
    """What the command knows of one seat: its operation, outcome and time."""

    def __init__(self, number: int):
        self.number = number
        self.status = NOT_SUBMITTED
        self.operation = None
        self.error = None
        self.seconds = None
        self.password = None
        self.completion = None

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "refused")

    def to_json(self, show_password: bool) -> dict:
        data = {
            "student": self.number, "status": self.status, "seconds": self.seconds,
            "operation": self.operation, "error": self.error,
        }
        if self.completion is not None:
            data["completion"] = self.completion
        if show_password and self.password is not None:
            data["password"] = self.password
        return data


class Batch:
    """Runs one verb over seats with at most ``parallel`` operations in flight."""

    def __init__(self, client: AsyncWodClient, verb: str, workshop: str, seats: list[int], *, customer=None,
                 email=None, parallel: int = 8, poll: float = 0.5, on_done=None, force: bool = False):
        self.client = client
        self.verb = verb
        self.force = force
        self.workshop = workshop
        self.seats = {n: SeatOutcome(n) for n in seats}
        self.customer = customer
        self.email = email
        self.parallel = max(1, parallel)
        self.poll = poll
        self.on_done = on_done or (lambda seats: None)
        self.stopping = False
        self.interrupted = False

    def jobs(self) -> list[list[int]]:
        """The operations to submit: one per seat, one per contiguous run for RESET."""
        if self.verb == "reset":
            return [list(range(a, b + 1)) for a, b in runs(sorted(self.seats))]
        return [[n] for n in sorted(self.seats)]

    async def _body(self, numbers: list[int]) -> dict:
        n = numbers[0]
        body = {"workshop": self.workshop}
        if self.verb == "reset":
            if len(numbers) > 1:
                body["students"] = [numbers[0], numbers[-1]]
            else:
                body["student"] = n
            if self.customer:
                body["customer"] = self.customer
            return body
        body["student"] = n
        customer = self.customer
        if customer is None and self.verb in ("cleanup", "purge", "passwords"):
            # The seat's holder, so the admin need not know who booked it.
            seat = await self.client.request("GET", f"api/students/{n}")
            customer = seat.get("customer")
        body["customer"] = customer or "0"  # the original's test script called its customer 0
        if self.verb == "create":
            body["email"] = self.email or "wod-cli@localhost"
            if self.force:
                body["force"] = True
        return body

    async def held(self) -> dict[int, dict]:
        """The seats of the batch that are held (or will be, once their queued operations ran): number -> holding."""
        slots = asyncio.Semaphore(self.parallel)

        async def one(n):
            async with slots:
                return n, (await self.client.request("GET", f"api/students/{n}")).get("holding")

        found = await asyncio.gather(*(one(n) for n in sorted(self.seats)))
        return {n: h for n, h in found if h and h["state"] != "free"}

    async def _one(self, numbers: list[int]) -> None:
        started = time.monotonic()
        seats = [self.seats[n] for n in numbers]
        for seat in seats:
            seat.status = "submitted"
        try:
            op = await self.client.request(
                "POST", f"api/{ENDPOINTS.get(self.verb, self.verb)}", ok=(200, 202), json=await self._body(numbers), params={"wait": "30"}
            )
            while op["status"] in ("queued", "running"):
                await asyncio.sleep(self.poll)
                op = await self.client.request("GET", f"api/operations/{op['id']}")
                for seat in seats:
                    seat.status, seat.operation = op["status"], op["id"]
        except ServiceError as e:
            op = {"status": "refused", "error": e.message, "id": None, "result": None}
        elapsed = round(time.monotonic() - started, 2)
        result = op.get("result") or {}
        for seat in seats:
            seat.status, seat.operation, seat.seconds = op["status"], op.get("id"), elapsed
            seat.error = op.get("error")
            seat.password = result.get("password")
            completion = result.get("completion")
            seat.completion = completion.get("ratio") if isinstance(completion, dict) else None
        self.on_done(seats)

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.parallel)
        tasks = []
        for numbers in self.jobs():
            await slots.acquire()
            if self.stopping:
                slots.release()
                break

            async def job(numbers=numbers):
                try:
                    await self._one(numbers)
                finally:
                    slots.release()

            tasks.append(asyncio.ensure_future(job()))
        await asyncio.gather(*tasks)

    @property
    def failed(self) -> list[SeatOutcome]:
        return [s for s in self.seats.values() if s.failed]

    @property
    def done(self) -> int:
        return sum(1 for s in self.seats.values() if s.status in ("succeeded", "failed", "refused"))


# ---------------------------------------------------------------------- the command


def _line(seat: SeatOutcome) -> str:
    extra = f"  completion {seat.completion} %" if seat.completion is not None else ""
    error = f"  {seat.error.splitlines()[0][:200]}" if seat.failed and seat.error else ""
    return f"student{seat.number} {seat.status} {seat.seconds:.2f}s{extra}{error}"


def table(batch: Batch, show_passwords: bool) -> str:
    """The batch's seats as a text table (passwords only when asked and the verb gives any)."""
    header = ["SEAT", "STATUS", "TIME"]
    if batch.verb in SHOWS_PASSWORDS and show_passwords:
        header.append("PASSWORD")
    if batch.verb == "cleanup":
        header.append("COMPLETION")
    header.append("ERROR")
    rows = []
    for seat in batch.seats.values():
        row = [f"student{seat.number}", seat.status, "-" if seat.seconds is None else f"{seat.seconds:.2f}s"]
        if batch.verb in SHOWS_PASSWORDS and show_passwords:
            row.append(seat.password or "-")
        if batch.verb == "cleanup":
            row.append("-" if seat.completion is None else f"{seat.completion} %")
        row.append((seat.error or "").splitlines()[0][:120] if seat.error and seat.failed else "")
        rows.append(row)
    return format_table(header, rows)


def refusal(held: dict[int, dict]) -> str:
    """Why ``wod create`` sent nothing: the held seats, each with its workshop and customer, and the ways on."""
    names = ", ".join(f"student{n} ({h['workshop'] or 'no workshop'}, customer {h['customer']})" for n, h in sorted(held.items()))
    return (
        f"wod: {len(held)} seat(s) are held, so nothing was sent: {names}. "
        "`wod passwords WORKSHOP STUDENTS` gives them new passwords and keeps their homes; "
        "--force provisions them again (their homes are erased)."
    )


def run_command(args, client: AsyncWodClient) -> int:
    """``wod create|cleanup|reset|purge``: the verb over every seat of ``args.students``, progress on stderr, the table or JSON on stdout; the exit status."""
    seats = parse_students(args.students)
    # Progress goes to stderr, so stdout stays the table or the JSON.
    tty = sys.stderr.isatty()
    state = {"last": 0.0}

    def on_done(done_seats):
        if tty:
            _draw(batch, force=True)
        else:
            for seat in done_seats:
                print(_line(seat), file=sys.stderr, flush=True)

    def _draw(batch, force=False):
        now = time.monotonic()
        if force or now - state["last"] > 0.1:
            state["last"] = now
            sys.stderr.write("\r" + progress_bar(batch.done, len(batch.seats), len(batch.failed), batch.verb.upper()))
            sys.stderr.flush()

    batch = Batch(
        client, args.verb, args.workshop, seats, customer=args.customer, email=getattr(args, "email", None),
        parallel=args.parallel, on_done=on_done, force=getattr(args, "force", False),
    )

    async def main():
        if args.verb == "create" and not batch.force:
            try:
                state["held"] = await batch.held()
            except BaseException:
                await client.close()
                raise
            if state["held"]:
                await client.close()  # nothing is sent for any seat
                return
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(batch.run())

        def interrupt():
            if batch.stopping:  # the second Ctrl-C: stop waiting too
                task.cancel()
                return
            batch.stopping = batch.interrupted = True
            print("\nwod: interrupted: no more seats are submitted; waiting for the running ones "
                  "(Ctrl-C again stops waiting)", file=sys.stderr, flush=True)

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            if tty:
                while not task.done():
                    _draw(batch)
                    await asyncio.sleep(0.2)
            await asyncio.gather(task, return_exceptions=True)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await client.close()

    state["held"] = {}
    asyncio.run(main())
    if state["held"]:
        print(refusal(state["held"]), file=sys.stderr)
        return 1
    if tty:
        sys.stderr.write("\n")
    failed = batch.failed
    if args.json:
        print(json.dumps({
            "verb": args.verb.upper(), "workshop": args.workshop, "interrupted": batch.interrupted,
            "seats": [s.to_json(args.show_passwords) for s in batch.seats.values()],
            "failed": [s.number for s in failed],
        }, indent=2))
    else:
        print(table(batch, args.show_passwords))
    if failed:
        names = ", ".join(f"student{s.number}" for s in failed)
        print(f"wod: {len(failed)} of {len(seats)} seat(s) failed: {names}", file=sys.stderr)
    if batch.interrupted:
        left = [s.number for s in batch.seats.values() if s.status == NOT_SUBMITTED]
        print(f"wod: interrupted; {len(left)} seat(s) not submitted", file=sys.stderr)
        return 130
    return 1 if failed else 0
