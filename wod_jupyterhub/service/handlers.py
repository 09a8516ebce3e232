"""The REST handlers of the ``wod`` service (the application that serves them: ``service.py``)."""

import asyncio
import json
import re
from pathlib import Path

from tornado import web

from .. import __version__
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, WodError
from ..local_peers import student_peer
from ..seats.runtime import seat_runtime
from ..store.models import Status
from .fields import printable

SCOPE_OPERATE = "custom:wod:operate"
SCOPE_READ = "custom:wod:read"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
OP_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would let a final newline through


class BaseHandler(web.RequestHandler):
    #: scopes any one of which lets a caller in; None: no token needed
    """What every handler of the service shares: the token check against ``scopes``, JSON bodies, errors as JSON with a sentence."""
    scopes: tuple | None = (SCOPE_READ, SCOPE_OPERATE)

    @property
    def app(self):
        """The ``WodService`` application (service.py) serving this request."""
        return self.settings["wod_service"]

    @property
    def engine(self):
        return self.app.engine

    @property
    def views(self):
        return self.app.views

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self):
        await self.authenticate()

    async def authenticate(self):
        self.caller = None
        # Every path but the seat's own view (``seatapi.SeatHandler``), with a token or without.
        self.refuse_students()
        if self.scopes is None:
            return
        model = await self.app.hub_auth.get_user(self, sync=False)
        if not model:
            raise Unauthorized("A JupyterHub API token is required (header 'Authorization: token <token>').")
        granted = set(model.get("scopes") or [])
        if not granted.intersection(self.scopes):
            who = model.get("name") or "the caller"
            raise Forbidden(f"The token of {who} lacks the scope {self.scopes[0]} this call needs.")
        self.caller = model

    def refuse_students(self) -> None:
        """403 for a connection from a seat's own process (system-users mode), whatever token it carries.

        The portal's token is the only thing between a student's kernel and
        the verbs; a connection from this machine is looked up by the owner
        of its socket, once per connection.
        """
        conn = self.request.connection
        if not hasattr(conn, "wod_student"):
            stream = getattr(conn, "stream", None)
            sock = getattr(stream, "socket", None)
            try:
                ends = (sock.getsockname(), sock.getpeername()) if sock is not None else (None, None)
            except OSError:
                ends = (None, None)
            conn.wod_student = student_peer(self.app.wod, *ends)
        if conn.wod_student:
            self.app.log.warning("Refused %s %s: %s", self.request.method, self.request.path, conn.wod_student)
            raise Forbidden("This service takes no requests from a student's process.", code="student_process")

    @property
    def can_operate(self) -> bool:
        return bool(self.caller) and SCOPE_OPERATE in set(self.caller.get("scopes") or [])

    def send(self, data, status=200):
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, WodError):
            self.set_status(exc.status)
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            body = {"error": _code(status_code), "message": message or self._reason}
        elif status_code >= 500:
            body = {"error": "internal", "message": "The service failed unexpectedly; the admin finds the cause in its log."}
        else:
            body = {"error": _code(status_code), "message": self._reason}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb):
        if isinstance(value, WodError):
            self.app.log.info("%s %s → %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def int_argument(self, name, default=None, low=None, high=None):
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"Query parameter {name} must be a whole number, not {raw!r}.") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadRequest(f"Query parameter {name} must be between {low} and {high}, not {value}.")
        return value


def _code(status: int) -> str:
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
        409: "conflict", 413: "payload_too_large", 422: "unprocessable",
    }.get(status, "internal" if status >= 500 else "error")


_INT = (int,)
_STR = (str,)
# The portal's customer ids are integers; other callers send strings. Both are
# kept as the text the caller wrote (4242 and "4242" name one customer).
_ID = (str, int)
_BOOL = (bool,)
_TYPES = {"integer": _INT, "string": _STR, "array": (list,), "boolean": _BOOL, ("string", "integer"): _ID}
_KINDS = {_INT: "a whole number", _STR: "a string", _ID: "a string or a whole number", _BOOL: "true or false"}
MAX_TEXT = 255


def request_fields(openapi: dict, schema_name: str) -> dict:
    """The body fields of one request schema of the OpenAPI document: {name: (types, required)}."""
    schema = openapi["components"]["schemas"][schema_name]
    required = set(schema.get("required", ()))
    return {
        name: (_TYPES[tuple(p["type"]) if isinstance(p["type"], list) else p["type"]], name in required)
        for name, p in schema["properties"].items()
    }


#: nesting a request body may have; every request of the API is flat, a list in an object at most
MAX_DEPTH = 8


