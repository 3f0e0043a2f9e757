"""Finalisation (cpu queue): the shards' export fragments (`worker.service.shards.write_fragment`)
merged into the job's exports (`shared.formats.export.fragments`: byte for byte what the single-pass
writers give over all samples), one archive per format uploaded, the manifest last.

A shard whose fragment is missing or was made by an older version (a job from before
fragments, or before splits were fixed over the job's total) is exported from its own
samples, fetched back, with the same single-pass writers: that shard's fragment, built here.
So finalisation reads one object per shard, not four per sample, except for such shards."""
from __future__ import annotations

import logging
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.datasets import versions as datasets
from shared.db.models import FAILED, FINALIZING, utcnow
from shared.formats import layout
from shared.formats.export.archives import ArchiveSink, zip_folder  # noqa: F401  (zip_folder: this module's archives)
from shared.formats.export.files import sha256_file
from shared.formats.records import SampleRecord
from shared.formats.spec import JobSpec
from shared.jobs import repository as jobs_repo
from shared.jobs.lifecycle import finish_job
from shared.storage import keys
from worker.service.context import Ticker, WorkerContext

log = logging.getLogger(__name__)

def finalize_job(ctx: WorkerContext, job_id: uuid.UUID) -> str:
    with ctx.uow() as uow:
        job = jobs_repo.get_job(uow.session, job_id)
        if job is None:
            return "missing"
        if job.status != FINALIZING:
            return "skipped"
        job.finalize_heartbeat_at = utcnow()
        spec = JobSpec.model_validate(job.spec)
        shard_size = job.shard_size
        written = jobs_repo.count_samples(uow.session, job_id)
        shards = [(s.index, s.start, s.stop) for s in jobs_repo.list_shards(uow.session, job_id)]

    def beat() -> None:
        with ctx.uow() as uow:
            jobs_repo.set_job_status(uow.session, job_id, (FINALIZING,), {"finalize_heartbeat_at": utcnow()})

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

        from shared.formats.export.fragments import merge_fragments

        parts = Path(tmp) / "fragments"

        def fragment(shard: tuple[int, int, int]):  # noqa: ANN202
            return _fragment(ctx, job_id, spec, shard_size, shard, parts)

        with ThreadPoolExecutor(max_workers=ctx.settings.upload_concurrency) as pool:
            fragments = list(pool.map(fragment, shards))  # in shard order: index order
        rebuilt = sum(1 for f in fragments if f.rebuilt)
        if rebuilt:
            log.info("fragments rebuilt from samples", extra={"job_id": str(job_id), "shards": rebuilt})
        # each sample's files go from its fragment straight into its format's archive
        sink = ArchiveSink(archives, list(spec.export.formats))
        try:
            manifest = merge_fragments(root, spec, fragments, sink)
            paths = sink.close(root)
        except BaseException:
            sink.abort()
            raise
        uploaded = []
        for fmt in spec.export.formats:
            if not (root / fmt).is_dir():
                raise RuntimeError(f"the {fmt} writer produced no folder")
            archive = paths[fmt]
            key = keys.export_key(job_id, fmt)
            ctx.store.put_file(key, archive)
            uploaded.append({"job_id": job_id, "format": fmt, "key": key, "size_bytes": archive.stat().st_size,
                             "sha256": sha256_file(archive), "created_at": utcnow()})
        with ctx.uow() as uow:
            for row in uploaded:
                jobs_repo.upsert_export(uow.session, row)
        ctx.store.put_file(keys.manifest_key(job_id), Path(manifest))  # the commit point: last
    return datasets.summarize(_records(ctx, job_id), [c.name for c in spec.classes])


def _fragment(ctx: WorkerContext, job_id: uuid.UUID, spec: JobSpec, shard_size: int,
              shard: tuple[int, int, int], parts: Path):  # noqa: ANN202
    """The shard's fragment, unpacked under `parts`; rebuilt from the shard's samples with the
    single-pass writers when it is missing or not current (`Fragment.is_current`)."""
    import shutil

    from shared.formats.export.fragments import unpack_fragment
    from shared.storage.objects import ObjectNotFound
    from worker.service.shards import fetch_samples

    index, start, stop = shard
    folder = parts / f"{index:05d}"
    try:
        fragment = unpack_fragment(ctx.store.get(keys.fragment_key(job_id, index)), folder)
        current = fragment.is_current(spec)
        fragment.release()  # its manifest is read again when merged: 1,563 held at 100k samples cost ~0.4 GB
        if current:
            fragment.rebuilt = False
            return fragment
    except ObjectNotFound:
        pass
    shutil.rmtree(folder, ignore_errors=True)
    folder.with_name(folder.name + ".zip").unlink(missing_ok=True)
    records = fetch_samples(ctx, job_id, shard_size, list(range(start, stop)), folder)
    ctx.exporter(folder, spec, records)
    shutil.rmtree(folder / layout.SAMPLES_DIR)
    from shared.formats.export.fragments import Fragment

    fragment = Fragment(folder)
    fragment.rebuilt = True
    return fragment


def _records(ctx: WorkerContext, job_id: uuid.UUID, page: int = 1000):
    """Every sample's record, a page at a time (keyset on the index)."""
    after = None
    while True:
        with ctx.uow() as uow:
            rows = [(r.index, r.record) for r in jobs_repo.list_samples(uow.session, job_id, after=after, limit=page)]
        for _, data in rows:
            yield SampleRecord.model_validate(data)
        if len(rows) < page:
            return
        after = rows[-1][0]


def _finalize_failed(ctx: WorkerContext, job_id: uuid.UUID, error: str) -> str:
    with ctx.uow() as uow:
        job = jobs_repo.get_job(uow.session, job_id, lock=True)
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
