"""/v1/schedules: thin routes over `shared.schedules.usecases`."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Response

from api.deps import Res, Tenant
from shared.schedules import usecases as schedules
from shared.schedules.usecases import ScheduleCreate, ScheduleUpdate
from shared.schedules.views import ScheduleList, ScheduleRunList, ScheduleView

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

ERRORS = {
    401: {"description": "missing or unknown API key"},
    404: {"description": "no such schedule for this tenant"},
    422: {"description": "a field is invalid (the body names it: cron, timezone, spec.generation.steps, ...)"},
    503: {"description": "database unavailable"},
}


@router.post("", response_model=ScheduleView, status_code=201,
             responses={**ERRORS, 409: {"description": "a schedule with this name exists"}})
def create_schedule(tenant: Tenant, res: Res, body: ScheduleCreate, response: Response) -> ScheduleView:
    with res.uow() as uow:
        view = schedules.create_schedule(uow, res.settings, tenant, body)
    response.headers["Location"] = f"/v1/schedules/{view.id}"
    return view


@router.get("", response_model=ScheduleList, responses=ERRORS)
def list_schedules(tenant: Tenant, res: Res) -> ScheduleList:
    with res.uow() as uow:
        return schedules.list_schedules(uow, tenant)


@router.get("/{schedule_id}", response_model=ScheduleView, responses=ERRORS)
def get_schedule(tenant: Tenant, res: Res, schedule_id: uuid.UUID) -> ScheduleView:
    with res.uow() as uow:
        return schedules.get_schedule(uow, tenant, schedule_id)


@router.patch("/{schedule_id}", response_model=ScheduleView,
              responses={**ERRORS, 409: {"description": "a schedule with this name exists"}})
def update_schedule(tenant: Tenant, res: Res, schedule_id: uuid.UUID, body: ScheduleUpdate) -> ScheduleView:
    with res.uow() as uow:
        return schedules.update_schedule(uow, res.settings, tenant, schedule_id, body)


@router.delete("/{schedule_id}", status_code=204, responses=ERRORS)
def delete_schedule(tenant: Tenant, res: Res, schedule_id: uuid.UUID) -> Response:
    with res.uow() as uow:
        schedules.delete_schedule(uow, tenant, schedule_id)
    return Response(status_code=204)


@router.get("/{schedule_id}/runs", response_model=ScheduleRunList, responses=ERRORS)
def list_runs(tenant: Tenant, res: Res, schedule_id: uuid.UUID, limit: int = Query(default=50, ge=1, le=500)) -> ScheduleRunList:
    with res.uow() as uow:
        return schedules.list_runs(uow, tenant, schedule_id, limit)
