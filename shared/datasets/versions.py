"""Named datasets and their versions.

A dataset groups the jobs that produce it (a schedule's runs, or jobs submitted with
`?dataset=NAME`). Each job of the dataset that succeeds becomes the next version (v1, v2, ...,
numbered in the order they succeed, under a lock on the dataset row), with a summary of its
samples that the diffs compare: sample count, instances and images per class, mean quality.
"""
from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from shared.config import Settings
from shared.datasets import repository as datasets_repo
from shared.datasets.views import DatasetDiff, DatasetList, DatasetSummary, DatasetVersionList, DatasetVersionView, DiffEntry
from shared.db.models import Dataset, DatasetVersion, Job
from shared.db.session import UnitOfWork
from shared.errors import InvalidRequest, NotFound
from shared.formats.records import SampleRecord
from shared.jobs import repository as jobs_repo
from shared.jobs.views import ExportView, export_view
from shared.storage import keys
from shared.storage.objects import ObjectStore

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")  # used with fullmatch: "$" accepts a trailing newline
NAME_RULE = "1 to 100 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(name: str, field: str = "dataset") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(f"{field}: {NAME_RULE} (got {name!r})"[:300], field=field)
    return name


def parse_ref(ref: str, field: str = "version") -> int | None:
    """'latest' -> None; '3' or 'v3' -> 3."""
    text = ref.strip().lower()
    if text == "latest":
        return None
    if text.startswith("v"):
        text = text[1:]
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:  # ASCII digits only: "²".isdigit()
        raise InvalidRequest(f"{field}: 'latest', N or vN with N >= 1 (got {ref!r})"[:300], field=field)
    return int(text)


# ----------------------------------------------------------------------- dataset sources
def resolve_sources(uow: UnitOfWork, tenant_id: uuid.UUID, spec: Any) -> tuple[Any, list[tuple[str, str]]]:
    """Sources that name a dataset (`source: {dataset: NAME, version: latest | N}`): the dataset must be
    this tenant's and the version must exist. Returns the spec with every version a number ('latest'
    resolved now, so shards re-run later read the same data) and (field, message) errors."""
    from shared.sources.archives import spec_sources

    errors: list[tuple[str, str]] = []
    named = [(f"{field}.", *field.split(".", 1), source) for field, source in spec_sources(spec)]
    if getattr(spec, "image2image", None) is not None:  # image2image names its dataset on itself
        named.append(("image2image.", "image2image", None, spec.image2image))
    for prefix, method, attr, source in named:
        if source.dataset is None:
            continue
        field = prefix.rstrip(".")
        ds = datasets_repo.get_dataset(uow.session, tenant_id, source.dataset)
        if ds is None:  # another tenant's dataset looks exactly like a missing one
            errors.append((f"{field}.dataset", f"no dataset {source.dataset!r} for this tenant; list yours with "
                                               "GET /v1/datasets (a job submitted with ?dataset=NAME makes one)"))
            continue
        wanted = None if source.version in (None, "latest") else int(source.version)
        v = datasets_repo.get_version(uow.session, ds.id, wanted)
        if v is None:
            latest = datasets_repo.max_version(uow.session, ds.id)
            what = (f"no version v{wanted} (its latest is v{latest})" if wanted is not None and latest
                    else f"no version yet (a job submitted with ?dataset={ds.name} becomes v1 when it succeeds)")
            errors.append((f"{field}.version", f"dataset {ds.name!r} has {what}; list them with "
                                               f"GET /v1/datasets/{ds.name}/versions"))
            continue
        options = getattr(spec, method)
        pinned = source.model_copy(update={"version": v.version})
        if attr is not None:
            pinned = options.model_copy(update={attr: pinned})
        spec = spec.model_copy(update={method: pinned})
    return spec, errors


def source_job(uow: UnitOfWork, tenant_id: uuid.UUID, name: str, version: int | None) -> Job | None:
    """The succeeded job behind this tenant's dataset version (None: no such dataset or version)."""
    ds = datasets_repo.get_dataset(uow.session, tenant_id, name)
    v = datasets_repo.get_version(uow.session, ds.id, version) if ds is not None else None
    return jobs_repo.get_job(uow.session, v.job_id, tenant_id) if v is not None else None


