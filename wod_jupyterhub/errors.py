"""Errors a person caused and can fix: each carries a sentence and the HTTP status it maps to.

The service answers them as ``{"error": code, "message": sentence}`` with
``status``; the CLI prints the sentence and exits 2. Anything that is not a
``WodError`` is our bug, never the caller's.
"""


class WodError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message}


class BadRequest(WodError):
    status = 400
    code = "bad_request"


class Unauthorized(WodError):
    status = 401
    code = "unauthorized"


class Forbidden(WodError):
    status = 403
    code = "forbidden"


class NotFound(WodError):
    status = 404
    code = "not_found"


class Conflict(WodError):
    status = 409
    code = "conflict"


class Unprocessable(WodError):
    """Well-formed but impossible: a student out of range, a workshop that will not render."""

    status = 422
    code = "unprocessable"


class PayloadTooLarge(WodError):
    status = 413
    code = "payload_too_large"
