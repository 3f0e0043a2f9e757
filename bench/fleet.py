"""Simulated fleet: the data plane and finalisation at fleet rates, on this machine. JSON out.

    python bench/fleet.py [--workers 1,2] [--samples-per-worker 512] [--finalize 1000,10000]
                          [--out docs/bench/fleet-after.json]

Everything is real except the diffusion: the API (`dsgen api`), Postgres, Redis, an S3 server
(moto) and N Celery workers (`dsgen worker -Q gpu`) running `builtin:fleet-standin`, a shipped
engine that draws labelled shapes without weights (about 2,000 samples/s on one core), so the
workers produce samples as fast as the data plane takes them and the data plane is what is
measured. A CPU-queue worker runs finalisation.

Data plane (per N): one job of N x samples-per-worker samples submitted over the API; the
rate is samples / (last shard finished - first shard started), from the shards' own
timestamps; "stage_ms_per_sample" sums what the shards logged per stage (threads summed, so
stages overlap: generate = engine + labels, encode = PNGs + overlay, s3_put, db_rows = sample
and annotation rows, db_heartbeat/db_finish = shard bookkeeping); broker = messages per sample.

Finalize (per size): a job is seeded without the broker: its shards run in this process
(`run_shard`, the very code a worker runs, so the objects, rows and whatever else shards
write are the design's own), then `finalize_job` runs in a fresh process, measured for wall
time and peak RSS (ru_maxrss). Sizes from --direct-from (100k) up are seeded directly: the
same shard code, but only the export fragments are stored, not each sample's objects
(finalisation from fragments never reads them; see FragmentsOnly). Formats: all five (coco, yolo, voc, hf, masks) unless
--formats says otherwise.

DSGEN_BENCH_PROFILE=FILE runs the finalize child under cProfile (stats written to FILE);
DSGEN_BENCH_TRACEMALLOC=N traces its Python allocations (peak, and the N largest sites left).

Postgres: DSGEN_TEST_POSTGRES_URL (a fresh database); Redis: DSGEN_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/14, flushed).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REDIS_URL = os.environ.get("DSGEN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
MODEL = "builtin:fleet-standin"
ALL_FORMATS = ["coco", "yolo", "voc", "hf", "masks"]


def job_spec(n: int, formats: list[str], size: int, name: str = "fleet") -> dict:
    return {"name": name, "model": MODEL, "seed": 11, "num_images": n,
            "classes": [{"name": "cat"}, {"name": "dog"}, {"name": "bird"}],
            "prompts": {"templates": ["a photo of a {class} and a {class_2}"]},
            "generation": {"width": size, "height": size, "steps": 1, "batch_size": 8},
            "export": {"formats": formats}}


def base_env(db_url: str, s3_url: str, logs: Path, port: int, shard_size: int) -> dict[str, str]:
    from tests.support.services import s3_env

    return {**os.environ, **s3_env(s3_url), "DSGEN_DATABASE_URL": db_url, "DSGEN_BROKER_URL": REDIS_URL,
            "DSGEN_SHARD_SIZE": str(shard_size), "DSGEN_MODELS": MODEL, "DSGEN_MAX_IMAGES_PER_JOB": "1000000",
            "DSGEN_MAX_ACTIVE_JOBS_PER_TENANT": "100000", "DSGEN_RECONCILE_INTERVAL_S": "5",
            "DSGEN_FINALIZE_TIMEOUT_S": "7200", "DSGEN_BEAT_SCHEDULE": str(logs / "beat"),
            "DSGEN_API_PORT": str(port), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def settings_of(env: dict[str, str]):  # noqa: ANN201
    from shared.config import Settings

    return Settings(**{k[len("DSGEN_"):].lower(): v for k, v in env.items() if k.startswith("DSGEN_")})


# ------------------------------------------------------------------------------ processes
class Procs:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, args: list[str], ready: bytes = b" ready.") -> Path:
        import signal  # noqa: F401 - used by stop

        log = self.logs / f"{name}.log"
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=self.env,
                                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while ready not in log.read_bytes():
            if self.procs[name].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        return log

    def stop(self, name: str) -> None:
        import signal

        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def shard_lines(log: Path, job_id: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"shard finished"' in line and job_id in line:
            try:
                out.append(json.loads(line[line.index("{"):]))
            except ValueError:
                pass
    return out


def shard_span(env: dict[str, str], job_id: str) -> tuple[float, float]:
    """(first shard started, last shard finished) as epoch seconds, from Postgres."""
    from sqlalchemy import create_engine, text

    engine = create_engine(env["DSGEN_DATABASE_URL"])
    with engine.connect() as c:
        lo, hi = c.execute(text("SELECT min(started_at), max(finished_at) FROM shards WHERE job_id = :j"),
                           {"j": job_id}).one()
    engine.dispose()
    return lo.timestamp(), hi.timestamp()


def data_plane(env: dict[str, str], logs: Path, key: str, port: int, workers: list[int], per_worker: int,
               size: int) -> dict:
    from shared.client import Client

    procs = Procs(env, logs)
    out: dict = {}
    try:
        procs.start("api", ["api", "--port", str(port)], ready=b"Uvicorn running")
        procs.start("cpu", ["worker", "--queues", "cpu", "-n", "cpu@%h"])
        client = Client(f"http://127.0.0.1:{port}", key, timeout=60)
        shard_size = int(env["DSGEN_SHARD_SIZE"])
        for n in workers:
            gpu_logs = [procs.start(f"gpu{i}", ["worker", "--queues", "gpu", "-n", f"gpu{i}-{n}@%h"]) for i in range(n)]
            warm = client.submit(job_spec(2 * n * shard_size, ["coco"], size, "warm-up"))
            client.wait(warm["id"], poll_s=0.2, timeout_s=600)
            total = n * per_worker
            started = time.perf_counter()
            job = client.submit(job_spec(total, ["coco"], size))
            done = client.wait(job["id"], poll_s=0.2, timeout_s=1800)
            wall = time.perf_counter() - started
            if done["status"] != "succeeded":
                raise RuntimeError(f"fleet job {done['status']}: {done.get('error')}")
            lo, hi = shard_span(env, job["id"])
            stages: dict[str, float] = defaultdict(float)
            lines = [ln for log in gpu_logs for ln in shard_lines(log, job["id"])]
            for ln in lines:
                for k, v in ln.get("stage_seconds", {}).items():
                    stages[k] += v
            rate = total / (hi - lo)
            out[str(n)] = {
                "samples": total, "shards": done["progress"]["shards"],
                "data_plane_samples_per_s": round(rate, 1),
                "per_worker_samples_per_s": round(rate / n, 1),
                "submit_to_succeeded_s": round(wall, 2),
                "stage_ms_per_sample": {k: round(1000 * v / total, 3) for k, v in sorted(stages.items())},
                "broker_messages_per_sample": round((len(lines) + 1) / total, 4),
                "shard_lines_logged": len(lines),
            }
            for i in range(n):
                procs.stop(f"gpu{i}")
        client.close()
    finally:
        procs.stop_all()
    ones = out.get(str(workers[0]), {}).get("per_worker_samples_per_s")
    if ones:
        for n in workers:
            out[str(n)]["per_worker_vs_first"] = round(out[str(n)]["per_worker_samples_per_s"] / ones, 3)
    return out


# ------------------------------------------------------------------------------- finalize
class FragmentsOnly:
    """Direct seeding: the shard code runs unchanged, but of its objects only the export
    fragments are stored (finalisation from fragments never reads a sample's objects; moto
    takes ~20 ms of this machine's CPU per PUT, so 400k sample PUTs would take hours)."""

    def __init__(self, inner):  # noqa: ANN001
        self.inner = inner

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> None:
        from shared.storage import keys

        if key.endswith("/" + keys.FRAGMENT_FILE):
            self.inner.put(key, data)


class NoFragments(FragmentsOnly):
    """`--single-pass` seeding: every object but the fragments is stored, so finalisation
    exports every shard from its downloaded samples with the single-pass writers: the design
    before fragments (four object GETs per sample, every file written), measured today."""

    def put(self, key: str, data: bytes) -> None:
        from shared.storage import keys

        if not key.endswith("/" + keys.FRAGMENT_FILE):
            self.inner.put(key, data)


def _seed_shards(env: dict[str, str], job_id: str, indexes: list[int], direct: bool | str = False) -> float:
    """Run shards in this process as a worker would (no broker); returns seconds."""
    os.environ.update(env)
    from tests.support.fakes import RecordingDispatcher
    from worker.service.context import build_context
    from worker.service.shards import run_shard

    ctx = build_context(settings_of(env), RecordingDispatcher())
    if direct == "single-pass":
        ctx.store = NoFragments(ctx.store)
    elif direct:
        ctx.store = FragmentsOnly(ctx.store)
    started = time.perf_counter()
    for i in indexes:
        status = run_shard(ctx, uuid.UUID(job_id), i)
        if status != "succeeded":
            raise RuntimeError(f"seeding shard {i}: {status}")
    return time.perf_counter() - started


def seed_job(env: dict[str, str], n: int, formats: list[str], size: int, procs: int,
             direct: bool | str = False) -> tuple[str, float]:
    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.jobs import usecases as jobs
    from shared.tenants import api_keys as auth
    from tests.support.fakes import RecordingDispatcher

    settings = settings_of(env)
    engine = make_engine(settings)
    with UnitOfWork(make_session_factory(engine)) as uow:
        tenant, _ = auth.create_api_key(uow.session, f"seed-{uuid.uuid4().hex[:6]}")
        tenant_id = tenant.id
    with UnitOfWork(make_session_factory(engine)) as uow:
        view, _ = jobs.submit_job(uow, RecordingDispatcher(), settings, tenant_id, job_spec(n, formats, size))
    engine.dispose()
    job_id = str(view.id)
    shards = [s.index for s in view.shard_list]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=procs) as pool:
        list(pool.map(_seed_shards, [env] * procs, [job_id] * procs, [shards[k::procs] for k in range(procs)],
                      [direct] * procs))
    return job_id, time.perf_counter() - started