def json_object(raw: bytes) -> dict:
    """A request body as a JSON object of at most ``MAX_DEPTH`` levels; BadRequest (400) with a sentence otherwise."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"The request body is not valid JSON: {e}.", code="bad_json") from None
    except RecursionError:
        # json's C decoder recurses once per nesting level: a body of "[" * 100000 ends here.
        raise BadRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="bad_json")
    level, todo = 0, [body]
    while todo:  # breadth first, without recursion
        level += 1
        if level > MAX_DEPTH:
            raise BadRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.", code="bad_json")
        todo = [v for c in todo for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, (dict, list))]
    return body


def verb_fields(openapi: dict) -> dict:
    """The body fields each verb takes, read from the OpenAPI document: verb → {name: (types, required)}."""
    return {verb: request_fields(openapi, f"{verb.capitalize()}Request") for verb in ("CREATE", "CLEANUP", "RESET", "PURGE", "PASSWORD")}


def parse_body(raw: bytes, fields: dict, what: str) -> dict:
    """A request body as a JSON object holding only ``fields`` (from :func:`request_fields`), each of its type.

    Anything else is a :class:`BadRequest` with a sentence naming ``what`` the body was for.
    """
    body = json_object(raw)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"Unknown field(s) for {what}: {', '.join(unknown)}.", code="bad_field")
    for name, (types, required) in fields.items():
        value = body.get(name)
        if value is None:
            if required:
                raise BadRequest(f"Field {name!r} is required for {what}.", code="missing_field")
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and types is not _BOOL):
            kind = _KINDS.get(types, "a list")
            raise BadRequest(f"Field {name!r} must be {kind}, not {json.dumps(value)[:40]}.", code="bad_field")
        if types is _ID and isinstance(value, int):
            value = body[name] = str(value)
        if types in (_STR, _ID) and (len(value) > MAX_TEXT or not value.strip()):
            raise BadRequest(f"Field {name!r} must be a non-empty string of at most {MAX_TEXT} characters.", code="bad_field")
        if types in (_STR, _ID) and not printable(value):
            raise BadRequest(f"Field {name!r} must not hold control characters (NUL, newlines, escapes).", code="bad_field")
    return body


OPENAPI = json.loads(OPENAPI_FILE.read_text())
VERB_FIELDS = verb_fields(OPENAPI)


@web.stream_request_body
class VerbHandler(BaseHandler):
    """``POST api/<verb>``: submit CREATE, CLEANUP, RESET or PURGE; answer at once or, with ``?wait=``, once it ended."""
    scopes = (SCOPE_OPERATE,)

    def initialize(self, verb):
        self.verb = verb
        self._chunks = []
        self._size = 0

    async def prepare(self):
        limit = self.app.max_body_size
        length = self.request.headers.get("Content-Length")
        self._too_large = False
        if length and length.isdigit() and int(length) > limit:
            self._too_large = True
        # The caller is identified once the body is in: answering before it is read
        # (a 401, a 413) would make tornado drop the connection under the client.

    def data_received(self, chunk):
        self._size += len(chunk)
        if self._size > self.app.max_body_size:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(chunk)

    def parse(self) -> dict:
        if self._too_large:
            raise PayloadTooLarge(f"The request body is larger than {self.app.max_body_size} bytes.")
        return parse_body(b"".join(self._chunks), VERB_FIELDS[self.verb], self.verb)

    async def post(self):
        await self.authenticate()
        body = self.parse()
        wait = self.get_query_argument("wait", None)
        if wait is not None:
            try:
                wait = float(wait)
            except ValueError:
                raise BadRequest(f"Query parameter wait must be a number of seconds, not {wait!r}.") from None
            if not 0 <= wait <= self.app.max_wait:
                raise BadRequest(f"Query parameter wait must be between 0 and {self.app.max_wait} seconds.")
        first, last = body.get("student"), None
        if self.verb == "RESET":
            if (first is None) == (body.get("students") is None):
                raise BadRequest("RESET takes either 'student' or 'students': [min, max].", code="bad_field")
            if body.get("students") is not None:
                pair = body["students"]
                if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
                    raise BadRequest("Field 'students' must be [min, max], two whole numbers.", code="bad_field")
                first, last = pair
                if last == first:
                    last = None
        result = None
        if body.get("ends_at") is not None:
            from .expiry import check_end, isoformat, parse_time

            result = {"ends_at": isoformat(check_end(parse_time(body["ends_at"])))}
        # The engine runs the verb: VERBS[verb] in operations/verbs.py.
        op = await self.engine.submit(
            self.verb, first, last, customer=body.get("customer"), email=body.get("email"), workshop=body.get("workshop"),
            force=bool(body.get("force")), result=result,
        )
        self.app.metrics.request(self.verb)
        # A repeated CREATE is answered with the first one (Engine.submit ran nothing for it).
        repeat = getattr(op, "repeat", False)
        if wait and op.status in Status.UNFINISHED:
            op = await self.engine.wait(op.id, wait, op)
        if op.status in Status.FINISHED:
            return self.send(self.views.operation_json(op, reveal=self.can_operate, repeat=repeat), 200)
        self.set_header("Location", f"{self.app.prefix}api/operations/{op.id}")
        self.send(self.views.operation_json(op, reveal=self.can_operate, repeat=repeat), 202)


class OperationHandler(BaseHandler):
    """``GET api/operations/<id>``: one operation and its journal."""
    async def get(self, op_id):
        if not OP_ID.fullmatch(op_id):
            raise NotFound(f"There is no operation {op_id!r}.")
        self.send(self.views.operation_json(self.views.operation(op_id), reveal=self.can_operate))


class OperationsHandler(BaseHandler):
    """``GET api/operations``: the latest operations, filtered by student, verb or status."""
    async def get(self):
        student = self.int_argument("student", low=0, high=10**9)
        limit = self.int_argument("limit", 100, low=1, high=1000)
        status = self.get_query_argument("status", None) or None
        if status and status not in Status.ALL:
            raise BadRequest(f"Query parameter status must be queued, running, succeeded or failed, not {status!r}.")
        verb = (self.get_query_argument("verb", None) or "").upper() or None
        if verb and verb not in VERB_FIELDS:
            raise BadRequest(f"Query parameter verb must be CREATE, CLEANUP, RESET, PURGE or PASSWORD, not {verb!r}.")
        ops = self.views.operations(student=student, status=status, verb=verb, limit=limit)
        self.send({"operations": [self.views.operation_json(op, reveal=self.can_operate) for op in ops]})


class StudentHandler(BaseHandler):
    """``GET api/students/<N>``: a seat, its holder, its disk use and resources, and its server as the hub sees it."""
    async def get(self, number):
        n = int(number)
        data = self.views.student_json(n)
        data["disk"] = self.app.disk.to_json(n)
        data["resources"] = await asyncio.to_thread(seat_runtime(self.app.wod).usage, n)
        data["server"] = None
        hub = self.app.hub
        if hub.configured:
            from .hubclient import HubAPIError

            try:
                model = await hub.user(f"student{n}")
            except HubAPIError as e:
                self.app.log.warning("Reading student%s from the hub failed: %s", n, e)
            else:
                server = ((model or {}).get("servers") or {}).get("", None)
                data["server"] = {
                    "exists": model is not None,
                    "running": bool(server and server.get("ready")),
                    "pending": (model or {}).get("pending"),
                    "url": server.get("url") if server else None,
                }
        self.send(data)


class WorkshopsHandler(BaseHandler):
    """``GET api/workshops``: the catalog."""
    async def get(self):
        # Reading every wod.yml (when the cache is stale) and building the answer happen off the event loop.
        self.send({"workshops": await asyncio.to_thread(lambda: self.app.catalog.get().to_json())})


class WorkshopHandler(BaseHandler):
    """``GET api/workshops/<name>``: one workshop of the catalog."""
    async def get(self, name):
        ws, _, _ = await asyncio.to_thread(self.app.catalog.workshop, name)
        self.send(ws.to_json())


class OpenAPIHandler(BaseHandler):
    """``GET api/openapi.json``: the API's document, without a token."""
    scopes = None

    async def get(self):
        self.send(self.app.openapi)


