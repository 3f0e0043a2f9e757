"""Service benchmark: end-to-end images/s of a job through the API and 1 or 2 Celery workers
versus the engine alone on the same model, and API latency (p50/p99) of submit and status
under a concurrent load from a second process. Prints one JSON object.

    python bench/service.py [--images 32] [--model builtin:tiny-random] [--requests 200]

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
    from shared.spec import parse_spec
    from worker.engine.session import EngineSession

    session = EngineSession(parse_spec(spec(model, n)))
    list(session.generate([0, 1]))  # warm-up
    started = time.perf_counter()
    for _ in session.generate(range(n)):
        pass
    return n / (time.perf_counter() - started)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--requests", type=int, default=200, help="submit+status pairs of the latency load")
    ap.add_argument("--threads", type=int, default=8, help="concurrent clients of the latency load")
    ap.add_argument("--storage", choices=("s3", "local"), default="s3",
                    help="s3: a moto server on this machine; local: a shared folder")
    args = ap.parse_args()

    from shared import auth
    from shared.client import Client
    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.testing import flush_redis, free_port, moto_s3_server, postgres_database, s3_env, wait_for_port

    result: dict = {"model": args.model, "images": args.images, "cores": os.cpu_count(), "storage": args.storage}
    result["engine_alone_images_per_s"] = round(engine_alone(args.model, args.images), 3)

    logs = Path(tempfile.mkdtemp(prefix="dsgen-bench-"))
    with postgres_database() as db_url, moto_s3_server() as s3:
        flush_redis(REDIS_URL)
        port = free_port()
        storage = s3_env(s3) if args.storage == "s3" else {
            "DSGEN_STORAGE": "local", "DSGEN_LOCAL_STORAGE_DIR": str(logs / "objects"),
            "DSGEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
        env = {**os.environ, **storage, "DSGEN_DATABASE_URL": db_url, "DSGEN_BROKER_URL": REDIS_URL,
               "DSGEN_SHARD_SIZE": str(max(2, args.images // 8)), "DSGEN_MODELS": args.model,
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
            client.close()
        finally:
            bench.stop_all()
            flush_redis(REDIS_URL)
    shutil.rmtree(logs, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
