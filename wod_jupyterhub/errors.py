"""Errors a person caused and can fix: each carries a sentence and the HTTP status it maps to."""


class WodError(Exception):
    """An error a person caused and can fix: a sentence (``str(e)``), its HTTP ``status`` and a machine-readable ``code``."""
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def to_json(self) -> dict:
        """The JSON body of the answer: the error's code and its sentence."""
        return {"error": self.code, "message": self.message}


class BadRequest(WodError):
    """400: the request itself is wrong."""
    status = 400
    code = "bad_request"


class Unauthorized(WodError):
    """401: no token, or one the hub does not know."""
    status = 401
    code = "unauthorized"


class Forbidden(WodError):
    """403: a token without the scope this needs."""
    status = 403
    code = "forbidden"


class NotFound(WodError):
    """404: no such student, workshop or operation."""
    status = 404
    code = "not_found"


class Conflict(WodError):
    """409: the seat is held by another, or busy."""
    status = 409
    code = "conflict"


class Unprocessable(WodError):
    """Well-formed but impossible: a student out of range, a workshop that will not render."""

    status = 422
    code = "unprocessable"


class PayloadTooLarge(WodError):
    """413: a request body over the limit."""
    status = 413
    code = "payload_too_large"
