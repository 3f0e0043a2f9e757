"""One shard: claim it, generate its missing samples batch by batch, write objects then rows,
heartbeat, stop on cancel, and finish with compare-and-set (the last shard sends finalize)."""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shared import keys
from shared.db import repositories as repo
from shared.db.models import S_CANCELLED, S_SUCCEEDED, utcnow
from shared.lifecycle import Claim, claim_shard, finish_shard, heartbeat, shard_error
from shared.overlay import overlay_png
from shared.records import SampleRecord
from shared.spec import JobSpec
from worker.service.context import Ticker, WorkerContext

log = logging.getLogger(__name__)


def run_shard(ctx: WorkerContext, job_id: uuid.UUID, shard_index: int) -> str:
    """Returns what happened: succeeded, cancelled, lost (another attempt owns it now),
    requeued / failed (it raised), or why it did not start (done, busy, missing, gave-up)."""
    s = ctx.settings
    stale_before = utcnow() - dt.timedelta(seconds=s.heartbeat_timeout_s)
    with ctx.uow() as uow:
        claim = claim_shard(uow, ctx.dispatcher, job_id, shard_index, worker=ctx.worker_name,
                            max_attempts=s.max_attempts, stale_before=stale_before)
    if isinstance(claim, str):
        log.info("shard %s/%s not run: %s", job_id, shard_index, claim)
        return claim
    lost = threading.Event()

    def beat() -> None:
        with ctx.uow() as uow:
            ours, _cancel = heartbeat(uow.session, claim)
        if not ours:
            lost.set()

    try:
        with Ticker(s.heartbeat_interval_s, beat):
            return _generate(ctx, claim, lost)
    except Exception as err:  # noqa: BLE001 - recorded on the shard, the attempt cap decides
        log.exception("shard %s/%s attempt %s failed", job_id, shard_index, claim.attempt)
        message = f"{type(err).__name__}: {err}"[:2000]
        with ctx.uow() as uow:
            return shard_error(uow, ctx.dispatcher, claim, message, s.max_attempts)


def _batches(indexes: list[int], batch_size: int) -> list[list[int]]:
    return [list(g) for _, g in itertools.groupby(indexes, key=lambda i: i // batch_size)]


def _generate(ctx: WorkerContext, claim: Claim, lost: threading.Event) -> str:
    """Generation of batch k+1 overlaps with the writes of batch k: a pool writes the samples'
    objects (encoding and uploads, concurrently), then one committer thread upserts the
    batch's rows once all its objects are stored. At most one batch is being written while
    the next is generated; the cancel flag is checked before each batch is started."""
    spec = JobSpec.model_validate(claim.spec)
    with ctx.uow() as uow:
        done = repo.existing_sample_indexes(uow.session, claim.job_id, claim.start, claim.stop)
    todo = [i for i in range(claim.start, claim.stop) if i not in done]
    engine = _engine(ctx, spec) if todo else None
    writers = ThreadPoolExecutor(max_workers=ctx.settings.upload_concurrency, thread_name_prefix="dsgen-put")
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsgen-commit")
    in_flight: Future | None = None
    try:
        for batch in _batches(todo, spec.generation.batch_size):
            with ctx.uow() as uow:  # between batches: still ours? cancelled?
                ours, cancel = heartbeat(uow.session, claim)
            if not ours or lost.is_set():
                return "lost"
            if cancel:
                if in_flight is not None:
                    in_flight.result()  # keep what was done
                with ctx.uow() as uow:
                    finish_shard(uow, ctx.dispatcher, claim, S_CANCELLED)
                return "cancelled"
            writes = [writers.submit(write_sample, ctx, claim, gs) for gs in engine.generate(batch)]
            if in_flight is not None:
                in_flight.result()  # raises what the previous batch's writes raised
            in_flight = committer.submit(_commit, ctx, writes)
        if in_flight is not None:
            in_flight.result()
    finally:
        writers.shutdown(wait=True)
        committer.shutdown(wait=True)
    with ctx.uow() as uow:
        ok = finish_shard(uow, ctx.dispatcher, claim, S_SUCCEEDED)
    return S_SUCCEEDED if ok else "lost"


def _engine(ctx: WorkerContext, spec: JobSpec) -> Any:
    """The engine for a spec; specs that name uploads get the worker's upload cache."""
    from shared.sources import spec_sources

    uses_uploads = any(src.upload for _, src in spec_sources(spec)) or "upload:" in str(spec.labels.filter.segmenter or "")
    uses_uploads = uses_uploads or any(c.startswith("upload:") for c in spec.concepts)
    return ctx.engine_factory(spec, uploads=ctx.uploads()) if uses_uploads else ctx.engine_factory(spec)


def _commit(ctx: WorkerContext, writes: list[Future]) -> None:
    """Rows of one batch, in one statement each, after every object of the batch is stored."""
    samples, annotations = [], []
    for f in writes:
        row, anns = f.result()
        samples.append(row)
        annotations.extend(anns)
    with ctx.uow() as uow:
        repo.upsert_samples(uow.session, samples, annotations)


def write_sample(ctx: WorkerContext, claim: Claim, gs: Any) -> tuple[dict, list[dict]]:
    """Objects first (record.json last), then the row dicts that point at them."""
    rec: SampleRecord = gs.record
    files: dict[str, bytes] = dict(gs.files())
    record_bytes = files.pop("record.json")
    if getattr(gs, "semantic", None) is not None:
        files[keys.OVERLAY_FILE] = overlay_png(gs.image, gs.semantic)
    files["record.json"] = record_bytes

    def key(name: str) -> str:
        return keys.sample_key(claim.job_id, rec.index, claim.shard_size, name)

    for name, data in files.items():
        ctx.store.put(key(name), data)
    now = utcnow()
    row = {
        "job_id": claim.job_id,
        "index": rec.index,
        "shard_index": claim.shard_index,
        "seed": rec.seed,
        "prompt": rec.prompt,
        "negative_prompt": rec.negative_prompt,
        "image_key": key(rec.files.image),
        "semantic_key": key(rec.files.semantic) if rec.files.semantic in files else None,
        "instances_key": key(rec.files.instances) if rec.files.instances in files else None,
        "overlay_key": key(keys.OVERLAY_FILE) if keys.OVERLAY_FILE in files else None,
        "record_key": key("record.json"),
        "quality": rec.quality,
        "lineage": {"model": rec.model.model_dump(mode="json"), "method": rec.method, "parameters": rec.parameters},
        "record": rec.model_dump(mode="json"),
        "attempt": claim.attempt,
        "created_at": now,
        "updated_at": now,
    }
    anns = [
        {
            "job_id": claim.job_id,
            "sample_index": rec.index,
            "instance_id": a.instance_id,
            "category": a.category,
            "category_id": a.category_id,
            "bbox": list(a.bbox),
            "area": a.area,
            "score": a.score,
            "source": a.source,
            "rle": a.rle.model_dump(mode="json") if a.rle else None,
            "polygons": a.polygons,
        }
        for a in rec.annotations
    ]
    return row, anns
