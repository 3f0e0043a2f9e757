"""Job use cases of the API, independent of HTTP: each takes a unit of work (and the
dispatcher / object store it needs) and returns a view from `shared.jobs.views`."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
import uuid
from typing import Any

from pydantic import ValidationError

from shared.config import Settings
from shared.datasets import repository as datasets_repo
from shared.db.models import JOB_STATES, JOB_TERMINAL, S_QUEUED, Job, Shard, utcnow
from shared.db.session import UnitOfWork
from shared.dispatch.dispatcher import Dispatcher
from shared.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from shared.formats.model_meta import check_spec_fits_model, model_meta
from shared.formats.overlay import colour_hex
from shared.formats.spec import JobSpec, describe_validation_error
from shared.formats.spec_paths import check_api_paths
from shared.jobs import repository as jobs_repo
from shared.jobs.lifecycle import request_cancel, retry_failed, send_shards_after_commit
from shared.jobs.views import (
    AnnotationView,
    ExportList,
    ExportView,
    JobPage,
    JobSummary,
    JobView,
    ModelList,
    ModelView,
    Progress,
    RetryResult,
    SamplePage,
    SampleUrls,
    SampleView,
    ShardView,
    export_view,
)
from shared.storage import keys
from shared.storage.objects import ObjectStore
from shared.tenants import repository as tenants_repo


class SpecInvalid(InvalidRequest):
    def __init__(self, errors: list[tuple[str, str]]):
        field, msg = errors[0]
        super().__init__(f"{field}: {msg}", field=field)
        self.errors = errors


# ------------------------------------------------------------------------------ validate
def validate_spec(body: Any, settings: Settings) -> JobSpec:
    """The same pydantic model as `dsgen run`, then the server's limits (422 naming the field)."""
    if isinstance(body, JobSpec):
        spec = body
    elif not isinstance(body, dict):
        raise SpecInvalid([("spec", "the body must be a JSON object (a job spec)")])
    else:
        try:
            spec = JobSpec.model_validate(body)
        except ValidationError as err:
            raise SpecInvalid(describe_validation_error(err)) from None
    check_limits(spec, settings)
    return spec


def check_limits(spec: JobSpec, settings: Settings) -> None:
    errors: list[tuple[str, str]] = []
    if spec.num_images > settings.max_images_per_job:
        errors.append(("num_images", f"at most {settings.max_images_per_job} images per job on this server (got {spec.num_images})"))
    for side in ("width", "height"):
        v = getattr(spec.generation, side)
        if v > settings.max_resolution:
            errors.append((f"generation.{side}", f"at most {settings.max_resolution} pixels on this server (got {v})"))
    if spec.generation.steps > settings.max_steps:
        errors.append(("generation.steps", f"at most {settings.max_steps} steps on this server (got {spec.generation.steps})"))
    if len(spec.classes) > settings.max_classes:
        errors.append(("classes", f"at most {settings.max_classes} classes per job on this server (got {len(spec.classes)})"))
    texts = [("prompts.templates", t) for t in spec.prompts.templates] + [("prompts.prompts", p) for p in spec.prompts.prompts]
    texts.append(("prompts.negative", spec.prompts.negative))
    for field, text in texts:
        if len(text) > settings.max_prompt_length:
            errors.append((field, f"prompts are at most {settings.max_prompt_length} characters on this server (got {len(text)})"))
            break
    paths = check_api_paths(spec, settings.models, settings.adaptors)
    errors.extend(paths)
    if not paths and (meta := model_meta(spec.model.id)) is not None:
        errors.extend(check_spec_fits_model(spec, meta))
    llm = spec.prompts.llm
    if llm is not None:
        if llm.backend != "endpoint":
            errors.append(("prompts.llm.backend", "a model folder on the server cannot be used over the API; use backend: "
                                                  "endpoint (the language model this server is configured with)"))
        if llm.generated is not None or llm.generated_by is not None:
            errors.append(("prompts.llm.generated", "written by the server; send your own prompts with source: list"))
        if llm.count > settings.llm_max_prompts:
            errors.append(("prompts.llm.count", f"at most {settings.llm_max_prompts} prompts per job on this server"))
        if not settings.llm_url:
            errors.append(("prompts.source", "this server has no language model configured; use templates or list"))
    for c in spec.concepts:
        if not c.startswith("upload:"):
            errors.append(("concepts", "over the API a concept is an uploaded one: 'upload:<id>' (POST /v1/sources)"))
            break
    if errors:
        raise SpecInvalid(errors)


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# -------------------------------------------------------------------------------- views
def _progress(uow: UnitOfWork, job: Job, with_shards: bool,
              shards: list[Shard] | None = None) -> tuple[Progress, list[ShardView]]:
    if shards is None:
        shards = jobs_repo.shard_progress_rows(uow.session, job.id)  # progress is kept on the shards (`done`)
    done = sum(s.done for s in shards)
    counts: dict[str, int] = {}
    for s in shards:
        counts[s.status] = counts.get(s.status, 0) + 1
    rate = eta = None
    if job.started_at and done:
        elapsed = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
        if elapsed > 0:
            rate = round(done / elapsed, 3)
            if job.status not in JOB_TERMINAL and rate > 0:
                eta = round((job.num_images - done) / rate, 1)
    progress = Progress(done=done, total=job.num_images, fraction=round(done / job.num_images, 4),
                        shards=counts, images_per_s=rate, eta_s=eta)
    views = [
        ShardView(index=s.index, start=s.start, stop=s.stop, status=s.status, attempts=s.attempts,
                  done=s.done, worker=s.worker, error=s.error)
        for s in shards
    ] if with_shards else []
    return progress, views


