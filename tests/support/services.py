"""Helpers for tests against real servers (used by the test suites' conftest files):
a fresh Postgres database migrated to head, a moto S3 server, a dedicated Redis db.

URLs come from the environment:
  DSGEN_TEST_POSTGRES_URL  admin URL of a server where databases may be created
                           (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
  DSGEN_TEST_REDIS_URL     a Redis db the tests may flush (default redis://127.0.0.1:6379/13)
"""
from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("DSGEN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DSGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (for 'server down' tests)."""
    return free_port()


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def postgres_database(migrate: bool = True) -> Iterator[str]:
    """A new database `dsgen_test_<pid>_<n>` (migrated to head), dropped afterwards."""
    name = f"dsgen_test_{os.getpid()}_{next(_counter)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            from shared.db.migrate import upgrade

            upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def moto_s3_server(bucket: str = "dsgen") -> Iterator[str]:
    """A moto S3 server in its own process (a real HTTP endpoint); yields its URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=90, proc=proc)  # a loaded machine starts it slowly
        url = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield url
    finally:
        stop_process(proc, timeout=5)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def flush_redis(url: str = REDIS_URL) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def s3_env(endpoint: str, bucket: str = "dsgen") -> dict[str, str]:
    return {
        "DSGEN_STORAGE": "s3",
        "DSGEN_S3_ENDPOINT_URL": endpoint,
        "DSGEN_S3_BUCKET": bucket,
        "DSGEN_S3_ACCESS_KEY_ID": "test",
        "DSGEN_S3_SECRET_ACCESS_KEY": "test",
        "DSGEN_S3_REGION": "us-east-1",
    }
