"""Service-wide numbers for `/metrics`, read from the database (the truth) and the broker at
scrape time. No job ids anywhere: totals, per status, per queue."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.db.models import JOB_STATES, utcnow
from shared.db.session import UnitOfWork
from shared.dispatch.dispatcher import Dispatcher
from shared.dispatch.tasks import CPU_QUEUE, GPU_QUEUE
from shared.metrics import repository as metrics_repo

SHARD_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass
class ServiceStats:
    jobs: dict[str, int]
    samples: int
    images_per_s: float
    shard_buckets: list[tuple[float, int]]  # (upper bound, cumulative count)
    shard_count: int
    shard_seconds: float
    shard_retries: int
    queue_depth: dict[str, int | None] = field(default_factory=dict)
    workers_alive: int | None = None


def service_stats(uow: UnitOfWork, dispatcher: Dispatcher, *, now: dt.datetime | None = None,
                  window_s: float = 60.0, buckets: Sequence[float] = SHARD_DURATION_BUCKETS) -> ServiceStats:
    now = now or utcnow()
    s = uow.session
    counts = metrics_repo.job_status_counts(s)
    cumulative, n, total = metrics_repo.shard_duration_buckets(s, buckets)
    recent = metrics_repo.count_all_samples(s, since=now - dt.timedelta(seconds=window_s))
    return ServiceStats(
        jobs={st: counts.get(st, 0) for st in JOB_STATES},
        samples=metrics_repo.count_all_samples(s),
        images_per_s=round(recent / window_s, 4),
        shard_buckets=list(zip(buckets, cumulative)),
        shard_count=n,
        shard_seconds=total,
        shard_retries=int(metrics_repo.shard_retries(s)),
        queue_depth={q: dispatcher.queue_depth(q) for q in (GPU_QUEUE, CPU_QUEUE)},
        workers_alive=dispatcher.workers_alive() if hasattr(dispatcher, "workers_alive") else None,
    )