def _summary(job: Job, dataset: str | None = None) -> JobSummary:
    return JobSummary(id=job.id, name=job.name, status=job.status, created_at=job.created_at,
                      started_at=job.started_at, finished_at=job.finished_at,
                      num_images=job.num_images, error=job.error, dataset=dataset)


def _dataset_names(uow: UnitOfWork, jobs: list[Job]) -> dict[uuid.UUID, str]:
    return datasets_repo.dataset_names(uow.session, (j.dataset_id for j in jobs if j.dataset_id is not None))


def job_view(uow: UnitOfWork, job: Job, shards: list[Shard] | None = None) -> JobView:
    progress, shards = _progress(uow, job, True, shards)
    version = datasets_repo.version_of_job(uow.session, job.id) if job.dataset_id else None
    dataset = _dataset_names(uow, [job]).get(job.dataset_id) if job.dataset_id else None
    return JobView(**_summary(job, dataset).model_dump(), progress=progress, shard_list=shards,
                   spec=job.spec, cancel_requested=job.cancel_requested,
                   version=version.version if version else None,
                   class_colours={c.get("name", ""): colour_hex(i + 1) for i, c in enumerate(job.spec.get("classes", []))})


def _own_job(uow: UnitOfWork, tenant_id: uuid.UUID, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    job = jobs_repo.get_job(uow.session, job_id, tenant_id, lock=lock)
    if job is None:  # another tenant's job looks exactly like a missing one
        raise NotFound(f"job {job_id} not found", field="job_id")
    return job


# ------------------------------------------------------------------------------- use cases
def submit_job(
    uow: UnitOfWork,
    dispatcher: Dispatcher,
    settings: Settings,
    tenant_id: uuid.UUID,
    body: Any,
    idempotency_key: str | None = None,
    dataset: str | None = None,
    store: ObjectStore | None = None,
) -> tuple[JobView, bool]:
    """Validate, write the job and its shards in one transaction, send the shards after the
    commit. Returns (job, created); the same Idempotency-Key returns the first job. With a
    `dataset` name the job becomes that dataset's next version when it succeeds."""
    spec = validate_spec(body, settings)
    from shared.sources.archives import check_spec_sources

    source_errors = check_spec_sources(spec, store, tenant_id)  # uploads of this tenant, never server paths
    if source_errors:
        raise SpecInvalid(source_errors)
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 200):
        raise InvalidRequest("Idempotency-Key: 1 to 200 characters", field="Idempotency-Key")
    if dataset is not None:
        from shared.datasets.versions import check_name

        check_name(dataset, "dataset")
    dispatcher.ping()  # broker down: 503 before anything is written
    stored = _with_llm_prompts(spec, settings)  # written once, stored with the job: every shard reads the same
    s = uow.session
    from shared.datasets.versions import resolve_sources

    stored, dataset_errors = resolve_sources(uow, tenant_id, stored)  # this tenant's versions, 'latest' pinned
    if dataset_errors:
        raise SpecInvalid(dataset_errors)
    tenants_repo.lock_tenant(s, tenant_id)
    digest = spec_hash(spec)
    if idempotency_key:
        existing = jobs_repo.find_job_by_idempotency_key(s, tenant_id, idempotency_key)
        if existing is not None:
            if existing.spec_hash != digest:
                raise Conflict("Idempotency-Key was already used with a different spec", field="Idempotency-Key")
            return job_view(uow, existing), False
    active = jobs_repo.count_active_jobs(s, tenant_id)
    if active >= settings.max_active_jobs_per_tenant:
        raise TooManyRequests(
            f"this tenant already has {active} queued or running jobs (limit {settings.max_active_jobs_per_tenant}); "
            "wait for one to finish or cancel one"
        )
    batch = spec.generation.batch_size  # shards hold whole batches: no batch is split or redone
    size = max(batch, math.ceil(settings.shard_size / batch) * batch)
    n = spec.num_images
    dataset_id = datasets_repo.get_or_create_dataset(s, tenant_id, dataset).id if dataset is not None else None
    job = Job(id=uuid.uuid4(), tenant_id=tenant_id, name=spec.name, spec=stored.model_dump(mode="json"),
              spec_hash=digest, status="queued", num_images=n, shard_size=size,
              num_shards=math.ceil(n / size), idempotency_key=idempotency_key,
              cancel_requested=False, finalize_attempts=0, dataset_id=dataset_id)
    s.add(job)
    s.flush()
    # One INSERT for all shards, written as already queued: a 100,000-image job has thousands
    # of shards, and one ORM object each plus a second UPDATE of all of them took seconds.
    jobs_repo.insert_shards(s, job.id, n, size, S_QUEUED, utcnow())
    send_shards_after_commit(uow, dispatcher, job.id, list(range(job.num_shards)), mark=False)
    return job_view(uow, job), True


