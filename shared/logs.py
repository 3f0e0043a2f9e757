"""Structured logs: one JSON object per line, with the job and shard a line is about.

`log_context(job_id=..., shard=...)` sets ids for everything logged inside it (the Celery
tasks and the embedded mode's threads wrap each task in one); `extra={...}` adds fields to a
single line. `configure_logging(settings)` is called by the service processes (`dsgen api`,
`dsgen worker`, `dsgen serve`); `DSGEN_LOG_FORMAT=text` keeps plain lines.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "dsgen_log_context", default={})  # noqa: B039 - never mutated: log_context sets a new dict

# attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context.get())
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_") and v is not None:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _ContextFilter(logging.Filter):
    """Adds the context's ids to plain-text lines too (` job_id=... shard=...`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        record.dsgen_ids = "".join(f" {k}={v}" for k, v in ctx.items())
        return True


def configure_logging(fmt: str = "json", level: int | str = logging.INFO) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_ContextFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(dsgen_ids)s"))
    for h in list(root.handlers):
        if getattr(h, "_dsgen", False):
            root.removeHandler(h)
    handler._dsgen = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


class QuietPolling(logging.Filter):
    """Access lines of successful GET/HEAD requests (the dashboard and `--wait` poll every
    second) only at DEBUG: at INFO the log shows what changes things, and every error."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 5 and args[1] in ("GET", "HEAD") and str(args[4]).isascii() and str(args[4]).isdigit() \
                and int(args[4]) < 400:
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def default_format(configured: str | None, stream: Any = None) -> str:
    """An explicit DSGEN_LOG_FORMAT wins; otherwise plain text for a person at a terminal,
    JSON lines for a log collector."""
    if configured:
        return configured
    stream = stream or sys.stderr
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


def logging_dict(fmt: str = "json", level: str = "INFO") -> dict[str, Any]:
    """The same set-up as a `logging.config.dictConfig` dict (uvicorn's `log_config`, which its
    worker processes apply too)."""
    formatter = {"()": "shared.logs.JsonFormatter"} if fmt == "json" else {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"dsgen": formatter},
        "filters": {"quiet_polling": {"()": "shared.logs.QuietPolling"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "dsgen", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": [], "propagate": True, "level": level,
                           **({"filters": ["quiet_polling"]} if name == "uvicorn.access" else {})}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
