"""Finalisation (cpu queue): every sample of the job fetched back, the exports written in one
pass, one archive per format uploaded, the manifest last. Shards also store export fragments
(`worker.service.shards.write_fragment`), but merging them is not used: exact split counts
over the whole job and COCO ids unique across splits need every sample (docs/service.md)."""
from __future__ import annotations

import logging
import tempfile
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared import datasets, keys, layout
from shared.db import repositories as repo
from shared.db.models import FAILED, FINALIZING, utcnow
from shared.export.files import sha256_file
from shared.lifecycle import finish_job
from shared.records import SampleRecord
from shared.spec import JobSpec
from worker.service.context import Ticker, WorkerContext

log = logging.getLogger(__name__)

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def zip_folder(folder: Path, dest: Path) -> None:
    """A deterministic archive: sorted entries, fixed timestamps (same bytes every time)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())


def finalize_job(ctx: WorkerContext, job_id: uuid.UUID) -> str:
    with ctx.uow() as uow:
        job = repo.get_job(uow.session, job_id)
        if job is None:
            return "missing"
        if job.status != FINALIZING:
            return "skipped"
        job.finalize_heartbeat_at = utcnow()
        spec = JobSpec.model_validate(job.spec)
        shard_size = job.shard_size
        written = repo.count_samples(uow.session, job_id)
        shards = [(s.index, s.start, s.stop) for s in repo.list_shards(uow.session, job_id)]

    def beat() -> None:
        with ctx.uow() as uow:
            repo.set_job_status(uow.session, job_id, (FINALIZING,), {"finalize_heartbeat_at": utcnow()})

    try:
        with Ticker(ctx.settings.heartbeat_interval_s, beat):
            summary = _export(ctx, job_id, spec, shard_size, written, shards)
    except Exception as err:  # noqa: BLE001
        log.exception("finalize of %s failed", job_id, extra={"job_id": str(job_id)})
        return _finalize_failed(ctx, job_id, f"{type(err).__name__}: {err}"[:2000])
    with ctx.uow() as uow:
        if finish_job(uow, job_id, ok=True):  # the same transaction makes it its dataset's next version
            version = datasets.record_version(uow, job_id, summary)
            log.info("job succeeded", extra={"job_id": str(job_id), "dataset_version": version})
    return "succeeded"


def _export(ctx: WorkerContext, job_id: uuid.UUID, spec: JobSpec, shard_size: int, written: int,
            shards: list[tuple[int, int, int]]) -> dict:
    """Exports and manifest; returns the dataset summary of the samples (for its version)."""
    if written != spec.num_images:
        raise RuntimeError(f"{written} samples written, {spec.num_images} expected")
    with tempfile.TemporaryDirectory(prefix="dsgen-finalize-") as tmp:
        root, archives = Path(tmp) / "dataset", Path(tmp) / "archives"
        archives.mkdir(parents=True)

        # Single-pass exports over every sample. Merging the shards' fragments (shards.py
        # still writes them) cannot give the same bytes since split counts are exact over the
        # whole job and COCO ids are unique across splits: see docs/service.md.
        from worker.service.shards import fetch_samples

        def fetch(shard: tuple[int, int, int]) -> list[SampleRecord]:
            _, start, stop = shard
            return fetch_samples(ctx, job_id, shard_size, list(range(start, stop)), root)

        with ThreadPoolExecutor(max_workers=ctx.settings.upload_concurrency) as pool:
            records = [r for part in pool.map(fetch, shards) for r in part]  # in shard order: index order
        manifest = ctx.exporter(root, spec, records)
        uploaded = []
        for fmt in spec.export.formats:
            folder = layout.export_dir(root, fmt)
            if not folder.is_dir():
                raise RuntimeError(f"the {fmt} writer produced no folder")
            archive = archives / f"{fmt}.zip"
            zip_folder(folder, archive)
            key = keys.export_key(job_id, fmt)
            ctx.store.put_file(key, archive)
            uploaded.append({"job_id": job_id, "format": fmt, "key": key, "size_bytes": archive.stat().st_size,
                             "sha256": sha256_file(archive), "created_at": utcnow()})
        with ctx.uow() as uow:
            for row in uploaded:
                repo.upsert_export(uow.session, row)
        ctx.store.put_file(keys.manifest_key(job_id), Path(manifest))  # the commit point: last
    return datasets.summarize(_records(ctx, job_id), [c.name for c in spec.classes])


def _records(ctx: WorkerContext, job_id: uuid.UUID, page: int = 1000):
    """Every sample's record, a page at a time (keyset on the index)."""
    after = None
    while True:
        with ctx.uow() as uow:
            rows = [(r.index, r.record) for r in repo.list_samples(uow.session, job_id, after=after, limit=page)]
        for _, data in rows:
            yield SampleRecord.model_validate(data)
        if len(rows) < page:
            return
        after = rows[-1][0]


def _finalize_failed(ctx: WorkerContext, job_id: uuid.UUID, error: str) -> str:
    with ctx.uow() as uow:
        job = repo.get_job(uow.session, job_id, lock=True)
        if job is None or job.status != FINALIZING:
            return "lost"
        if job.finalize_attempts >= ctx.settings.max_attempts:
            finish_job(uow, job_id, ok=False, error=f"finalize failed after {job.finalize_attempts} attempts: {error}")
            return FAILED
        job.finalize_attempts += 1
        job.finalize_heartbeat_at = utcnow()
        job.error = f"finalize attempt failed: {error}"
        uow.after_commit(lambda: ctx.dispatcher.send_finalize(job_id))
        return "requeued"
