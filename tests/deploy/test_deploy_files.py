"""No Docker engine here: parse the deployment files and check them against the code."""
import re
from pathlib import Path

import pytest
import yaml

from shared.config import Settings

REPO = Path(__file__).resolve().parents[2]
DSGEN_SERVICES = ("migrate", "api", "worker-gpu", "worker-cpu")
# what a distributed deployment must set (the defaults are for a developer machine)
REQUIRED_ENV = {"DSGEN_DATABASE_URL", "DSGEN_BROKER_URL", "DSGEN_STORAGE", "DSGEN_S3_BUCKET", "DSGEN_S3_ENDPOINT_URL",
                "DSGEN_S3_PUBLIC_ENDPOINT_URL", "DSGEN_S3_ACCESS_KEY_ID", "DSGEN_S3_SECRET_ACCESS_KEY", "DSGEN_MODELS"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_service_is_there(compose):
    assert set(compose["services"]) == {"postgres", "redis", "minio", "createbucket", *DSGEN_SERVICES}


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "api", "worker-gpu", "worker-cpu"):
        assert services[name]["healthcheck"]["test"], name
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    for name in ("createbucket", "migrate"):
        assert services[name]["restart"] == "no"
    assert "--ignore-existing" in " ".join(services["createbucket"]["command"])


def test_start_order_uses_health_and_completion_conditions(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker-gpu", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == deps["createbucket"]["condition"] == "service_completed_successfully"


def test_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared
    assert {"pgdata", "redisdata", "miniodata"} <= declared


def test_redis_never_evicts_and_gpu_worker_reserves_a_gpu(compose):
    services = compose["services"]
    cmd = services["redis"]["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    gpu_cmd = services["worker-gpu"]["command"]
    assert gpu_cmd[gpu_cmd.index("--queues") + 1] == "gpu" and gpu_cmd[gpu_cmd.index("--concurrency") + 1] == "1"
    cpu_cmd = services["worker-cpu"]["command"]
    assert cpu_cmd[cpu_cmd.index("--queues") + 1] == "cpu" and "--beat" in cpu_cmd


def test_environment_matches_the_settings(compose):
    fields = {f"DSGEN_{name.upper()}" for name in Settings.model_fields}
    for name in DSGEN_SERVICES:
        env = compose["services"][name]["environment"]
        names = set(env)
        assert REQUIRED_ENV <= names, (name, REQUIRED_ENV - names)
        unknown = {n for n in names if n.startswith("DSGEN_")} - fields
        assert not unknown, f"{name}: variables no setting reads: {unknown}"
        assert env["DSGEN_STORAGE"] == "s3"
        # the values parse as settings (defaults of ${VAR:-default} substituted)
        values = {k[len("DSGEN_"):].lower(): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()
                  if k.startswith("DSGEN_")}
        s = Settings(**values)
        assert s.database_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in s.database_url
        assert s.s3_endpoint_url == "http://minio:9000" and s.s3_public_endpoint_url != s.s3_endpoint_url


def test_dockerfiles(compose):
    api = (REPO / "Dockerfile.api").read_text()
    worker = (REPO / "Dockerfile.worker").read_text()
    assert not re.search(r"pip install[^\n&]*torch", api) and "[worker]" not in api and '".[api]"' in api
    assert re.search(r"^FROM python:\S+", api, re.M)
    assert re.search(r"^FROM nvidia/cuda:\S+", worker, re.M) and '".[worker]"' in worker
    for text in (api, worker):
        assert "COPY migrations" in text
    for name in DSGEN_SERVICES:
        dockerfile = compose["services"][name]["build"]["dockerfile"]
        assert (REPO / dockerfile).is_file()
        assert dockerfile == ("Dockerfile.worker" if name.startswith("worker") else "Dockerfile.api")
