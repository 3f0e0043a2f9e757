"""What the API returns about datasets and their versions (pydantic; also the OpenAPI schema)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, Field

from shared.jobs.views import ExportView


class DatasetSummary(BaseModel):
    name: str
    created_at: dt.datetime
    versions: int
    latest: int | None = Field(default=None, description="number of the latest version")


class DatasetList(BaseModel):
    items: list[DatasetSummary]


class DatasetVersionView(BaseModel):
    dataset: str
    version: int
    name: str = Field(description="v1, v2, ...")
    job_id: uuid.UUID
    created_at: dt.datetime
    summary: dict[str, Any] = Field(description="samples, instances and images per class, mean quality")
    manifest_url: str | None = None
    exports: list[ExportView] = Field(default_factory=list)


class DatasetVersionList(BaseModel):
    dataset: str
    items: list[DatasetVersionView] = Field(description="newest first")
    jobs: list[uuid.UUID] = Field(default_factory=list, description="the dataset's jobs (newest 50), versions or not")


class DiffEntry(BaseModel):
    base: float | int | None = None
    head: float | int | None = None
    delta: float | int | None = None


class DatasetDiff(BaseModel):
    dataset: str
    base: int
    head: int
    samples: DiffEntry
    instances: dict[str, DiffEntry] = Field(description="instances per class")
    images: dict[str, DiffEntry] = Field(description="images with at least one instance, per class")
    quality: dict[str, DiffEntry] = Field(description="mean quality values")
