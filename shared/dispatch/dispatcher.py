"""Sending work to the workers, by task name.

`Dispatcher` is what the domain code calls (always after the commit, from a unit-of-work
hook). `CeleryDispatcher` wraps any Celery app (the API's small publisher app or the worker's
own app) without importing celery here; the embedded mode has an in-process one.
"""
from __future__ import annotations

import uuid
from typing import Any, Protocol

from shared.dispatch.tasks import FINALIZE_TASK, GPU_QUEUE, QUEUE_OF, SHARD_TASK
from shared.errors import ServiceUnavailable


class Dispatcher(Protocol):
    def send_shard(self, job_id: uuid.UUID, shard_index: int) -> None: ...
    def send_finalize(self, job_id: uuid.UUID) -> None: ...
    def ping(self) -> None: ...
    def queue_depth(self, queue: str = GPU_QUEUE) -> int | None: ...
    def workers_alive(self) -> int | None: ...


class CeleryDispatcher:
    def __init__(self, app: Any, *, ping_cache_s: float = 10.0):
        self.app = app
        self._ping_cache_s = ping_cache_s
        self._alive: tuple[float, int | None] | None = None

    def _send(self, name: str, args: list[Any]) -> None:
        try:
            self.app.send_task(name, args=args, queue=QUEUE_OF[name])
        except Exception as err:  # noqa: BLE001 - kombu/redis errors all mean "broker down"
            raise ServiceUnavailable("broker", f"{type(err).__name__}: {err}"[:200]) from err

    def send_shard(self, job_id: uuid.UUID, shard_index: int) -> None:
        self._send(SHARD_TASK, [str(job_id), int(shard_index)])

    def send_finalize(self, job_id: uuid.UUID) -> None:
        self._send(FINALIZE_TASK, [str(job_id)])

    def ping(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
                client = getattr(conn.default_channel, "client", None)
                if client is not None and hasattr(client, "ping"):
                    client.ping()
        except Exception as err:  # noqa: BLE001
            raise ServiceUnavailable("broker", f"{type(err).__name__}: {err}"[:200]) from err

    def queue_depth(self, queue: str = GPU_QUEUE) -> int | None:
        """Messages waiting in `queue` (not counting ones a worker holds), None if unknown."""
        try:
            with self.app.connection_for_write() as conn:
                ok = conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
                return int(ok.message_count)
        except Exception:  # noqa: BLE001
            return None

    def workers_alive(self) -> int | None:
        """Celery workers answering a broadcast ping (cached for a few seconds: scrapes are
        frequent and each ping waits for its replies); None when the broker is unreachable."""
        import time

        now = time.monotonic()
        if self._alive is not None and now - self._alive[0] < self._ping_cache_s:
            return self._alive[1]
        try:
            replies = self.app.control.ping(timeout=0.5)
            alive: int | None = len(replies or [])
        except Exception:  # noqa: BLE001
            alive = None
        self._alive = (now, alive)
        return alive
