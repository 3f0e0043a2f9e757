"""What the engine produces per sample, in a form every side can read (no torch).

A `SampleRecord` is the sample's audit trail: it is written next to the sample's files,
stored as a row by the service, read by the export writers and copied into the manifest.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The conventions every side shares (one home for each):
IGNORE = 255  # semantic-mask value of pixels the labeller was unsure about: ignored in training
DROPPED = "dropped"  # SampleRecord.quality key of samples the exports leave out (its value says why)


class RLE(BaseModel):
    """COCO compressed RLE, `counts` as str (what `pycocotools.mask.encode` gives, decoded)."""

    model_config = ConfigDict(frozen=True)
    size: tuple[int, int]  # (height, width)
    counts: str


class Annotation(BaseModel):
    """One instance: a connected region of one class (or a detector's box)."""

    model_config = ConfigDict(frozen=True)
    instance_id: int = Field(ge=1, description="value of this instance in the instance mask PNG (0 = none)")
    category: str
    category_id: int = Field(ge=1)
    bbox: tuple[float, float, float, float] = Field(description="[x, y, w, h] in pixels")
    area: float = Field(ge=0)
    rle: RLE | None = None
    polygons: list[list[float]] = Field(default_factory=list, description="[[x1, y1, x2, y2, ...], ...] in pixels")
    score: float = 1.0
    source: Literal["attention", "adaptor"] = "attention"


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    revision: str | None = None


class SampleFiles(BaseModel):
    """File names of a sample, relative to the sample's own folder."""

    model_config = ConfigDict(frozen=True)
    image: str = "image.png"
    semantic: str | None = "semantic.png"  # uint8 PNG: 0 background, category ids, 255 ignore
    instances: str | None = "instances.png"  # uint16 PNG: 0 none, else Annotation.instance_id


class SampleRecord(BaseModel):
    """Everything needed to audit and reproduce one sample.

    Timings are deliberately not here: records are part of the dataset and must be
    identical between an interrupted-and-resumed run and an uninterrupted one.
    """

    model_config = ConfigDict(frozen=True)
    index: int = Field(ge=0)
    seed: int
    prompt: str
    negative_prompt: str = ""
    classes: list[str] = Field(description="classes named in the prompt (what the labels look for)")
    model: ModelInfo
    method: str
    parameters: dict[str, Any] = Field(default_factory=dict, description="method + label parameters used")
    width: int
    height: int
    files: SampleFiles = Field(default_factory=SampleFiles)
    annotations: list[Annotation] = Field(default_factory=list)
    quality: dict[str, Any] = Field(
        default_factory=dict,
        description="e.g. uncertain_fraction, peak_attention per class",
    )
