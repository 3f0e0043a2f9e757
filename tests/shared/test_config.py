import pytest

from shared.config import Settings
from shared.dispatch.celery_conf import celery_config
from shared.dispatch.tasks import FINALIZE_TASK, RECONCILE_TASK, SHARD_TASK


def test_settings_read_the_dsgen_prefix(monkeypatch):
    monkeypatch.setenv("DSGEN_SHARD_SIZE", "7")
    monkeypatch.setenv("DSGEN_MODELS", "builtin:tiny-random, org/model")
    monkeypatch.setenv("DSGEN_S3_PUBLIC_ENDPOINT_URL", "http://localhost:9000")
    s = Settings()
    assert s.shard_size == 7
    assert s.models == ["builtin:tiny-random", "org/model"]
    assert s.s3_public_endpoint_url == "http://localhost:9000"


def test_bad_settings_are_refused(monkeypatch):
    monkeypatch.setenv("DSGEN_SHARD_SIZE", "0")
    with pytest.raises(Exception, match="shard_size"):
        Settings()


def test_celery_config_follows_the_service_notes():
    s = Settings(visibility_timeout_s=7200, task_time_limit_s=3600)
    conf = celery_config(s)
    assert conf["task_acks_late"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 7200
    assert conf["visibility_timeout"] == 7200
    assert conf["task_routes"][SHARD_TASK] == {"queue": "gpu"}
    assert conf["task_routes"][FINALIZE_TASK] == {"queue": "cpu"}
    assert conf["task_routes"][RECONCILE_TASK] == {"queue": "cpu"}


def test_visibility_timeout_must_exceed_the_task_time_limit():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        celery_config(Settings(visibility_timeout_s=600, task_time_limit_s=900))
