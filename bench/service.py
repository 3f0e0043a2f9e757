"""Service benchmark: end-to-end images/s of a job through the API and 1 or 2 Celery workers
versus the engine alone on the same model, API latency (p50/p99) of submit and status under
a concurrent load from a second process, and open-loop latency of the polling endpoints.
Prints one JSON object.

    python bench/service.py [--images 32] [--model builtin:tiny-random] [--requests 200]
                            [--sections throughput,latency,open_loop] [--rates 50,100,200]

Open loop: requests are started at a fixed rate whatever the answers (as many dashboards
polling would), for status (`GET /v1/jobs/{id}` of a finished 512-sample job), list
(`GET /v1/jobs?limit=50`) and samples (`GET /v1/jobs/{id}/samples?limit=50`), each alone at
each rate, first with the workers idle, then while two stand-in workers run a job. p50/p99
are over the answered requests; refused (503 + Retry-After) and timed-out ones are counted.

Runs against this machine's Postgres and Redis (DSGEN_TEST_POSTGRES_URL, DSGEN_BENCH_REDIS_URL,
default redis://127.0.0.1:6379/14, flushed) and a moto S3 server it starts. Each worker and the
engine-alone run use one thread (OMP_NUM_THREADS=1); workers are pinned to their own core
when `taskset` exists, so "2 workers" means two cores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REDIS_URL = os.environ.get("DSGEN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _extras(model: str) -> dict:
    """The builtin model's dsgen.json (its demo prompts and generation defaults), if any."""
    if not model.startswith("builtin:"):
        return {}
    path = REPO / "worker" / "engine" / "builtin" / model.split(":", 1)[1] / "dsgen.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def spec(model: str, n: int, name: str = "bench") -> dict:
    extras = _extras(model)
    gen = {"width": 32, "height": 32, "steps": 2, "batch_size": 2}
    if extras.get("demo_templates"):  # a real builtin model: its own prompts, settings and batch
        gen = {**extras.get("default_generation", {}), "batch_size": 8}
    out = {"name": name, "model": model, "classes": [{"name": c} for c in extras.get("demo_classes", ["cat", "dog"])],
           "num_images": n, "generation": gen, "export": {"formats": ["coco"]}}
    if extras.get("demo_templates"):
        out["prompts"] = {"templates": extras["demo_templates"], "slots": extras.get("demo_slots", {})}
        out["labels"] = {"tau": extras.get("recommended_labels", {}).get("tau", 4)}
    return out


def engine_alone(model: str, n: int) -> float:
    import torch

    torch.set_num_threads(1)
    from shared.formats.spec import parse_spec
    from worker.engine.session import EngineSession

    session = EngineSession(parse_spec(spec(model, n)))
    list(session.generate([0, 1]))  # warm-up
    started = time.perf_counter()
    for _ in session.generate(range(n)):
        pass
    return n / (time.perf_counter() - started)


