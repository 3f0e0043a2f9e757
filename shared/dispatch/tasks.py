"""Celery task and queue names: the only thing the API and the workers share about tasks.

The API publishes by name; the worker registers functions under these names.
"""
from __future__ import annotations

SHARD_TASK = "dsgen.shard.run"
FINALIZE_TASK = "dsgen.job.finalize"
RECONCILE_TASK = "dsgen.reconcile"
SCHEDULE_TICK_TASK = "dsgen.schedules.tick"

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"

QUEUE_OF = {SHARD_TASK: GPU_QUEUE, FINALIZE_TASK: CPU_QUEUE, RECONCILE_TASK: CPU_QUEUE, SCHEDULE_TICK_TASK: CPU_QUEUE}
