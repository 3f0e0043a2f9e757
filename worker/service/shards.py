"""One shard: claim it, generate its missing samples batch by batch, write objects then rows,
heartbeat, stop on cancel, and finish with compare-and-set (the last shard sends finalize)."""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from shared.db.models import S_CANCELLED, S_FAILED, S_SUCCEEDED, utcnow
from shared.engine import Engine, Sample, sample_files, write_sample_files
from shared.errors import ServiceUnavailable
from shared.formats import layout
from shared.formats.overlay import overlay_png
from shared.formats.records import SampleRecord
from shared.formats.spec import JobSpec, SpecError
from shared.jobs import repository as jobs_repo
from shared.jobs.lifecycle import Claim, attempt_is_current, claim_shard, finish_shard, heartbeat, release_claim, shard_error
from shared.storage import keys
from worker.service.context import Ticker, WorkerContext

log = logging.getLogger(__name__)


class StageTimes:
    """Seconds spent per stage of a shard (summed over threads), logged when it ends: where
    the data plane's time goes (engine and labels, encoding, object store, database)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):  # noqa: ANN201
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - started

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 4) for k, v in sorted(self.seconds.items())}


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
    except ServiceUnavailable as err:
        # A database/store blip: give the shard back unspent (if the database answers) and let
        # the task be retried with backoff, instead of spending an attempt or losing the message.
        log.warning("shard %s/%s: %s; the task is retried", job_id, shard_index, err.message)
        try:
            with ctx.uow() as uow:
                release_claim(uow, claim, err.message[:2000])
        except ServiceUnavailable:
            pass  # still down: the heartbeat goes stale and the claim is taken over
        raise
    except Exception as err:  # noqa: BLE001 - recorded on the shard, the attempt cap decides
        message = f"{type(err).__name__}: {err}"[:2000]
        if is_deterministic(err):  # the same spec fails the same way: a retry only delays the answer
            log.warning("shard %s/%s failed (not retried): %s", job_id, shard_index, message)
            with ctx.uow() as uow:
                return "failed" if finish_shard(uow, ctx.dispatcher, claim, S_FAILED, message) else "lost"
        log.exception("shard %s/%s attempt %s failed", job_id, shard_index, claim.attempt)
        with ctx.uow() as uow:
            return shard_error(uow, ctx.dispatcher, claim, message, s.max_attempts)


def is_deterministic(err: BaseException) -> bool:
    """Errors that a retry gives again: the spec cannot run on this model (SpecError: unknown
    words, resolutions, adaptor, sources) or an error marked `retryable = False`."""
    return isinstance(err, SpecError) or getattr(err, "retryable", True) is False


def _batches(indexes: list[int], batch_size: int) -> list[list[int]]:
    return [list(g) for _, g in itertools.groupby(indexes, key=lambda i: i // batch_size)]


def _generate(ctx: WorkerContext, claim: Claim, lost: threading.Event) -> str:
    """Generation of batch k+1 overlaps with the writes of batch k: a pool writes the samples'
    objects (encoding and uploads, concurrently), then one committer thread upserts the
    batch's rows once all its objects are stored. At most one batch is being written while
    the next is generated; the cancel flag is checked before each batch is started."""
    spec = JobSpec.model_validate(claim.spec)
    with ctx.uow() as uow:
        done = jobs_repo.existing_sample_indexes(uow.session, claim.job_id, claim.start, claim.stop)
    todo = [i for i in range(claim.start, claim.stop) if i not in done]
    times = StageTimes()
    with times.stage("engine_load"):
        engine = _engine(ctx, spec, claim.job_id) if todo else None
    with tempfile.TemporaryDirectory(prefix="dsgen-shard-") as local:
        outcome = _generate_into(ctx, claim, lost, spec, engine, todo, times, Path(local))
        if outcome is not None:
            return outcome
        with times.stage("fragment"):  # the shard's own exports, merged by finalisation
            write_fragment(ctx, claim, spec, Path(local), done)
    with times.stage("db_finish"), ctx.uow() as uow:
        ok = finish_shard(uow, ctx.dispatcher, claim, S_SUCCEEDED)
    log.info("shard finished", extra={"samples": len(todo), "stage_seconds": times.as_dict()})
    return S_SUCCEEDED if ok else "lost"


def write_fragment(ctx: WorkerContext, claim: Claim, spec: JobSpec, local: Path, reused: set[int]) -> None:
    """Export this shard's samples with the single-pass writers and store the result as the
    shard's fragment. Samples an earlier attempt made are fetched back first (only those)."""
    from shared.formats.export.fragments import pack_fragment

    fetch_samples(ctx, claim.job_id, claim.shard_size, sorted(reused), local)
    records = [SampleRecord.model_validate_json(layout.record_path(local, i).read_bytes())
               for i in range(claim.start, claim.stop)]
    ctx.exporter(local, spec, records)
    ctx.store.put(keys.fragment_key(claim.job_id, claim.shard_index), pack_fragment(local))