def open_loop_process(server: str, key: str, paths: dict[str, str], rates: list[int], seconds: float,
                      out) -> None:  # noqa: ANN001 - a multiprocessing queue
    import asyncio

    import httpx

    async def one(client: httpx.AsyncClient, path: str, lat: list[float], counts: dict[str, int]) -> None:
        started = time.perf_counter()
        try:
            r = await client.get(path)
        except httpx.HTTPError:
            counts["errors"] += 1
            return
        if r.status_code == 503:
            counts["refused"] += 1
        elif r.status_code == 200:
            lat.append(time.perf_counter() - started)
        else:
            counts["errors"] += 1

    async def run() -> dict:
        result: dict = {}
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=10,
                                     limits=limits) as client:
            for _ in range(20):  # warm connections and caches
                await client.get(next(iter(paths.values())))
            for kind, path in paths.items():
                for rate in rates:
                    lat: list[float] = []
                    counts = {"refused": 0, "errors": 0}
                    tasks = []
                    t0 = time.perf_counter()
                    for i in range(int(rate * seconds)):
                        delay = t0 + i / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        tasks.append(asyncio.create_task(one(client, path, lat, counts)))
                    await asyncio.gather(*tasks)
                    sent = len(tasks)
                    result.setdefault(kind, {})[str(rate)] = {
                        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
                        "p99_ms": round(1000 * percentile(lat, 0.99), 2) if lat else None,
                        "sent": sent, "ok": len(lat), **counts,
                        "achieved_rps": round(sent / (time.perf_counter() - t0), 1),
                    }
                    await asyncio.sleep(0.5)
        return result

    out.put(asyncio.run(run()))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def load_process(server: str, key: str, model: str, requests: int, threads: int, out: mp.Queue) -> None:
    import httpx

    lat: dict[str, list[float]] = {"submit": [], "status": []}
    lock = threading.Lock()

    def run() -> None:
        with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            for _ in range(requests // threads):
                t = time.perf_counter()
                r = c.post("/v1/jobs", json=spec(model, 2, "load"))
                d1 = time.perf_counter() - t
                r.raise_for_status()
                t = time.perf_counter()
                c.get(f"/v1/jobs/{r.json()['id']}").raise_for_status()
                d2 = time.perf_counter() - t
                with lock:
                    lat["submit"].append(d1)
                    lat["status"].append(d2)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    [w.start() for w in workers]
    [w.join() for w in workers]
    out.put(lat)


class Bench:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, {}
        self.cores = os.cpu_count() or 1

    def start(self, name: str, args: list[str], core: int | None = None, ready: bytes = b" ready.") -> None:
        log = self.logs / f"{name}.log"
        cmd = [sys.executable, "-m", "worker.cli", *args]
        if core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(core % self.cores), *cmd]
        self.procs[name] = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log.open("ab"),
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while ready not in log.read_bytes():
            if self.procs[name].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def run_job(client, body: dict) -> float:
    started = time.perf_counter()
    job = client.submit(body)
    done = client.wait(job["id"], poll_s=0.1, timeout_s=600)
    if done["status"] != "succeeded":
        raise RuntimeError(f"bench job {done['status']}: {done.get('error')}")
    return time.perf_counter() - started


STANDIN = "builtin:fleet-standin"


def standin_spec(n: int, name: str) -> dict:
    return {"name": name, "model": STANDIN, "num_images": n, "classes": [{"name": "cat"}, {"name": "dog"}],
            "generation": {"width": 64, "height": 64, "steps": 1, "batch_size": 8}, "export": {"formats": ["coco"]}}