# -------------------------------------------------------------------------------- summary
def _numbers(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{prefix}.{k}" if prefix else str(k), v)


def summarize(records: Iterable[SampleRecord], classes: Sequence[str]) -> dict[str, Any]:
    """What a version's diff compares. Quality: the mean of every numeric quality value
    (nested ones by dotted name, e.g. `peak_attention.cat`) over the samples that have it."""
    instances: Counter[str] = Counter({c: 0 for c in classes})
    images: Counter[str] = Counter({c: 0 for c in classes})
    sums: dict[str, float] = {}
    counts: Counter[str] = Counter()
    n = 0
    for r in records:  # any iterable: finalisation streams them from the database
        n += 1
        per = Counter(a.category for a in r.annotations)
        instances.update(per)
        images.update(per.keys())
        for k, v in _numbers("", r.quality):
            sums[k] = sums.get(k, 0.0) + v
            counts[k] += 1
    return {
        "samples": n,
        "instances": dict(sorted(instances.items())),
        "images": dict(sorted(images.items())),
        "quality": {k: round(sums[k] / counts[k], 6) for k in sorted(sums)},
    }


def record_version(uow: UnitOfWork, job_id: uuid.UUID, summary: dict[str, Any]) -> int | None:
    """The succeeded job becomes its dataset's next version (once: a second call returns the
    same number). None for a job without a dataset."""
    s = uow.session
    job = jobs_repo.get_job(s, job_id)
    if job is None or job.dataset_id is None:
        return None
    datasets_repo.lock_dataset(s, job.dataset_id)  # numbering is serialised per dataset
    existing = datasets_repo.version_of_job(s, job_id)
    if existing is not None:
        return existing.version
    version = datasets_repo.max_version(s, job.dataset_id) + 1
    s.add(DatasetVersion(dataset_id=job.dataset_id, version=version, job_id=job_id, summary=summary))
    s.flush()
    return version


# ---------------------------------------------------------------------------------- reads
def _own_dataset(uow: UnitOfWork, tenant_id: uuid.UUID, name: str) -> Dataset:
    check_name(name, "name")
    ds = datasets_repo.get_dataset(uow.session, tenant_id, name)
    if ds is None:
        raise NotFound(f"dataset {name!r} not found", field="name")
    return ds


def _version(uow: UnitOfWork, ds: Dataset, ref: str, field: str = "version") -> DatasetVersion:
    number = parse_ref(ref, field)
    v = datasets_repo.get_version(uow.session, ds.id, number)
    if v is None:
        what = "no version yet" if number is None else f"no version v{number}"
        raise NotFound(f"dataset {ds.name!r} has {what}", field=field)
    return v


def list_datasets(uow: UnitOfWork, tenant_id: uuid.UUID) -> DatasetList:
    return DatasetList(items=[
        DatasetSummary(name=d.name, created_at=d.created_at, versions=n, latest=latest)
        for d, n, latest in datasets_repo.list_datasets(uow.session, tenant_id)
    ])


def _version_view(uow: UnitOfWork, store: ObjectStore | None, settings: Settings | None, ds: Dataset,
                  v: DatasetVersion, job: Job) -> DatasetVersionView:
    exports: list[ExportView] = []
    manifest = None
    if store is not None and settings is not None:
        manifest = store.presign(keys.manifest_key(job.id))
        exports = [export_view(e, store, settings, f"{ds.name}-v{v.version}-{e.format}.zip")
                   for e in jobs_repo.list_exports(uow.session, job.id)]
    return DatasetVersionView(dataset=ds.name, version=v.version, name=f"v{v.version}", job_id=job.id,
                              created_at=v.created_at, summary=v.summary or {}, manifest_url=manifest,
                              exports=exports)


def list_versions(uow: UnitOfWork, tenant_id: uuid.UUID, name: str) -> DatasetVersionList:
    ds = _own_dataset(uow, tenant_id, name)
    items = [_version_view(uow, None, None, ds, v, j) for v, j in datasets_repo.list_versions(uow.session, ds.id)]
    jobs = [j.id for j in datasets_repo.jobs_of_dataset(uow.session, ds.id)]
    return DatasetVersionList(dataset=ds.name, items=items, jobs=jobs)


def get_version(uow: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, name: str,
                ref: str) -> DatasetVersionView:
    ds = _own_dataset(uow, tenant_id, name)
    v = _version(uow, ds, ref)
    job = jobs_repo.get_job(uow.session, v.job_id)
    assert job is not None  # the version row is deleted with its job
    return _version_view(uow, store, settings, ds, v, job)


def _delta(a: float | int | None, b: float | int | None) -> float | int | None:
    if a is None or b is None:
        return None
    d = b - a
    return round(d, 6) if isinstance(d, float) else d


def diff(uow: UnitOfWork, tenant_id: uuid.UUID, name: str, base: str, head: str) -> DatasetDiff:
    """head - base: sample count, instances and images per class, mean quality."""
    ds = _own_dataset(uow, tenant_id, name)
    va, vb = _version(uow, ds, base, "base"), _version(uow, ds, head, "head")
    a, b = va.summary or {}, vb.summary or {}

    def table(key: str) -> dict[str, DiffEntry]:
        ka, kb = a.get(key, {}) or {}, b.get(key, {}) or {}
        return {k: DiffEntry(base=ka.get(k), head=kb.get(k), delta=_delta(ka.get(k), kb.get(k)))
                for k in sorted(set(ka) | set(kb))}

    return DatasetDiff(
        dataset=ds.name, base=va.version, head=vb.version,
        samples=DiffEntry(base=a.get("samples"), head=b.get("samples"), delta=_delta(a.get("samples"), b.get("samples"))),
        instances=table("instances"), images=table("images"), quality=table("quality"),
    )
