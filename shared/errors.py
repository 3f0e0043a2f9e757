"""Errors the domain raises; transports map them to HTTP statuses / CLI messages."""
from __future__ import annotations


class DomainError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):  # noqa: ANN204 - pickling (Celery sends exceptions between processes)
        return _rebuild, (type(self), self.__dict__.copy(), str(self))


def _rebuild(cls: type, state: dict, message: str) -> "DomainError":
    """Unpickle any DomainError whatever its constructor takes: make it without calling
    __init__, then restore its attributes."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class InvalidRequest(DomainError):
    """A request that names a field with a bad value (422)."""

    status = 422


class TooManyRequests(DomainError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: int = 30):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthorized(DomainError):
    status = 401


class ServiceUnavailable(DomainError):
    """A backing server (database, broker, object store) cannot be reached (503)."""

    status = 503

    def __init__(self, component: str, message: str):
        super().__init__(f"{component} unavailable: {message}")
        self.component = component
        self.reason = message
