"""Schedules: a cron expression in a timezone that submits a job spec template, each
succeeded run becoming the next version of the schedule's dataset.

The scheduler is `tick(uow_factory, dispatcher, settings, now)`: called by a Celery beat task
in the CPU worker and by the embedded mode's loop, with the clock passed in (tests drive it).
A firing is the row (schedule_id, scheduled_for): it is inserted with ON CONFLICT DO NOTHING
in the same transaction that creates the job, under a lock on the schedule row, so two
schedulers, or one that ticks twice, create one job per firing.

Missed firings (everything was down): the most recent due firing is "missed" when it is
more than `DSGEN_SCHEDULE_GRACE_S` late. `skip` drops it, `catch_up` runs it once; either
way older ones are dropped and the next firing is the first after now (never a burst).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.config import Settings
from shared.datasets import repository as datasets_repo
from shared.datasets.versions import NAME_RULE, check_name
from shared.db.models import Schedule, utcnow
from shared.db.session import UnitOfWork
from shared.dispatch.dispatcher import Dispatcher
from shared.errors import Conflict, DomainError, InvalidRequest, NotFound, ServiceUnavailable
from shared.schedules import repository as schedules_repo
from shared.schedules.views import ScheduleList, ScheduleRunList, ScheduleRunView, ScheduleView

NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


# ---------------------------------------------------------------------------- validation
def check_cron(expr: str) -> str:
    """Five fields (minute hour day-of-month month day-of-week) or a nickname (@daily...)."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    if text.lower() in NICKNAMES:
        return text.lower()
    if len(text.split(" ")) != 5:
        raise ValueError(f"use five fields 'minute hour day month weekday' or one of {list(NICKNAMES)} (got {expr!r})")
    if not croniter.is_valid(text):
        raise ValueError(f"not a valid cron expression: {expr!r}")
    try:  # valid syntax that never matches a date (e.g. '0 0 31 2 *') would fail at every tick
        croniter(text, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)).get_next(dt.datetime)
    except Exception:  # noqa: BLE001 - croniter's errors for impossible dates
        raise ValueError(f"{expr!r} never fires (no such date)") from None
    return text


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as 'UTC' or 'Europe/Berlin')") from None
    return str(name)


def _name(v: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}", v):
        raise ValueError(NAME_RULE)
    return v


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description=f"unique per tenant; {NAME_RULE}")
    cron: str = Field(description="'minute hour day month weekday' (e.g. '0 2 * * *') or @daily, @hourly, ...")
    timezone: str = Field(default="UTC", description="IANA timezone the cron expression is read in")
    spec: dict[str, Any] = Field(description="the job spec each firing submits (validated like POST /v1/jobs)")
    dataset: str | None = Field(default=None, description="dataset the runs are versions of (default: the name)")
    enabled: bool = True
    missed: Literal["skip", "catch_up"] = Field(
        default="skip", description="a firing missed while the service was down: skip it, or run it once on recovery")
    vary_seed: bool = Field(default=True, description="each firing gets its own seed (else every run uses spec.seed)")

    _v_cron = field_validator("cron")(classmethod(lambda cls, v: check_cron(v)))
    _v_tz = field_validator("timezone")(classmethod(lambda cls, v: check_timezone(v)))
    _v_name = field_validator("name", "dataset")(classmethod(lambda cls, v: v if v is None else _name(v)))


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    cron: str | None = None
    timezone: str | None = None
    spec: dict[str, Any] | None = None
    enabled: bool | None = None
    missed: Literal["skip", "catch_up"] | None = None
    vary_seed: bool | None = None

    _v_cron = field_validator("cron")(classmethod(lambda cls, v: v if v is None else check_cron(v)))
    _v_tz = field_validator("timezone")(classmethod(lambda cls, v: v if v is None else check_timezone(v)))
    _v_name = field_validator("name")(classmethod(lambda cls, v: v if v is None else _name(v)))