def open_loop(bench: Bench, client, port: int, key: str, rates: list[int], seconds: float,  # noqa: ANN001
              states: tuple[str, ...] = ("idle", "busy"), kinds: tuple[str, ...] = ("status", "list", "samples")) -> dict:
    """Open-loop latency of status, list and samples; workers idle, then busy."""
    for i in range(2):
        bench.start(f"gpu{i}", ["worker", "--queues", "gpu", "-n", f"ol{i}@%h"], core=i)
    polled = client.submit(standin_spec(512, "polled"))
    client.wait(polled["id"], poll_s=0.5, timeout_s=900)
    small = [client.submit(standin_spec(8, f"small-{i}")) for i in range(30)]  # a page of jobs to list
    for job in small:  # "idle" means idle: every job (and its finalisation) is done before measuring
        client.wait(job["id"], poll_s=0.5, timeout_s=900)
    time.sleep(2)
    paths = {"status": f"/v1/jobs/{polled['id']}", "list": "/v1/jobs?limit=50",
             "samples": f"/v1/jobs/{polled['id']}/samples?limit=50"}
    paths = {kind: path for kind, path in paths.items() if kind in kinds}
    out: dict = {"job_samples": 512, "seconds_per_point": seconds}
    ctx = mp.get_context("spawn")
    for state in states:
        busy = client.submit(standin_spec(8000, "busy")) if state == "busy" else None
        if busy:
            time.sleep(3)
        queue = ctx.Queue()
        proc = ctx.Process(target=open_loop_process,
                           args=(f"http://127.0.0.1:{port}", key, paths, rates, seconds, queue))
        proc.start()
        out[f"workers_{state}"] = queue.get(timeout=1800)
        proc.join()
        if busy:
            client.cancel(busy["id"])
    for i in range(2):
        bench.stop(f"gpu{i}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--requests", type=int, default=200, help="submit+status pairs of the latency load")
    ap.add_argument("--threads", type=int, default=8, help="concurrent clients of the latency load")
    ap.add_argument("--storage", choices=("s3", "local"), default="s3",
                    help="s3: a moto server on this machine; local: a shared folder")
    ap.add_argument("--sections", default="throughput,latency,open_loop")
    ap.add_argument("--rates", default="50,100,200", help="open-loop request rates (req/s)")
    ap.add_argument("--seconds", type=float, default=4.0, help="open-loop seconds per kind and rate")
    ap.add_argument("--states", default="idle,busy", help="open-loop worker states to measure (idle, busy)")
    ap.add_argument("--kinds", default="status,list,samples", help="open-loop endpoints to measure")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    from shared.client import Client
    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.tenants import api_keys as auth
    from tests.support.services import flush_redis, free_port, moto_s3_server, postgres_database, s3_env, wait_for_port

    result: dict = {"model": args.model, "images": args.images, "cores": os.cpu_count(), "storage": args.storage}
    if "throughput" in sections:
        result["engine_alone_images_per_s"] = round(engine_alone(args.model, args.images), 3)

    logs = Path(tempfile.mkdtemp(prefix="dsgen-bench-"))
    with postgres_database() as db_url, moto_s3_server() as s3:
        flush_redis(REDIS_URL)
        port = free_port()
        storage = s3_env(s3) if args.storage == "s3" else {
            "DSGEN_STORAGE": "local", "DSGEN_LOCAL_STORAGE_DIR": str(logs / "objects"),
            "DSGEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
        env = {**os.environ, **storage, "DSGEN_DATABASE_URL": db_url, "DSGEN_BROKER_URL": REDIS_URL,
               "DSGEN_SHARD_SIZE": str(max(2, args.images // 8)), "DSGEN_MODELS": f"{args.model},{STANDIN}",
               "DSGEN_MAX_ACTIVE_JOBS_PER_TENANT": "100000", "DSGEN_RECONCILE_INTERVAL_S": "5",
               "DSGEN_BEAT_SCHEDULE": str(logs / "beat"), "DSGEN_API_PORT": str(port),
               "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        engine = make_engine(db_url)
        with UnitOfWork(make_session_factory(engine)) as uow:
            _, key = auth.create_api_key(uow.session, "bench")
        engine.dispose()
        bench = Bench(env, logs)
        try:
            bench.start("api", ["api", "--port", str(port)], ready=b"Uvicorn running")
            wait_for_port(port)
            bench.start("cpu", ["worker", "--queues", "cpu", "--beat", "-n", "cpu@%h"])
            client = Client(f"http://127.0.0.1:{port}", key, timeout=60)
            if "throughput" in sections:
                for n_workers in (1, 2):
                    for i in range(n_workers):
                        bench.start(f"gpu{i}", ["worker", "--queues", "gpu", "-n", f"gpu{i}@%h"], core=i)
                    run_job(client, spec(args.model, 2 * n_workers * int(env["DSGEN_SHARD_SIZE"]), "warmup"))
                    seconds = run_job(client, spec(args.model, args.images))
                    result[f"workers_{n_workers}_images_per_s"] = round(args.images / seconds, 3)
                    for i in range(n_workers):
                        bench.stop(f"gpu{i}")
                e, w1, w2 = (result["engine_alone_images_per_s"], result["workers_1_images_per_s"],
                             result["workers_2_images_per_s"])
                result["ratio_1_worker_vs_engine"] = round(w1 / e, 3)
                result["ratio_2_workers_vs_1"] = round(w2 / w1, 3)
                result["targets"] = {"1 worker >= 0.9x engine": w1 >= 0.9 * e, "2 workers >= 1.7x one": w2 >= 1.7 * w1}

            if "latency" in sections:
                queue: mp.Queue = mp.get_context("spawn").Queue()
                load = mp.get_context("spawn").Process(
                    target=load_process, args=(f"http://127.0.0.1:{port}", key, args.model, args.requests, args.threads, queue))
                load.start()
                lat = queue.get(timeout=600)
                load.join()
                result["api_latency_ms"] = {
                    kind: {"p50": round(1000 * statistics.median(v), 2), "p99": round(1000 * percentile(v, 0.99), 2),
                           "n": len(v)}
                    for kind, v in lat.items()
                }
                result["api_latency_ms"]["concurrency"] = args.threads
            if "open_loop" in sections:
                result["open_loop"] = open_loop(bench, client, port, key, [int(r) for r in args.rates.split(",")],
                                                args.seconds, tuple(x for x in args.states.split(",") if x),
                                                tuple(x for x in args.kinds.split(",") if x))
            client.close()
        finally:
            bench.stop_all()
            flush_redis(REDIS_URL)
    shutil.rmtree(logs, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
