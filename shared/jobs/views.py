"""What the API returns about jobs, their samples and exports (pydantic; also the OpenAPI schema)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, Field


class ShardView(BaseModel):
    index: int
    start: int
    stop: int
    status: str
    attempts: int
    done: int
    worker: str | None = None
    error: str | None = None


class Progress(BaseModel):
    done: int = Field(description="samples written")
    total: int
    fraction: float
    shards: dict[str, int] = Field(description="number of shards per state")
    images_per_s: float | None = None
    eta_s: float | None = None


class JobSummary(BaseModel):
    id: uuid.UUID
    name: str
    status: str
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    num_images: int
    error: str | None = None
    dataset: str | None = Field(default=None, description="the named dataset this job makes a version of")


class JobView(JobSummary):
    progress: Progress
    shard_list: list[ShardView] = Field(default_factory=list)
    spec: dict[str, Any]
    cancel_requested: bool = False
    version: int | None = Field(default=None, description="its dataset version, once it succeeded")
    class_colours: dict[str, str] = Field(default_factory=dict, description="class -> colour in the mask overlay")


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = None


class AnnotationView(BaseModel):
    instance_id: int
    category: str
    category_id: int
    bbox: list[float]
    area: float
    score: float
    source: str
    colour: str | None = Field(default=None, description="the class colour of the mask overlay (#rrggbb)")


class SampleUrls(BaseModel):
    image: str
    semantic: str | None = None
    instances: str | None = None
    overlay: str | None = None
    record: str


class SampleView(BaseModel):
    index: int
    seed: int
    prompt: str
    negative_prompt: str = ""
    quality: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict, description="model, method and parameters")
    annotations: list[AnnotationView] = Field(default_factory=list)
    urls: SampleUrls


class SamplePage(BaseModel):
    items: list[SampleView]
    next_cursor: str | None = None


class ExportView(BaseModel):
    format: str
    size_bytes: int
    sha256: str
    url: str
    expires_in_s: int


def export_view(export: Any, store: Any, settings: Any, download_name: str) -> ExportView:
    """The one builder of an ExportView: an export row (db.models.Export) with a presigned URL
    that downloads as `download_name`, valid for settings.presign_expiry_s."""
    return ExportView(format=export.format, size_bytes=export.size_bytes, sha256=export.sha256,
                      url=store.presign(export.key, download_name=download_name),
                      expires_in_s=settings.presign_expiry_s)


class ExportList(BaseModel):
    items: list[ExportView]
    manifest_url: str | None = None


class ModelView(BaseModel):
    id: str


class ModelList(BaseModel):
    items: list[ModelView]


class RetryResult(BaseModel):
    job: JobView
    shards: list[int] = Field(description="indexes of the shards sent again")
