"""Service configuration, read from the environment (prefix `DSGEN_`).

One `Settings` object is built by each process's factory (API app, Celery app, CLI command)
and passed down; nothing here connects to anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from shared.formats.model_meta import builtin_adaptor_ids, builtin_model_ids


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSGEN_", extra="ignore")

    # --- servers -------------------------------------------------------------------------
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/dsgen",
        description="SQLAlchemy URL (postgresql+psycopg://... or sqlite:///path.db)",
    )
    database_connect_timeout_s: int = Field(default=3, ge=1)
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    broker_connect_timeout_s: float = Field(default=2.0, gt=0)

    # --- object store --------------------------------------------------------------------
    storage: Literal["s3", "local"] = "s3"
    s3_bucket: str = "dsgen"
    s3_endpoint_url: str | None = Field(default=None, description="e.g. http://minio:9000 (None: AWS)")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="endpoint that clients reach; presigned URLs are signed for it"
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "path"
    local_storage_dir: Path = Path("./dsgen-data/objects")
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="base URL of the API, for local-store download links"
    )
    signing_secret: str = Field(default="change-me", description="HMAC secret for local-store download links")
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # --- queue and shards ----------------------------------------------------------------
    shard_size: int = Field(default=64, ge=1, description="samples per shard (one task each)")
    max_attempts: int = Field(default=3, ge=1, description="attempts per shard before it fails")
    upload_concurrency: int = Field(default=8, ge=1, le=64, description="parallel object writes per worker")
    visibility_timeout_s: int = Field(default=4 * 3600, ge=60)
    task_soft_time_limit_s: int = Field(default=3000, ge=1)
    task_time_limit_s: int = Field(default=3600, ge=1)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_timeout_s: float = Field(default=120.0, gt=0, description="a running shard is stale after this")
    requeue_grace_s: float = Field(default=60.0, ge=0, description="a queued shard missing from the broker for this long is re-sent")
    finalize_timeout_s: float = Field(default=1800.0, gt=0)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    schedule_tick_s: float = Field(default=15.0, gt=0, description="how often the scheduler looks for due schedules")
    schedule_grace_s: float = Field(
        default=120.0, ge=0,
        description="a firing later than this is 'missed' (the schedule's policy: skip it, or catch up once)",
    )
    log_format: Literal["json", "text"] = Field(default="json", description="service processes' log lines")
    beat_schedule: Path = Field(default=Path("/tmp/dsgen-beat-schedule"), description="Celery beat's state file")

    # --- API -----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=builtin_model_ids,
        description="model ids jobs may use (comma-separated in the environment; default or empty: "
        "every builtin model of this installation)",
    )
    adaptors: Annotated[list[str], NoDecode] = Field(
        default_factory=builtin_adaptor_ids,
        description="detection adaptors jobs may name in labels.adaptor (default or empty: the builtin ones)",
    )
    embedded_tenant: str | None = Field(
        default=None, description="embedded mode: requests without a key act as this tenant"
    )
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    api_key_cache_s: float = Field(default=10.0, ge=0, description="how long the API trusts a looked-up key (0: never)")
    api_status_cache_s: float = Field(
        default=1.0, ge=0, le=60,
        description="a job's serialised status is sent again while its rows are unchanged (checked by one small "
        "query per poll); a running job's rate/ETA are reused for at most this long (0: no cache)")
    api_max_in_flight: int = Field(
        default=64, ge=1,
        description="requests one API process serves at once; past that it answers 503 + Retry-After at once "
        "instead of queueing without bound",
    )
    api_retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 503 from the limiter")

    # --- prompts.source llm: the one language model this server's jobs may use -----------
    llm_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1) for prompts.source llm")
    llm_model: str | None = Field(default=None, description="the served model's name (when a spec names none)")
    llm_api_key: str | None = Field(default=None, description="bearer token for the endpoint, if it needs one")
    llm_timeout_s: float = Field(default=60.0, gt=0, description="per request")
    llm_max_prompts: int = Field(default=200, ge=1, description="most prompts one job may ask the endpoint for")

    # --- limits (422 / 429) --------------------------------------------------------------
    max_images_per_job: int = Field(default=100_000, ge=1)
    max_resolution: int = Field(default=1024, ge=8)
    max_steps: int = Field(default=100, ge=1)
    max_prompt_length: int = Field(default=500, ge=1)
    max_classes: int = Field(default=100, ge=1)
    max_active_jobs_per_tenant: int = Field(default=10, ge=1, description="queued + running jobs per tenant")
    max_source_bytes: int = Field(default=256 << 20, ge=1024, description="largest source archive (POST /v1/sources)")
    max_source_unpacked_bytes: int = Field(default=2 << 30, ge=1024, description="largest unpacked size of a source archive")
    max_source_files: int = Field(default=50_000, ge=1, description="most files in a source archive")
    max_source_ratio: float = Field(default=200.0, gt=1.0, description="largest unpacked/packed ratio (archive bombs)")
    source_cache_dir: Path = Field(default=Path("./dsgen-data/sources"), description="workers extract uploads here")

    @model_validator(mode="before")
    @classmethod
    def _split_models(cls, data):
        if isinstance(data, dict):
            for name, default in (("models", builtin_model_ids), ("adaptors", builtin_adaptor_ids)):
                value = data.get(name)
                if isinstance(value, str):
                    value = [m.strip() for m in value.split(",") if m.strip()]
                if value is not None and not value:  # DSGEN_MODELS="" (compose's default): the builtin ones
                    value = default()
                if value is not None:
                    data = {**data, name: value}
        return data

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