class HealthHandler(BaseHandler):
    """``GET health``: whether the database answers, and what runs (operations, warm-up, preparation, mail), without a token."""
    scopes = None

    async def get(self):
        from sqlalchemy import text

        try:
            with self.app.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "ok"
        except Exception as e:  # health reports, never raises
            database = f"error: {e.__class__.__name__}"
        self.send(
            {
                "status": "ok" if database == "ok" else "degraded",
                "version": __version__,
                "database": database,
                "running": self.engine.running,
                "warm": self.app.warm or not self.app.warm_up,
                "prepare_pending": self.app.preparer.pending,
                "mail": await asyncio.to_thread(self.app.mail.health),
            },
            200 if database == "ok" else 503,
        )


class MetricsHandler(BaseHandler):
    """``GET metrics``: the Prometheus metrics."""
    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")

    async def get(self):
        app = self.app
        relay = app.mail.relay if app.mail.settings.relay_enabled else None
        body = app.metrics.render(store=app.store, running=self.engine.running, outbox=app.outbox if app.portal.enabled else None, relay=relay, disk=app.disk)
        self.set_header("Content-Type", app.metrics.content_type)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    """Any other path: a 404 in JSON with a sentence."""
    scopes = None

    def prepare(self):
        self.refuse_students()
        raise NotFound(f"No such endpoint: {self.request.method} {self.request.path}.")