def _with_llm_prompts(spec: JobSpec, settings: Settings) -> JobSpec:
    """prompts.source llm: the spec with the prompts the server's endpoint wrote (422 if it cannot)."""
    if spec.prompts.source != "llm":
        return spec
    from shared.formats.llm_prompts import endpoint_writer, resolve_llm_prompts
    from shared.formats.spec import SpecError

    try:
        return resolve_llm_prompts(spec, endpoint_writer(settings, spec.prompts.llm), settings.max_prompt_length)
    except SpecError as err:
        raise SpecInvalid([(err.field or "prompts.llm", str(err).split(": ", 1)[-1])]) from None


def get_job(uow: UnitOfWork, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobView:
    """A status poll: the job row and its shards, two primary-key lookups (progress is kept on
    the shards), plus its dataset's name and version when it belongs to one. (One joined query
    repeats the job row per shard and costs more CPU than the second round trip.)"""
    return job_view(uow, _own_job(uow, tenant_id, job_id))


def get_job_json(uow: UnitOfWork, tenant_id: uuid.UUID, job_id: uuid.UUID) -> tuple[bytes, bool]:
    """`get_job` serialised, and whether the job is terminal (its view then no longer changes
    with the clock: no rate or ETA is computed at read time)."""
    view = get_job(uow, tenant_id, job_id)
    return view.model_dump_json().encode(), view.status in JOB_TERMINAL


def status_stamp(uow: UnitOfWork, tenant_id: uuid.UUID, job_id: uuid.UUID) -> str | None:
    """A token that changes whenever `get_job`'s answer can (see `shared.jobs.repository.job_status_stamp`)."""
    return jobs_repo.job_status_stamp(uow.session, job_id, tenant_id)


def encode_cursor(created: dt.datetime, job_id: uuid.UUID) -> str:
    raw = json.dumps([created.isoformat(), str(job_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, jid = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError
        return when, uuid.UUID(jid)
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise InvalidRequest("cursor: not a cursor returned by this API", field="cursor") from None


def list_jobs(uow: UnitOfWork, tenant_id: uuid.UUID, *, status: str | None, cursor: str | None, limit: int) -> JobPage:
    if status is not None and status not in JOB_STATES:
        raise InvalidRequest(f"status: one of {list(JOB_STATES)} (got {status!r})", field="status")
    after = decode_cursor(cursor) if cursor else None
    jobs = jobs_repo.list_jobs(uow.session, tenant_id, status=status, after=after, limit=limit + 1)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    nxt = encode_cursor(jobs[-1].created_at, jobs[-1].id) if more and jobs else None
    names = _dataset_names(uow, jobs)
    return JobPage(items=[_summary(j, names.get(j.dataset_id) if j.dataset_id else None) for j in jobs], next_cursor=nxt)


def cancel_job(uow: UnitOfWork, dispatcher: Dispatcher, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobView:
    job = _own_job(uow, tenant_id, job_id, lock=True)
    if job.status in JOB_TERMINAL or job.status == "finalizing":
        raise Conflict(f"job is {job.status}; only queued or running jobs can be cancelled", field="status")
    request_cancel(uow, dispatcher, job)
    return job_view(uow, job)


def retry_job(uow: UnitOfWork, dispatcher: Dispatcher, tenant_id: uuid.UUID, job_id: uuid.UUID) -> RetryResult:
    job = _own_job(uow, tenant_id, job_id, lock=True)
    if job.status != "failed":
        raise Conflict(f"job is {job.status}; only failed jobs can be retried", field="status")
    dispatcher.ping()
    indexes = retry_failed(uow, dispatcher, job)
    return RetryResult(job=job_view(uow, job), shards=indexes)


def delete_job(uow: UnitOfWork, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Objects first (a failure leaves the rows, so the delete can be repeated), then rows."""
    job = _own_job(uow, tenant_id, job_id, lock=True)
    if job.status not in JOB_TERMINAL:
        raise Conflict(f"job is {job.status}; cancel it and wait for it to stop before deleting it", field="status")
    store.delete_prefix(keys.job_prefix(job.id))
    jobs_repo.delete_job(uow.session, job.id)


def list_samples(uow: UnitOfWork, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID, *,
                 cursor: str | None, limit: int) -> SamplePage:
    job = _own_job(uow, tenant_id, job_id)
    after = None
    if cursor is not None:
        if not re.fullmatch(r"[0-9]{1,9}", cursor):  # ASCII digits only: "²".isdigit() is True
            raise InvalidRequest("cursor: not a cursor returned by this API", field="cursor")
        after = int(cursor)
    rows = jobs_repo.list_samples(uow.session, job.id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    anns = jobs_repo.annotations_for(uow.session, job.id, [r.index for r in rows])

    def url(key: str | None) -> str | None:
        return store.presign(key) if key else None

    items = [
        SampleView(
            index=r.index, seed=r.seed, prompt=r.prompt, negative_prompt=r.negative_prompt, quality=r.quality or {},
            lineage=r.lineage or {},
            annotations=[AnnotationView(instance_id=a.instance_id, category=a.category, category_id=a.category_id,
                                        bbox=list(a.bbox), area=a.area, score=a.score, source=a.source,
                                        colour=colour_hex(a.category_id))
                         for a in anns[r.index]],
            urls=SampleUrls(image=store.presign(r.image_key), semantic=url(r.semantic_key),
                            instances=url(r.instances_key), overlay=url(r.overlay_key), record=store.presign(r.record_key)),
        )
        for r in rows
    ]
    return SamplePage(items=items, next_cursor=str(rows[-1].index) if more and rows else None)


def list_exports(uow: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID) -> ExportList:
    job = _own_job(uow, tenant_id, job_id)
    items = [export_view(e, store, settings, f"{job.name}-{e.format}.zip")
             for e in jobs_repo.list_exports(uow.session, job.id)]
    manifest = store.presign(keys.manifest_key(job.id)) if job.status == "succeeded" else None
    return ExportList(items=items, manifest_url=manifest)


def get_export(uow: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, fmt: str) -> ExportView:
    job = _own_job(uow, tenant_id, job_id)
    e = jobs_repo.get_export(uow.session, job.id, fmt)
    if e is None:
        raise NotFound(f"job {job_id} has no {fmt!r} export (exports exist once the job has succeeded)", field="format")
    return export_view(e, store, settings, f"{job.name}-{e.format}.zip")


def list_models(settings: Settings) -> ModelList:
    return ModelList(items=[ModelView(id=m) for m in settings.models])


def parse_spec_text(text: str) -> dict[str, Any]:
    """A spec written as YAML or JSON (the dashboard's form) -> the JSON object to submit.
    Only the syntax is checked here; the fields are validated when it is submitted."""
    import yaml

    from shared.formats.spec import describe_yaml_error, json_data, load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise InvalidRequest(f"text: {describe_yaml_error(err)}", field="text") from None
    if not isinstance(data, dict):
        raise InvalidRequest("text: a spec is a mapping (key: value lines, or a JSON object)", field="text")
    try:
        return json_data(data)
    except ValueError as err:
        raise InvalidRequest(f"text: {err}", field="text") from None