# ------------------------------------------------------------------------------ the clock
def next_fire(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first firing strictly after `after` (UTC in, UTC out; the cron is read in `timezone`)."""
    from croniter import croniter

    local = after.astimezone(ZoneInfo(timezone))
    nxt = croniter(cron, local).get_next(dt.datetime)
    return nxt.astimezone(dt.timezone.utc)


def latest_fire(cron: str, timezone: str, at: dt.datetime) -> dt.datetime:
    """The last firing at or before `at`."""
    from croniter import croniter

    probe = (at + dt.timedelta(seconds=1)).astimezone(ZoneInfo(timezone))
    it = croniter(cron, probe)
    t = it.get_prev(dt.datetime).astimezone(dt.timezone.utc)
    while t > at:
        t = it.get_prev(dt.datetime).astimezone(dt.timezone.utc)
    return t


# ------------------------------------------------------------------------------ use cases
def _view(s: Schedule, dataset: str) -> ScheduleView:
    return ScheduleView(id=s.id, name=s.name, dataset=dataset, cron=s.cron, timezone=s.timezone, spec=s.spec,
                        enabled=s.enabled, missed=s.missed, vary_seed=s.vary_seed, next_fire_at=s.next_fire_at,
                        last_fired_at=s.last_fired_at, created_at=s.created_at, updated_at=s.updated_at)


def _dataset_name(uow: UnitOfWork, s: Schedule) -> str:
    ds = datasets_repo.get_dataset_by_id(uow.session, s.dataset_id)
    return ds.name if ds else ""


def _check_spec(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from shared.jobs.usecases import SpecInvalid, validate_spec

    try:
        return validate_spec(spec, settings).model_dump(mode="json")
    except SpecInvalid as err:
        raise SpecInvalid([(f"spec.{f}" if f != "spec" else f, m) for f, m in err.errors]) from None


def _own(uow: UnitOfWork, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule:
    s = schedules_repo.get_schedule(uow.session, schedule_id, tenant_id)
    if s is None:
        raise NotFound(f"schedule {schedule_id} not found", field="schedule_id")
    return s


def create_schedule(uow: UnitOfWork, settings: Settings, tenant_id: uuid.UUID, body: ScheduleCreate,
                    now: dt.datetime | None = None) -> ScheduleView:
    now = now or utcnow()
    spec = _check_spec(body.spec, settings)
    if schedules_repo.get_schedule_by_name(uow.session, tenant_id, body.name) is not None:
        raise Conflict(f"a schedule named {body.name!r} exists already", field="name")
    dataset = check_name(body.dataset or body.name, "dataset")
    ds = datasets_repo.get_or_create_dataset(uow.session, tenant_id, dataset)
    s = Schedule(id=uuid.uuid4(), tenant_id=tenant_id, name=body.name, dataset_id=ds.id, cron=body.cron,
                 timezone=body.timezone, spec=spec, enabled=body.enabled, missed=body.missed, vary_seed=body.vary_seed,
                 next_fire_at=next_fire(body.cron, body.timezone, now) if body.enabled else None,
                 created_at=now, updated_at=now)
    uow.session.add(s)
    uow.session.flush()
    return _view(s, ds.name)


def list_schedules(uow: UnitOfWork, tenant_id: uuid.UUID) -> ScheduleList:
    return ScheduleList(items=[_view(s, _dataset_name(uow, s)) for s in schedules_repo.list_schedules(uow.session, tenant_id)])


def get_schedule(uow: UnitOfWork, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> ScheduleView:
    s = _own(uow, tenant_id, schedule_id)
    return _view(s, _dataset_name(uow, s))


def update_schedule(uow: UnitOfWork, settings: Settings, tenant_id: uuid.UUID, schedule_id: uuid.UUID,
                    body: ScheduleUpdate, now: dt.datetime | None = None) -> ScheduleView:
    """Changing the cron, the timezone or enabling it again recomputes the next firing from now
    (firings that passed while it was disabled are not run)."""
    now = now or utcnow()
    s = _own(uow, tenant_id, schedule_id)
    changes = body.model_dump(exclude_unset=True)
    if any(changes.get(k) is None for k in changes):
        bad = next(k for k in changes if changes[k] is None)
        raise InvalidRequest(f"{bad}: may not be null", field=bad)
    if "name" in changes and changes["name"] != s.name and schedules_repo.get_schedule_by_name(uow.session, tenant_id, changes["name"]):
        raise Conflict(f"a schedule named {changes['name']!r} exists already", field="name")
    if "spec" in changes:
        changes["spec"] = _check_spec(changes["spec"], settings)
    retime = any(k in changes for k in ("cron", "timezone")) or (changes.get("enabled") and not s.enabled)
    for k, v in changes.items():
        setattr(s, k, v)
    if not s.enabled:
        s.next_fire_at = None
    elif retime or s.next_fire_at is None:
        s.next_fire_at = next_fire(s.cron, s.timezone, now)
    s.updated_at = now
    uow.session.flush()
    return _view(s, _dataset_name(uow, s))


def delete_schedule(uow: UnitOfWork, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
    """The schedule and its firing rows; its jobs and dataset versions stay."""
    s = _own(uow, tenant_id, schedule_id)
    schedules_repo.delete_schedule(uow.session, s.id)


def list_runs(uow: UnitOfWork, tenant_id: uuid.UUID, schedule_id: uuid.UUID, limit: int = 50) -> ScheduleRunList:
    s = _own(uow, tenant_id, schedule_id)
    return ScheduleRunList(items=[
        ScheduleRunView(scheduled_for=r.scheduled_for, created_at=r.created_at, job_id=r.job_id,
                        job_status=j.status if j else None, version=v, error=r.error)
        for r, j, v in schedules_repo.list_runs(uow.session, s.id, limit)
    ])


# ------------------------------------------------------------------------------ scheduler
@dataclass(frozen=True)
class Firing:
    schedule_id: uuid.UUID
    scheduled_for: dt.datetime
    outcome: Literal["submitted", "error", "skipped", "duplicate"]
    job_id: uuid.UUID | None = None
    error: str | None = None


def run_seed(schedule_id: uuid.UUID, scheduled_for: dt.datetime) -> int:
    """A seed of its own per firing, the same whichever scheduler makes it."""
    digest = hashlib.sha256(f"{schedule_id}/{scheduled_for.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def fire_due(uow: UnitOfWork, dispatcher: Dispatcher, settings: Settings, schedule_id: uuid.UUID,
             now: dt.datetime) -> Firing | None:
    """One due schedule, in the caller's transaction: decide the firing (or skip a missed one),
    insert its row, submit its job, and move `next_fire_at` past now."""
    from shared.jobs.usecases import submit_job

    s = schedules_repo.lock_due_schedule(uow.session, schedule_id, now)
    if s is None:
        return None  # another scheduler fired it (or it was disabled) meanwhile
    latest = latest_fire(s.cron, s.timezone, now)
    late = (now - latest).total_seconds()
    s.next_fire_at = next_fire(s.cron, s.timezone, latest)
    if not schedules_repo.insert_run(uow.session, s.id, latest):
        uow.session.flush()
        return Firing(s.id, latest, "duplicate")
    if late > settings.schedule_grace_s and s.missed == "skip":  # recorded, so the runs page shows the gap
        schedules_repo.set_run(uow.session, s.id, latest, error=f"missed ({int(late)} s late: the service was down); skipped")
        uow.session.flush()
        return Firing(s.id, latest, "skipped")
    s.last_fired_at = latest
    spec = dict(s.spec)
    if s.vary_seed:
        spec["seed"] = run_seed(s.id, latest)
    key = f"schedule:{s.id}:{latest.strftime('%Y%m%dT%H%M%SZ')}"
    dataset = _dataset_name(uow, s)
    try:
        with uow.session.begin_nested():
            view, _ = submit_job(uow, dispatcher, settings, s.tenant_id, spec, key, dataset=dataset)
    except ServiceUnavailable:
        raise  # nothing is written: the next tick tries again
    except DomainError as err:  # too many active jobs, a limit lowered since: recorded on the run
        schedules_repo.set_run(uow.session, s.id, latest, error=err.message[:2000])
        uow.session.flush()
        return Firing(s.id, latest, "error", error=err.message)
    schedules_repo.set_run(uow.session, s.id, latest, job_id=view.id)
    uow.session.flush()
    return Firing(s.id, latest, "submitted", job_id=view.id)


def tick(uow_factory: Callable[[], UnitOfWork], dispatcher: Dispatcher, settings: Settings,
         now: dt.datetime | None = None) -> list[Firing]:
    """Fire every due schedule (each in its own transaction). Safe to run from several
    schedulers at once and to repeat: a firing happens once."""
    now = now or utcnow()
    with uow_factory() as uow:
        due = schedules_repo.due_schedule_ids(uow.session, now)
    out: list[Firing] = []
    for schedule_id in due:
        with uow_factory() as uow:
            firing = fire_due(uow, dispatcher, settings, schedule_id, now)
        if firing is not None:
            out.append(firing)
    return out