def finalize_child(job_id: str) -> None:
    """`--finalize-only JOB`: finalize in this fresh process; prints seconds and peak RSS."""
    from tests.support.fakes import RecordingDispatcher
    from worker.service.context import build_context
    from worker.service.finalize import finalize_job

    ctx = build_context(settings_of(dict(os.environ)), RecordingDispatcher())
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trace = int(os.environ.get("DSGEN_BENCH_TRACEMALLOC", "0") or 0)
    if trace:
        import tracemalloc

        tracemalloc.start(8)
    started, cpu_started = time.perf_counter(), time.process_time()
    status = finalize_job(ctx, uuid.UUID(job_id))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    out = {"status": status, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": base_rss / 1024}
    if trace:  # what is still allocated after finalisation, by the line that allocated it
        snapshot = tracemalloc.take_snapshot()
        out["traced_after_mib"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
        out["traced_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        out["top_allocations"] = [f"{st.traceback[0].filename}:{st.traceback[0].lineno} {st.size / 2**20:.2f} MiB x{st.count}"
                                  for st in snapshot.statistics("lineno")[:trace]]
    print(json.dumps(out))


def finalize_run(env: dict[str, str], n: int, formats: list[str], size: int, direct: bool | str = False) -> dict:
    job_id, seed_s = seed_job(env, n, formats, size, procs=2, direct=direct)
    profile = ["-m", "cProfile", "-o", env["DSGEN_BENCH_PROFILE"]] if env.get("DSGEN_BENCH_PROFILE") else []
    proc = subprocess.run([sys.executable, *profile, __file__, "--finalize-only", job_id], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    if child["status"] != "succeeded":
        raise RuntimeError(f"finalize: {child}")
    from sqlalchemy import create_engine, text

    engine = create_engine(env["DSGEN_DATABASE_URL"])
    with engine.connect() as c:
        exports = {f: b for f, b in c.execute(text("SELECT format, size_bytes FROM exports WHERE job_id = :j"),
                                              {"j": job_id})}
    engine.dispose()
    seeding = {"single-pass": "shards, no fragments: finalize runs the single-pass writers over downloaded samples",
               True: "direct (shard code, fragments only stored)", False: "shards (all objects)"}[direct]
    return {"samples": n, "seeding": seeding,
            "seed_s": round(seed_s, 2), "seed_samples_per_s": round(n / seed_s, 1),
            "finalize_s": round(child["seconds"], 2), "finalize_cpu_s": round(child["cpu_seconds"], 2),
            "load_average": [round(x, 2) for x in os.getloadavg()], "finalize_peak_rss_mib": round(child["peak_rss_mib"], 1),
            "rss_before_finalize_mib": round(child["rss_before_mib"], 1), "export_bytes": exports,
            **{k: child[k] for k in ("traced_after_mib", "traced_peak_mib", "top_allocations") if k in child}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2", help="fleet sizes to run (comma-separated; '' for none)")
    ap.add_argument("--samples-per-worker", type=int, default=512)
    ap.add_argument("--finalize", default="1000,10000", help="finalize sizes (comma-separated; '' for none)")
    ap.add_argument("--formats", default=",".join(ALL_FORMATS), help="export formats of the finalize jobs")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--design", default="", help="a label for the JSON (e.g. before / after)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--direct-from", type=int, default=100000,
                    help="finalize sizes from this one up are seeded directly, fragments only (see FragmentsOnly): "
                         "finalize merges the shards' fragments and reads no sample object")
    ap.add_argument("--single-pass", action="store_true",
                    help="store no fragments: measure finalize as the design before fragments (every shard "
                         "exported from its downloaded samples)")
    ap.add_argument("--finalize-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.finalize_only:
        return finalize_child(args.finalize_only)

    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.tenants import api_keys as auth
    from tests.support.services import flush_redis, free_port, moto_s3_server, postgres_database

    workers = [int(w) for w in args.workers.split(",") if w]
    sizes = [int(s) for s in args.finalize.split(",") if s]
    formats = [f for f in args.formats.split(",") if f]
    result: dict = {"design": args.design, "cores": os.cpu_count(), "image_px": args.size,
                    "shard_size": args.shard_size, "model": MODEL, "commit": _commit()}
    logs = Path(tempfile.mkdtemp(prefix="dsgen-fleet-"))
    with postgres_database() as db_url, moto_s3_server() as s3:
        flush_redis(REDIS_URL)
        port = free_port()
        env = base_env(db_url, s3, logs, port, args.shard_size)
        try:
            if workers:
                engine = make_engine(db_url)
                with UnitOfWork(make_session_factory(engine)) as uow:
                    _, key = auth.create_api_key(uow.session, "fleet")
                engine.dispose()
                result["data_plane"] = data_plane(env, logs, key, port, workers, args.samples_per_worker, args.size)
            result["finalize_formats"] = formats
            result["finalize"] = {}
            for n in sizes:  # the JSON so far is kept after each size (a 100k run takes long)
                seeding = "single-pass" if args.single_pass else n >= args.direct_from
                result["finalize"][str(n)] = finalize_run(env, n, formats, args.size, direct=seeding)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=2) + "\n")
        finally:
            flush_redis(REDIS_URL)
    shutil.rmtree(logs, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
