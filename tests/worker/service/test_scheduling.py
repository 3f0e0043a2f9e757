"""The scheduler as the workers run it: the beat entry and the task's domain call."""
import datetime as dt

from shared.config import Settings
from shared.db.session import UnitOfWork
from shared.dispatch.tasks import CPU_QUEUE, SCHEDULE_TICK_TASK, SHARD_TASK
from shared.schedules import usecases as schedules
from shared.schedules.usecases import ScheduleCreate
from worker.service.scheduling import run_tick

SPEC = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 4,
        "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2}}


def test_the_beat_fires_the_scheduler_on_the_cpu_queue():
    from worker.celery_app import app  # the app `dsgen worker` runs (built from the environment)

    entry = app.conf.beat_schedule["schedules"]
    assert entry["task"] == SCHEDULE_TICK_TASK and entry["options"]["queue"] == CPU_QUEUE
    assert entry["schedule"] == app.dsgen_settings.schedule_tick_s == Settings().schedule_tick_s
    assert SCHEDULE_TICK_TASK in app.tasks and "reconcile" in app.conf.beat_schedule


def test_run_tick_submits_due_schedules_and_sends_their_shards(ctx, tenant):
    now = dt.datetime.now(dt.timezone.utc)
    with ctx.uow() as uow:
        s = schedules.create_schedule(uow, ctx.settings, tenant,
                                      ScheduleCreate(name="every-minute", cron="* * * * *", spec=SPEC),
                                      now=now - dt.timedelta(minutes=1))
    assert run_tick(ctx) >= 1
    with UnitOfWork(ctx.session_factory) as uow:
        runs = schedules.list_runs(uow, tenant, s.id).items
    assert len(runs) == 1 and runs[0].job_id is not None
    assert (SHARD_TASK, (str(runs[0].job_id), 0)) in ctx.dispatcher.sent
