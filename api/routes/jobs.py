"""/v1/jobs: thin routes (parse, open a unit of work, call one function of `shared.jobs.usecases`)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse

from api.deps import Res, Tenant
from shared.formats.spec import JobSpec
from shared.jobs import usecases as jobs
from shared.jobs.views import ExportList, ExportView, JobPage, JobView, RetryResult, SamplePage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {
    401: {"description": "missing or unknown API key"},
    404: {"description": "no such job for this tenant"},
    422: {"description": "a field is invalid (the body names it)"},
    503: {"description": "database, broker or object store unavailable"},
}


@router.post("", response_model=JobView, status_code=201,
             responses={**ERRORS, 200: {"description": "same Idempotency-Key: the existing job", "model": JobView},
                        409: {"description": "Idempotency-Key reused with another spec"},
                        429: {"description": "too many active jobs for this tenant"}})
def submit_job(
    tenant: Tenant, res: Res,
    request: Request,
    response: Response,
    spec: JobSpec,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key", max_length=200),
    dataset: str | None = Query(default=None, max_length=100,
                                description="name of the dataset this job makes the next version of"),
) -> JobView:
    with res.uow() as uow:
        view, created = jobs.submit_job(uow, res.dispatcher, res.settings, tenant,
                                        spec, idempotency_key, dataset=dataset, store=res.store)
    if created:
        request.app.state.metrics.jobs_submitted.inc()
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{view.id}"
    return view


@router.get("", response_model=JobPage, responses=ERRORS)
def list_jobs(
    tenant: Tenant, res: Res,
    status: str | None = Query(default=None, description="queued, running, finalizing, succeeded, failed, cancelling, cancelled"),
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> JobPage:
    with res.read_uow() as uow:
        return jobs.list_jobs(uow, tenant, status=status, cursor=cursor, limit=limit)


@router.get("/{job_id}", response_model=JobView, responses=ERRORS)
def get_job(tenant: Tenant, res: Res, job_id: uuid.UUID) -> Response:
    """What many dashboards poll: the serialised view is sent again while the job's rows are
    unchanged (`api.status_cache`), so most polls cost one small query."""
    with res.read_uow() as uow:
        body = res.status.read((tenant, job_id), stamp=lambda: jobs.status_stamp(uow, tenant, job_id),
                               load=lambda: jobs.get_job_json(uow, tenant, job_id))
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobView, responses={**ERRORS, 409: {"description": "job already finished"}})
def cancel_job(tenant: Tenant, res: Res, job_id: uuid.UUID) -> JobView:
    with res.uow() as uow:
        return jobs.cancel_job(uow, res.dispatcher, tenant, job_id)


@router.post("/{job_id}/retry", response_model=RetryResult, responses={**ERRORS, 409: {"description": "job is not failed"}})
def retry_job(tenant: Tenant, res: Res, job_id: uuid.UUID) -> RetryResult:
    with res.uow() as uow:
        return jobs.retry_job(uow, res.dispatcher, tenant, job_id)


@router.delete("/{job_id}", status_code=204, responses={**ERRORS, 409: {"description": "job still active"}})
def delete_job(tenant: Tenant, res: Res, job_id: uuid.UUID) -> Response:
    with res.uow() as uow:
        jobs.delete_job(uow, res.store, tenant, job_id)
    return Response(status_code=204)


@router.get("/{job_id}/samples", response_model=SamplePage, responses=ERRORS)
def list_samples(
    tenant: Tenant, res: Res,
    job_id: uuid.UUID,
    cursor: str | None = Query(default=None, max_length=20),
    limit: int = Query(default=50, ge=1, le=200),
) -> SamplePage:
    with res.read_uow() as uow:
        return jobs.list_samples(uow, res.store, tenant, job_id, cursor=cursor, limit=limit)


@router.get("/{job_id}/exports", response_model=ExportList, responses=ERRORS)
def list_exports(tenant: Tenant, res: Res, job_id: uuid.UUID) -> ExportList:
    with res.uow() as uow:
        return jobs.list_exports(uow, res.store, res.settings, tenant, job_id)


@router.get("/{job_id}/exports/{fmt}", response_model=ExportView,
            responses={**ERRORS, 307: {"description": "redirect to the presigned URL (?download=true)"}})
def get_export(
    tenant: Tenant, res: Res,
    job_id: uuid.UUID,
    fmt: str,
    download: bool = Query(default=False, description="redirect to the presigned URL"),
):
    with res.uow() as uow:
        view = jobs.get_export(uow, res.store, res.settings, tenant, job_id, fmt)
    return RedirectResponse(view.url, status_code=307) if download else view
