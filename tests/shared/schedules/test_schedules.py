"""The scheduler tick against Postgres, with the clock in the test's hands."""
from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from sqlalchemy import func, select

from shared.config import Settings
from shared.db.models import Job, ScheduleRun
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.dispatch.tasks import SHARD_TASK
from shared.errors import InvalidRequest, NotFound
from shared.schedules import usecases as schedules
from shared.schedules.usecases import ScheduleCreate, ScheduleUpdate
from shared.tenants import api_keys as auth
from tests.support.fakes import RecordingDispatcher

SPEC = {"name": "nightly", "model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 4,
        "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2}}
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def factory(pg_url):
    engine = make_engine(pg_url, pool_size=10)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def settings(pg_url):
    return Settings(database_url=pg_url, shard_size=4, max_active_jobs_per_tenant=1000, schedule_grace_s=30)


@pytest.fixture
def tenant(factory):
    with UnitOfWork(factory) as uow:
        t, _ = auth.create_api_key(uow.session, f"sched-{uuid.uuid4().hex[:8]}")
    return t.id


def mine(firings, sched):
    """The database is shared by the tests: other tests' schedules may be due at the same clock."""
    return [f for f in firings if f.schedule_id == sched.id]


def uow_factory(factory):
    return lambda: UnitOfWork(factory)


def create(factory, settings, tenant, now=T0, **over):
    body = ScheduleCreate(**{"name": f"s-{uuid.uuid4().hex[:6]}", "cron": "* * * * *", "spec": SPEC, **over})
    with UnitOfWork(factory) as uow:
        return schedules.create_schedule(uow, settings, tenant, body, now=now)


def jobs_of(factory, schedule_id):
    with UnitOfWork(factory) as uow:
        runs = list(uow.session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
                                        .order_by(ScheduleRun.scheduled_for)))
        ids = [r.job_id for r in runs]
        jobs = {j.id: j for j in uow.session.scalars(select(Job).where(Job.id.in_([i for i in ids if i])))}
    return runs, jobs


def test_every_minute_one_job_per_tick_even_with_two_schedulers_racing(factory, settings, tenant):
    sched = create(factory, settings, tenant)
    assert sched.next_fire_at == T0 + dt.timedelta(minutes=1)
    dispatcher = RecordingDispatcher()
    ticks = [T0 + dt.timedelta(minutes=m, seconds=s) for m in range(1, 7) for s in (1, 2)]  # each minute ticked twice
    results: list[list] = []
    lock = threading.Lock()
    for now in ticks:
        barrier = threading.Barrier(2)

        def scheduler(now=now, barrier=barrier):
            barrier.wait()
            firings = schedules.tick(uow_factory(factory), dispatcher, settings, now=now)
            with lock:
                results.append(firings)

        threads = [threading.Thread(target=scheduler) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    runs, jobs = jobs_of(factory, sched.id)
    assert [r.scheduled_for for r in runs] == [T0 + dt.timedelta(minutes=m) for m in range(1, 7)]
    assert all(r.error is None for r in runs) and len(jobs) == 6 and all(r.job_id in jobs for r in runs)
    submitted = [f for fs in results for f in mine(fs, sched) if f.outcome == "submitted"]
    assert len(submitted) == 6  # 24 scheduler calls, 6 firings
    assert len({j.spec["seed"] for j in jobs.values()}) == 6  # each firing its own seed
    assert all(j.dataset_id is not None for j in jobs.values())
    shard_messages = [a for name, a in dispatcher.sent if name == SHARD_TASK and uuid.UUID(a[0]) in jobs]
    assert len(shard_messages) == 6  # one shard each (4 images), sent once
    # a duplicate tick later on (same clock) changes nothing
    assert mine(schedules.tick(uow_factory(factory), dispatcher, settings, now=ticks[-1]), sched) == []
    with UnitOfWork(factory) as uow:
        view = schedules.get_schedule(uow, tenant, sched.id)
    assert view.next_fire_at == T0 + dt.timedelta(minutes=7) and view.last_fired_at == T0 + dt.timedelta(minutes=6)


def test_the_same_firing_cannot_make_a_second_job(factory, settings, tenant):
    """Even a scheduler that read a stale `next_fire_at` (lock bypassed) hits the unique row."""
    sched = create(factory, settings, tenant)
    now = T0 + dt.timedelta(minutes=1, seconds=3)
    dispatcher = RecordingDispatcher()
    assert [f.outcome for f in mine(schedules.tick(uow_factory(factory), dispatcher, settings, now=now), sched)] == ["submitted"]
    with UnitOfWork(factory) as uow:  # rewind the schedule as a lagging scheduler would see it
        s = uow.session.get(schedules.Schedule, sched.id)
        s.next_fire_at = T0 + dt.timedelta(minutes=1)
    again = mine(schedules.tick(uow_factory(factory), dispatcher, settings, now=now), sched)
    assert [f.outcome for f in again] == ["duplicate"]
    runs, jobs = jobs_of(factory, sched.id)
    assert len(runs) == 1 and len(jobs) == 1


@pytest.mark.parametrize("policy, expected", [("skip", 0), ("catch_up", 1)])
def test_missed_firings_skip_or_catch_up_once_never_a_burst(factory, settings, tenant, policy, expected):
    sched = create(factory, settings, tenant, missed=policy)
    down_until = T0 + dt.timedelta(hours=3, seconds=40)  # 180 firings missed; the last one 40 s late (> grace 30 s)
    firings = mine(schedules.tick(uow_factory(factory), RecordingDispatcher(), settings, now=down_until), sched)
    runs, jobs = jobs_of(factory, sched.id)
    assert len(jobs) == expected and len(firings) == 1
    assert [r.scheduled_for for r in runs] == [T0 + dt.timedelta(hours=3)]  # the most recent one, once
    assert (runs[0].error is None) == bool(expected) and (runs[0].job_id is not None) == bool(expected)
    with UnitOfWork(factory) as uow:
        view = schedules.get_schedule(uow, tenant, sched.id)
    assert view.next_fire_at == T0 + dt.timedelta(hours=3, minutes=1)
    # back to normal: the next minute fires once
    schedules.tick(uow_factory(factory), RecordingDispatcher(), settings, now=T0 + dt.timedelta(hours=3, minutes=1, seconds=2))
    assert len(jobs_of(factory, sched.id)[1]) == expected + 1


def test_a_late_tick_within_the_grace_still_fires(factory, settings, tenant):
    sched = create(factory, settings, tenant, missed="skip")
    schedules.tick(uow_factory(factory), RecordingDispatcher(), settings, now=T0 + dt.timedelta(minutes=1, seconds=25))
    assert len(jobs_of(factory, sched.id)[1]) == 1


def test_cron_in_a_timezone(factory, settings, tenant):
    sched = create(factory, settings, tenant, cron="30 2 * * *", timezone="Europe/Berlin", now=T0)
    assert sched.next_fire_at == dt.datetime(2026, 3, 2, 1, 30, tzinfo=dt.timezone.utc)  # 02:30 CET = 01:30 UTC
    # summer time: 02:30 CEST = 00:30 UTC
    assert schedules.next_fire("30 2 * * *", "Europe/Berlin", dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)) == \
        dt.datetime(2026, 6, 1, 0, 30, tzinfo=dt.timezone.utc)


