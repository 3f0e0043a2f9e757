"""Errors -> HTTP. Bad input: 4xx naming the field. A backing server down: 503 with the
component and the reason (never a 500)."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.db.session import DB_UNAVAILABLE, describe_db_error
from shared.errors import DomainError, ServiceUnavailable, TooManyRequests, Unauthorized
from shared.formats.spec import describe_errors

log = logging.getLogger(__name__)


def printable(text: str) -> str:
    """Text that UTF-8 can encode: a lone surrogate echoed from the input becomes `\\udxxx`
    (else writing the error response itself would fail with a 500)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, field: str | None = None, errors: list[tuple[str, str]] | None = None) -> dict:
    body: dict = {"detail": printable(message)}
    if field:
        body["field"] = printable(field)
    if errors:
        body["errors"] = [{"field": printable(f), "message": printable(m)} for f, m in errors]
    return body


def describe_request_errors(errors: list[dict]) -> list[tuple[str, str]]:
    """A request's validation errors in the spec's wording (`shared.formats.spec.describe_errors`)."""
    return describe_errors(errors, root="body", transport=True, typo_hints=False)


def install_error_handlers(app: FastAPI) -> None:
    def count_unavailable(request: Request, component: str) -> None:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.unavailable.labels(component).inc()

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = {}
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after_s)
        elif isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, ServiceUnavailable):
            headers["Retry-After"] = "5"
            count_unavailable(request, exc.component)
            log.warning("503: %s", exc.message)
        return JSONResponse(error_body(exc.message, exc.field, getattr(exc, "errors", None)),
                            status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = describe_request_errors(list(exc.errors()))
        field, msg = errors[0]
        return JSONResponse(error_body(f"{field}: {msg}", field, errors), status_code=422)

    for exc_type in DB_UNAVAILABLE:
        @app.exception_handler(exc_type)
        async def db_unavailable(request: Request, exc: Exception) -> JSONResponse:
            count_unavailable(request, "database")
            return JSONResponse(error_body(f"database unavailable: {describe_db_error(exc)}"), status_code=503,
                                headers={"Retry-After": "5"})
