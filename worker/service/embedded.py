"""Embedded mode: the same domain functions, run by threads of the API process instead of
Celery workers (one machine, SQLite, a local folder). One generation thread (the model is
loaded once), one thread for finalisation, and a reconciler loop."""
from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.dispatch.tasks import CPU_QUEUE, GPU_QUEUE
from worker.service.context import WorkerContext

log = logging.getLogger(__name__)


class InProcessDispatcher:
    def __init__(self) -> None:
        self.ctx: WorkerContext | None = None
        self._pools = {GPU_QUEUE: ThreadPoolExecutor(1, thread_name_prefix="dsgen-gpu"),
                       CPU_QUEUE: ThreadPoolExecutor(1, thread_name_prefix="dsgen-cpu")}
        self._waiting = {GPU_QUEUE: 0, CPU_QUEUE: 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None
        self._scheduler: threading.Thread | None = None

    def _submit(self, queue: str, fn: Any, *args: Any) -> None:
        from shared.logs import log_context

        with self._lock:
            self._waiting[queue] += 1
        ids = {"job_id": str(args[0]), "shard": args[1] if len(args) > 1 else None}

        def run() -> None:
            with self._lock:
                self._waiting[queue] -= 1
            with log_context(**ids):
                try:
                    assert self.ctx is not None, "InProcessDispatcher.start() was not called"
                    fn(self.ctx, *args)
                except Exception:  # noqa: BLE001 - the reconciler picks it up again
                    log.exception("embedded task failed")

        self._pools[queue].submit(run)

    def send_shard(self, job_id: uuid.UUID, shard_index: int) -> None:
        from worker.service.shards import run_shard

        self._submit(GPU_QUEUE, run_shard, job_id, shard_index)

    def send_finalize(self, job_id: uuid.UUID) -> None:
        from worker.service.finalize import finalize_job

        self._submit(CPU_QUEUE, finalize_job, job_id)

    def ping(self) -> None:
        return None

    def workers_alive(self) -> int | None:
        """The generation thread of this process (it is alive while the server is)."""
        return 0 if self._stop.is_set() else 1

    def queue_depth(self, queue: str = GPU_QUEUE) -> int | None:
        with self._lock:
            return self._waiting[queue]

    def start(self, ctx: WorkerContext) -> None:
        """Pick up what a previous process left (its shards are dead), then reconcile and fire
        due schedules periodically (the same domain functions as the Celery beat tasks)."""
        from worker.service.reconcile import reconcile
        from worker.service.scheduling import run_tick

        self.ctx = ctx
        reconcile(ctx, assume_running_dead=True)

        def loop(name: str, interval: float, fn: Any) -> None:
            while not self._stop.wait(interval):
                try:
                    fn(ctx)
                except Exception:  # noqa: BLE001
                    log.exception("%s failed", name)

        self._reconciler = threading.Thread(target=loop, args=("reconciler", ctx.settings.reconcile_interval_s, reconcile),
                                            daemon=True, name="dsgen-reconciler")
        self._reconciler.start()
        self._scheduler = threading.Thread(target=loop, args=("scheduler", ctx.settings.schedule_tick_s, run_tick),
                                           daemon=True, name="dsgen-scheduler")
        self._scheduler.start()

    def shutdown(self, wait: bool = False) -> None:
        self._stop.set()
        for pool in self._pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)