def fetch_samples(ctx: WorkerContext, job_id: uuid.UUID, shard_size: int, indexes: list[int], local: Path) -> list[SampleRecord]:
    """Stored samples back into `local` in the dataset layout (what the writers read)."""
    records = []
    for index in indexes:
        folder = layout.sample_dir(local, index)
        folder.mkdir(parents=True, exist_ok=True)
        record_bytes = ctx.store.get(keys.sample_key(job_id, index, shard_size, layout.RECORD_FILE))
        record = SampleRecord.model_validate_json(record_bytes)
        for name in (record.files.image, record.files.semantic, record.files.instances):
            if name:
                (folder / name).write_bytes(ctx.store.get(keys.sample_key(job_id, index, shard_size, name)))
        (folder / layout.RECORD_FILE).write_bytes(record_bytes)
        records.append(record)
    return records


def _generate_into(ctx: WorkerContext, claim: Claim, lost: threading.Event, spec: JobSpec, engine: Engine | None,
                   todo: list[int], times: "StageTimes", local: Path) -> str | None:
    """The batches; None when all were written, else why it stopped (lost, cancelled)."""
    writers = ThreadPoolExecutor(max_workers=ctx.settings.upload_concurrency, thread_name_prefix="dsgen-put")
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsgen-commit")
    in_flight: Future | None = None
    try:
        for batch in _batches(todo, spec.generation.batch_size):
            with times.stage("db_heartbeat"), ctx.uow() as uow:  # between batches: still ours? cancelled?
                ours, cancel = heartbeat(uow.session, claim)
            if not ours or lost.is_set():
                return "lost"
            if cancel:
                if in_flight is not None and not in_flight.result():  # keep what was done
                    return "lost"
                with ctx.uow() as uow:
                    finish_shard(uow, ctx.dispatcher, claim, S_CANCELLED)
                return "cancelled"
            with times.stage("generate"):  # engine and labels
                generated = list(engine.generate(batch))
            writes = [writers.submit(write_sample, ctx, claim, gs, times, local) for gs in generated]
            if in_flight is not None and not in_flight.result():  # raises what the previous batch raised
                return "lost"
            in_flight = committer.submit(_commit, ctx, claim, writes, times)
        if in_flight is not None and not in_flight.result():
            return "lost"
    finally:
        writers.shutdown(wait=True)
        committer.shutdown(wait=True)
    return None


def _engine(ctx: WorkerContext, spec: JobSpec, job_id: uuid.UUID | None = None) -> Engine:
    """The engine for a spec; specs that name uploads get the worker's upload cache, specs that
    name a dataset version get the dataset cache of the job's own tenant."""
    from shared.sources.archives import spec_sources

    uses_uploads = (any(src.upload for _, src in spec_sources(spec)) or "upload:" in str(spec.labels.filter.segmenter or "")
                    or (spec.image2image is not None and spec.image2image.upload is not None)
                    or (spec.mask2image is not None and "upload:" in str(spec.mask2image.resample and spec.mask2image.resample.segmenter)))
    uses_uploads = uses_uploads or any(c.startswith("upload:") for c in spec.concepts)
    uses_uploads = uses_uploads or (spec.mask2image is not None and str(spec.mask2image.controlnet or "").startswith("upload:"))
    kwargs: dict[str, object] = {"uploads": ctx.uploads()} if uses_uploads else {}
    names_dataset = any(src.dataset for _, src in spec_sources(spec)) or (
        spec.image2image is not None and spec.image2image.dataset is not None)
    if job_id is not None and names_dataset:
        with ctx.uow() as uow:
            job = jobs_repo.get_job(uow.session, job_id)
            tenant_id = job.tenant_id if job is not None else None
        if tenant_id is not None:
            kwargs["datasets"] = ctx.datasets(tenant_id)
    return ctx.engine_factory(spec, **kwargs)


def _commit(ctx: WorkerContext, claim: Claim, writes: list[Future], times: StageTimes) -> bool:
    """Rows of one batch, in one statement each, after every object of the batch is stored.
    Fenced by attempt: an attempt that was superseded (its heartbeat timed out and another
    worker claimed the shard) writes nothing; False tells it to stop."""
    samples, annotations = [], []
    for f in writes:
        row, anns = f.result()
        samples.append(row)
        annotations.extend(anns)
    with times.stage("db_rows"), ctx.uow() as uow:
        if not attempt_is_current(uow.session, claim):
            return False
        jobs_repo.commit_batch(uow.session, (claim.job_id, claim.shard_index, claim.start, claim.stop), samples, annotations)
    return True


def write_sample(ctx: WorkerContext, claim: Claim, gs: Sample, times: StageTimes | None = None,
                 local: Path | None = None) -> tuple[dict, list[dict]]:
    """Objects first (record.json last), then the row dicts that point at them. With `local`,
    the sample's files are also kept there (the shard's export fragment is made from them)."""
    times = times or StageTimes()
    rec: SampleRecord = gs.record
    with times.stage("encode"):
        overlay = {keys.OVERLAY_FILE: overlay_png(gs.image, gs.semantic)} if gs.semantic is not None else {}
        files = sample_files(gs, overlay)

    def key(name: str) -> str:
        return keys.sample_key(claim.job_id, rec.index, claim.shard_size, name)

    with times.stage("s3_put"):
        for name, data in files.items():
            ctx.store.put(key(name), data)
    if local is not None:  # the scratch folder of this task: no fsync
        write_sample_files(layout.sample_dir(local, rec.index),
                           {n: d for n, d in files.items() if n != keys.OVERLAY_FILE}, durable=False)
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
