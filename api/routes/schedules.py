"""/v1/schedules: thin routes over `shared.schedules`."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Query, Response

from api.deps import Resources, current_tenant, resources
from shared import schedules
from shared.schedules import ScheduleCreate, ScheduleUpdate
from shared.views import ScheduleList, ScheduleRunList, ScheduleView

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

ERRORS = {
    401: {"description": "missing or unknown API key"},
    404: {"description": "no such schedule for this tenant"},
    422: {"description": "a field is invalid (the body names it: cron, timezone, spec.generation.steps, ...)"},
    503: {"description": "database unavailable"},
}


@router.post("", response_model=ScheduleView, status_code=201,
             responses={**ERRORS, 409: {"description": "a schedule with this name exists"}})
def create_schedule(body: ScheduleCreate, response: Response, tenant: uuid.UUID = Depends(current_tenant),
                    res: Resources = Depends(resources)) -> ScheduleView:
    with res.uow() as uow:
        view = schedules.create_schedule(uow, res.settings, tenant, body)
    response.headers["Location"] = f"/v1/schedules/{view.id}"
    return view


@router.get("", response_model=ScheduleList, responses=ERRORS)
def list_schedules(tenant: uuid.UUID = Depends(current_tenant), res: Resources = Depends(resources)) -> ScheduleList:
    with res.uow() as uow:
        return schedules.list_schedules(uow, tenant)


@router.get("/{schedule_id}", response_model=ScheduleView, responses=ERRORS)
def get_schedule(schedule_id: uuid.UUID, tenant: uuid.UUID = Depends(current_tenant),
                 res: Resources = Depends(resources)) -> ScheduleView:
    with res.uow() as uow:
        return schedules.get_schedule(uow, tenant, schedule_id)


@router.patch("/{schedule_id}", response_model=ScheduleView,
              responses={**ERRORS, 409: {"description": "a schedule with this name exists"}})
def update_schedule(schedule_id: uuid.UUID, body: ScheduleUpdate, tenant: uuid.UUID = Depends(current_tenant),
                    res: Resources = Depends(resources)) -> ScheduleView:
    with res.uow() as uow:
        return schedules.update_schedule(uow, res.settings, tenant, schedule_id, body)


@router.delete("/{schedule_id}", status_code=204, responses=ERRORS)
def delete_schedule(schedule_id: uuid.UUID, tenant: uuid.UUID = Depends(current_tenant),
                    res: Resources = Depends(resources)) -> Response:
    with res.uow() as uow:
        schedules.delete_schedule(uow, tenant, schedule_id)
    return Response(status_code=204)


@router.get("/{schedule_id}/runs", response_model=ScheduleRunList, responses=ERRORS)
def list_runs(schedule_id: uuid.UUID, limit: int = Query(default=50, ge=1, le=500),
              tenant: uuid.UUID = Depends(current_tenant), res: Resources = Depends(resources)) -> ScheduleRunList:
    with res.uow() as uow:
        return schedules.list_runs(uow, tenant, schedule_id, limit)