def test_a_firing_refused_by_a_limit_is_recorded_not_retried(factory, settings, tenant):
    sched = create(factory, settings, tenant)
    tight = settings.model_copy(update={"max_active_jobs_per_tenant": 1})
    disp = RecordingDispatcher()
    schedules.tick(uow_factory(factory), disp, tight, now=T0 + dt.timedelta(minutes=1, seconds=1))
    out = mine(schedules.tick(uow_factory(factory), disp, tight, now=T0 + dt.timedelta(minutes=2, seconds=1)), sched)
    assert [f.outcome for f in out] == ["error"] and "queued or running" in out[0].error
    runs, jobs = jobs_of(factory, sched.id)
    assert len(runs) == 2 and len(jobs) == 1 and runs[1].job_id is None and runs[1].error


def test_broker_down_leaves_the_firing_for_the_next_tick(factory, settings, tenant):
    from shared.errors import ServiceUnavailable

    sched = create(factory, settings, tenant)
    disp = RecordingDispatcher()
    disp.fail = ServiceUnavailable("broker", "connection refused")
    with pytest.raises(ServiceUnavailable):
        schedules.tick(uow_factory(factory), disp, settings, now=T0 + dt.timedelta(minutes=1, seconds=1))
    assert jobs_of(factory, sched.id)[0] == []
    disp.fail = None
    schedules.tick(uow_factory(factory), disp, settings, now=T0 + dt.timedelta(minutes=1, seconds=5))
    assert len(jobs_of(factory, sched.id)[1]) == 1


def test_disabled_schedules_do_not_fire_and_enabling_looks_forward(factory, settings, tenant):
    sched = create(factory, settings, tenant)
    with UnitOfWork(factory) as uow:
        v = schedules.update_schedule(uow, settings, tenant, sched.id, ScheduleUpdate(enabled=False), now=T0)
    assert v.next_fire_at is None
    assert mine(schedules.tick(uow_factory(factory), RecordingDispatcher(), settings, now=T0 + dt.timedelta(minutes=5)), sched) == []
    later = T0 + dt.timedelta(minutes=10, seconds=30)
    with UnitOfWork(factory) as uow:
        v = schedules.update_schedule(uow, settings, tenant, sched.id, ScheduleUpdate(enabled=True), now=later)
    assert v.next_fire_at == T0 + dt.timedelta(minutes=11)
    assert jobs_of(factory, sched.id)[0] == []


def test_bad_schedules_name_the_field(factory, settings, tenant):
    from pydantic import ValidationError

    for over, field in [({"cron": "61 * * * *"}, "cron"), ({"cron": "* * * *"}, "cron"),
                        ({"cron": "* * * * * *"}, "cron"), ({"timezone": "Mars/Olympus"}, "timezone")]:
        with pytest.raises(ValidationError) as err:
            ScheduleCreate(**{"name": "x", "cron": "* * * * *", "spec": SPEC, **over})
        assert err.value.errors()[0]["loc"] == (field,)
    with pytest.raises(InvalidRequest) as bad:
        create(factory, settings, tenant, spec={**SPEC, "generation": {"steps": 0}})
    assert bad.value.field == "spec.generation.steps"
    with UnitOfWork(factory) as uow, pytest.raises(NotFound):
        schedules.get_schedule(uow, tenant, uuid.uuid4())


def test_runs_count_matches_jobs(factory, settings, tenant):
    sched = create(factory, settings, tenant)
    for m in range(1, 4):
        schedules.tick(uow_factory(factory), RecordingDispatcher(), settings, now=T0 + dt.timedelta(minutes=m, seconds=1))
    with UnitOfWork(factory) as uow:
        runs = schedules.list_runs(uow, tenant, sched.id)
        n_jobs = uow.session.scalar(select(func.count()).select_from(Job).where(Job.id.in_([r.job_id for r in runs.items])))
    assert [r.scheduled_for for r in runs.items] == [T0 + dt.timedelta(minutes=m) for m in (3, 2, 1)]
    assert n_jobs == 3 and all(r.job_status == "queued" for r in runs.items)
