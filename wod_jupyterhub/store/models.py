"""The database the hub parts and the service share (SQLAlchemy 2.0)."""

import datetime
import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    false,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

log = logging.getLogger("wod.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: the table where Alembic keeps the revision a database is at
VERSION_TABLE = "wod_alembic_version"
_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*(None|[\"'][^\"']+[\"'])\s*$", re.M)


def migrations_head() -> str | None:
    """The newest migration's revision, read from the scripts' own lines; None when it is not one clear head."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_REVISION.findall(path.read_text()))
        if "revision" in found:
            revisions.add(found["revision"].strip("\"'"))
            parents.add(found.get("down_revision", "None").strip("\"'"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def utcnow() -> datetime.datetime:
    """Now in UTC, naive, as the database holds every time."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def isoformat(t: datetime.datetime | float | None, timespec: str = "seconds") -> str | None:
    """A time as the API shows it: ISO 8601 in UTC with a ``Z``. ``t``: naive UTC (the database's) or POSIX seconds; None stays None."""
    if t is None:
        return None
    if isinstance(t, (int, float)):
        t = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec=timespec) + "Z"


class SeatState:
    """The states of a seat (``Seat.state``)."""

    FREE = "free"  # nobody holds it
    ACTIVE = "active"  # its customer may log in
    KEPT = "kept"  # CLEANUP of a reset: true workshop: the home waits for RESET
    CLEANING = "cleaning"  # a CLEANUP, RESET or PURGE rotated its password and is taking it back
    #: the states in which a seat belongs to its customer
    HELD = (ACTIVE, KEPT, CLEANING)


class Status:
    """The statuses of an operation (``Operation.status``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNFINISHED = (QUEUED, RUNNING)
    FINISHED = (SUCCEEDED, FAILED)
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class Base(DeclarativeBase):
    """The declarative base of every table of the wod database."""
    pass


class Seat(Base):
    """One pooled seat ``student<N>``: its password hash and who holds it."""

    __tablename__ = "wod_students"  # older than the class's name: renaming the table needs a migration

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    rotated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    # Bumped whenever the seat changes hands; a login records the generation
    # it was made under, and a session from an older one is ended.
    generation: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # One of SeatState.*.
    state: Mapped[str] = mapped_column(String(16), default=SeatState.FREE, nullable=False)
    customer: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    workshop: Mapped[str | None] = mapped_column(String(255))
    assigned_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    # The per-student lock, a lease in the database so that several service
    # processes on one PostgreSQL serialize too; a crashed holder's lease ends.
    lock_owner: Mapped[str | None] = mapped_column(String(255))
    lock_expires: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    # The hub user's server is stopped and its tokens revoked, and nobody could
    # log in since: the next CREATE need not ask the hub. A CREATE clears it.
    sessions_ended: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), nullable=False)
    # When the seat's time is up (migration 0005): set by its CREATE, moved by an extension; past it (and
    # ``c.Wod.expiry_grace``) the service cleans the seat up itself. None: a seat without an end.
    ends_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)

    @property
    def active(self) -> bool:
        """Whether the seat is given to a participant now."""
        return self.state == SeatState.ACTIVE


#: The seats' table, for Core statements on the hot path (see :func:`update_seat`).
SEATS = Seat.__table__

# Built once: a statement object caches its own cache key, so SQLAlchemy compiles it once per set of columns.
_SET_SEAT = update(SEATS).where(SEATS.c.number == bindparam("seat_number"))
_SET_SEAT_NEW_GENERATION = _SET_SEAT.values(generation=SEATS.c.generation + 1)
_READ_SEAT = select(SEATS.c.state, SEATS.c.customer, SEATS.c.workshop, SEATS.c.sessions_ended).where(
    SEATS.c.number == bindparam("seat_number")
)
# What the hub reads of a seat at a login and on practically every request (``Store.login_facts``), and every few
# seconds of all seats (``Store.generations``).
_LOGIN_SEAT = select(SEATS.c.password_hash, SEATS.c.state, SEATS.c.generation).where(
    SEATS.c.number == bindparam("seat_number")
)
_GENERATIONS = select(SEATS.c.number, SEATS.c.generation)


def update_seat(conn, number: int, *, new_generation: bool = False, **values) -> None:
    """Set the columns ``values`` of seat ``number`` in ``conn``'s transaction; ``new_generation``: bump its generation.

    One Core UPDATE whose SET comes from the names of ``values``. Every
    operation writes its seat two or three times, and an ORM object (a get,
    then a flush) costs several times the statement.
    """
    conn.execute(_SET_SEAT_NEW_GENERATION if new_generation else _SET_SEAT, {"seat_number": number, **values})


def read_seat(conn, number: int):
    """Seat ``number``'s ``state``, ``customer``, ``workshop`` and ``sessions_ended`` (a Row), or None."""
    return conn.execute(_READ_SEAT, {"seat_number": number}).first()


class Operation(Base):
    """One verb (CREATE, CLEANUP, RESET, PURGE), journaled from before it starts to its end."""

    __tablename__ = "wod_operations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    verb: Mapped[str] = mapped_column(String(16), nullable=False)
    student: Mapped[int | None] = mapped_column(Integer, index=True)
    # A RESET of a range covers student..student_last.
    student_last: Mapped[int | None] = mapped_column(Integer)
    customer: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    workshop: Mapped[str | None] = mapped_column(String(255))
    # One of Status.*.
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED, nullable=False, index=True)
    steps: Mapped[list] = mapped_column(JSON, default=list, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    # Secrets in here are sealed (see passwords.Sealer), never plain.
    result: Mapped[dict | None] = mapped_column(JSON)
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    started: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    finished: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class OutboxMessage(Base):
    """A callback to the portal, kept until it is delivered."""

    __tablename__ = "wod_outbox"
    __table_args__ = (Index("ix_wod_outbox_key_id", "key", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Messages with one key are delivered in id order, one at a time.
    key: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    operation_id: Mapped[str | None] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(8), default="PUT", nullable=False)
    path: Mapped[str] = mapped_column(String(255), nullable=False)
    # Secrets in here are sealed, never plain.
    body: Mapped[dict] = mapped_column(JSON, nullable=False)
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    delivered: Mapped[datetime.datetime | None] = mapped_column(DateTime, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set when the portal refused the message for good (migration 0002): kept
    # for the admin, no longer blocking the messages after it.
    failed: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    # Who is sending it right now, until when (see outbox.OutboxQueue).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class MailMessage(Base):
    """A mail the listener or ``wod mail`` accepted (migration 0004): a verb mail, or a participant mail to relay."""

    __tablename__ = "wod_mail"
    __table_args__ = (Index("ix_wod_mail_key_id", "key", "id"), Index("ix_wod_mail_pending", "kind", "delivered", "failed"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # "verb" (became operation_id) or "relay" (waits for the smarthost)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # A relayed mail's recipient (lower case): one participant's mails leave in order (see outbox.py).
    key: Mapped[str | None] = mapped_column(String(320))
    # The received Message-ID when there is one: the same mail delivered twice is stored once.
    received_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    received: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    peer: Mapped[str | None] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(320), nullable=False)
    recipient: Mapped[str] = mapped_column(String(320), nullable=False)
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    operation_id: Mapped[str | None] = mapped_column(String(32))
    # The Message-ID of the rebuilt message, fixed when stored so that a resend carries the same.
    message_id: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    delivered: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    failed: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class Completion(Base):
    """A completion ratio measured for a seat: at CLEANUP, at a server stop, or on request."""

    __tablename__ = "wod_completions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    student: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    customer: Mapped[str | None] = mapped_column(String(255))
    workshop: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    ratio: Mapped[int] = mapped_column(Integer, nullable=False)
    executed: Mapped[int] = mapped_column(Integer, nullable=False)
    total: Mapped[int] = mapped_column(Integer, nullable=False)
    detail: Mapped[dict] = mapped_column(JSON, nullable=False)
    taken_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class StepResult(Base):
    """The last check of one step for one assignment of a seat (``assigned_at`` tells assignments apart).

    ``passed_at`` is set by the first check that passes and kept: a
    verified step stays verified. ``failures`` counts the failed checks, one
    more hint revealed each.
    """

    __tablename__ = "wod_step_results"
    __table_args__ = (Index("ix_wod_step_results_seat", "student", "assigned_at", "step", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    student: Mapped[int] = mapped_column(Integer, nullable=False)
    assigned_at: Mapped[datetime.datetime] = mapped_column(DateTime, nullable=False)
    customer: Mapped[str | None] = mapped_column(String(255))
    workshop: Mapped[str] = mapped_column(String(255), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    passed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    message: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    checks: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    checked_at: Mapped[datetime.datetime] = mapped_column(DateTime, nullable=False)
    passed_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class Announcement(Base):
    """A message an admin sent to every participant of a workshop (migration 0005), shown in their ``api/seat``."""

    __tablename__ = "wod_announcements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workshop: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    author: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Throttle(Base):
    """Failed logins per user name or client address, so that a hub restart forgets nothing."""

    __tablename__ = "wod_throttle"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    window_start: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    locked_until: Mapped[datetime.datetime | None] = mapped_column(DateTime)


_THROTTLE_ROWS = select(Throttle.key, Throttle.locked_until).where(Throttle.key.in_(bindparam("keys", expanding=True)))


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    # WAL lets the hub read while the service writes; the busy timeout turns
    # a brief write lock into a wait instead of an error.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def private_sqlite_file(path: str) -> None:
    """Create the SQLite file readable by its owner only (0600), or make an existing one so.

    It holds password hashes and sealed passwords; SQLite gives its -wal and
    -shm files the mode of the database file, so they follow. Existing -wal
    and -shm files (made 0644 by an older version) are tightened too.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return  # a folder that does not exist: SQLite's own error says it better
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass


def make_engine(db_url: str, **kwargs):
    if db_url.startswith("postgresql://"):
        # psycopg 3 is the driver we ship with; plain URLs should just work.
        db_url = "postgresql+psycopg://" + db_url[len("postgresql://") :]
    if db_url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(db_url, **kwargs)
        if engine.url.database and engine.url.database != ":memory:":
            private_sqlite_file(engine.url.database)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(db_url, **kwargs)
    return engine


_SHARED: dict[str, "Store"] = {}
_SHARED_LOCK = threading.Lock()


class Store:
    """An engine and a session factory on one database, migrated to the newest schema."""

    @classmethod
    def shared(cls, db_url: str) -> "Store":
        """One Store per database and process: the hub's authenticator and every spawner share its pool."""
        with _SHARED_LOCK:
            if db_url not in _SHARED:
                _SHARED[db_url] = cls(db_url)
            return _SHARED[db_url]

    def __init__(self, db_url: str, upgrade: bool = True, **engine_kwargs):
        self.db_url = db_url
        self.engine = make_engine(db_url, **engine_kwargs)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    @property
    def is_postgres(self) -> bool:
        """Whether the store is on PostgreSQL (else SQLite)."""
        return self.engine.dialect.name == "postgresql"

    def at_head(self) -> bool:
        """Whether the database is already at the newest migration (then there is nothing for Alembic to do)."""
        head = migrations_head()
        if head is None:
            return False
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return False
            return list(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()) == [head]

    def upgrade(self) -> None:
        """Run the Alembic migrations up to head, one process at a time; nothing when the schema is current."""
        if self.at_head():
            # Alembic (and loading it) is for a schema that changes: every `wod` command opens the store.
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if self.is_postgres:
                # The hub and the service start together; without the lock both
                # would try to create the same tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(7423001)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self):
        """A session that commits on success and rolls back on error."""
        with self.Session() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def student(self, number: int, session=None) -> Seat | None:
        """The row of seat ``number`` (None when it was never used), in ``session`` or a short one of its own."""
        if session is not None:
            return session.get(Seat, number)
        with self.Session() as s:
            return s.get(Seat, number)

    def login_facts(self, throttle_keys, number: int | None) -> tuple[dict, object]:
        """What a login reads: ``({key: (key, locked_until)}, (password_hash, state, generation) or None)``.

        Core selects on one connection, no ORM objects: this runs for every
        login of a room arriving at once, and the ORM's unit of work holds the
        GIL the hub's event loop needs. The hub's
        session checks (``refresh_user``, on practically every request) read
        the seat through it too, with no ``throttle_keys``.
        """
        with self.engine.connect() as conn:
            rows = {}
            if throttle_keys:
                rows = {row.key: row for row in conn.execute(_THROTTLE_ROWS, {"keys": list(throttle_keys)})}
            seat = conn.execute(_LOGIN_SEAT, {"seat_number": number}).first() if number is not None else None
        return rows, seat

    def generations(self) -> dict:
        """``{seat number: generation}`` of every seat (Core: one short read the hub makes every few seconds)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(_GENERATIONS).all())

    def dispose(self) -> None:
        """Close the engine's connections (at the end of a process or a test)."""
        self.engine.dispose()
