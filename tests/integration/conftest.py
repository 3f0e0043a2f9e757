"""Fixtures of the integration tests: a real cluster (see cluster_support.py)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helper modules next to this file, whatever the import mode

import os

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from cluster_support import REPO, TIMINGS, Cluster, make_key
from tests.support.services import REDIS_URL, flush_redis, moto_s3_server, postgres_database, s3_env


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("worker-logs")
    with postgres_database() as db_url, moto_s3_server() as s3:
        flush_redis(REDIS_URL)
        env = {**os.environ, **s3_env(s3), **TIMINGS,
               "DSGEN_DATABASE_URL": db_url, "DSGEN_BROKER_URL": REDIS_URL,
               "DSGEN_BEAT_SCHEDULE": str(logs / "beat-schedule"), "DSGEN_SOURCE_CACHE_DIR": str(logs / "sources"),
               "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        c = Cluster(env, logs)
        try:
            c.start_worker("gpu1", "gpu")
            c.start_worker("gpu2", "gpu")
            c.start_worker("cpu1", "cpu", beat=True)
            yield c
        finally:
            c.stop()
            flush_redis(REDIS_URL)


@pytest.fixture(scope="session")
def api(cluster):
    with TestClient(create_app(cluster.settings)) as client:
        yield client


@pytest.fixture(scope="session")
def headers(cluster):
    return make_key(cluster)
