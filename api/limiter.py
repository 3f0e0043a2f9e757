"""Early refusal: at most `max_in_flight` requests are served at once by this API process;
the next one is answered 503 with Retry-After at once, instead of waiting in an unbounded
queue until its client gives up (a saturated API then still answers fast, and clients back
off). Health and metrics endpoints are never refused: they must say the process is alive.

A plain ASGI middleware (one event loop per process, so a counter needs no lock).
"""
from __future__ import annotations

import json
from typing import Any, Callable

EXEMPT = ("/healthz", "/readyz", "/metrics")


class ConcurrencyLimit:
    def __init__(self, app: Any, max_in_flight: int, retry_after_s: int = 1,
                 on_refuse: Callable[[], None] | None = None):
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.on_refuse = on_refuse
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            if self.on_refuse is not None:
                self.on_refuse()
            return await self._refuse(send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"the API is at capacity ({self.max_in_flight} requests in flight); "
                                     f"retry after {self.retry_after_s} s"}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})
