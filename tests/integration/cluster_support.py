"""Helpers of the integration tests. The cluster (started in conftest.py): Postgres (fresh
database), Redis (a dedicated db, flushed), a moto S3 server, two GPU-queue Celery worker processes and one CPU-queue worker
running the reconciler beat, all started as `dsgen worker` subprocesses with short
heartbeat/reconcile timings. The API runs in-process (TestClient) with the real Celery
publisher, so jobs travel API -> Postgres -> Redis -> worker processes -> S3."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.tenants import api_keys as auth

REPO = Path(__file__).resolve().parents[2]

TIMINGS = {
    "DSGEN_SHARD_SIZE": "4",
    "DSGEN_MAX_ATTEMPTS": "3",
    "DSGEN_HEARTBEAT_INTERVAL_S": "0.5",
    "DSGEN_HEARTBEAT_TIMEOUT_S": "4",
    "DSGEN_REQUEUE_GRACE_S": "2",
    "DSGEN_RECONCILE_INTERVAL_S": "1",
    "DSGEN_FINALIZE_TIMEOUT_S": "120",
    "DSGEN_VISIBILITY_TIMEOUT_S": "7200",
}

SPEC = {"name": "cats-dogs", "model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog"}],
        "num_images": 8, "seed": 7, "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
        "export": {"formats": ["coco", "yolo"]}}


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.settings = Settings(**{k[len("DSGEN_"):].lower(): v for k, v in env.items() if k.startswith("DSGEN_")})
        self.engine = make_engine(self.settings)
        self.session_factory = make_session_factory(self.engine)

    def start_worker(self, name: str, queues: str, beat: bool = False) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        cmd = [sys.executable, "-m", "worker.cli", "worker", "--queues", queues, "-c", "1",
               "--hostname", f"{name}@%h", "--loglevel", "info"] + (["--beat"] if beat else [])
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: kill -9 takes parent and child
        self.procs[name] = proc
        deadline = time.time() + 60
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def worker_pids(self, name: str) -> set[int]:
        """The worker's process group (its Celery parent and prefork child)."""
        pgid = self.procs[name].pid
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.engine.dispose()

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)

    def log_tail(self, n: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted(self.logs.glob("*.log")))


def make_key(cluster: Cluster) -> dict[str, str]:
    with cluster.uow() as uow:
        _, key = auth.create_api_key(uow.session, f"tenant-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


def wait_for(api, headers, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = 150,
             cluster: Cluster | None = None) -> dict:
    deadline = time.time() + timeout
    while True:
        job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in states:
            return job
        if time.time() > deadline:
            raise AssertionError(f"job still {job['status']}: {job['progress']}\n{cluster.log_tail() if cluster else ''}")
        time.sleep(0.2)
