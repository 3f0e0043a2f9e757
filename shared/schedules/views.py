"""What the API returns about schedules and their runs (pydantic; also the OpenAPI schema)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel


class ScheduleView(BaseModel):
    id: uuid.UUID
    name: str
    dataset: str
    cron: str
    timezone: str
    spec: dict[str, Any]
    enabled: bool
    missed: str
    vary_seed: bool
    next_fire_at: dt.datetime | None = None
    last_fired_at: dt.datetime | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class ScheduleList(BaseModel):
    items: list[ScheduleView]


class ScheduleRunView(BaseModel):
    scheduled_for: dt.datetime
    created_at: dt.datetime
    job_id: uuid.UUID | None = None
    job_status: str | None = None
    version: int | None = None
    error: str | None = None


class ScheduleRunList(BaseModel):
    items: list[ScheduleRunView]
