"""A small hand-made dataset folder for the export tests.

Four samples, 64 wide x 48 high (not square, so a swapped x/y shows):
  0: a cat rectangle, a dog disc with an ignore ring around it, and a cat made of two
     separate blobs (one instance, two polygons: YOLO keeps the larger)
  1: no object at all
  2: a dog rectangle and a cat disc
  3: one dog rectangle touching the image border
The annotations are derived from the masks the way the engine does it (pycocotools for
RLE/bbox/area, cv2 for polygons), so a reader's output can be checked against the masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from shared.formats import layout
from shared.formats.records import RLE, Annotation, ModelInfo, SampleRecord
from shared.formats.spec import JobSpec

WIDTH, HEIGHT = 64, 48
CATEGORIES = ["cat", "dog"]
CAT, DOG = 1, 2
IGNORE = 255


@dataclass
class Sample:
    index: int
    semantic: np.ndarray  # uint8 (H, W)
    instances: np.ndarray  # uint16 (H, W)
    categories: dict[int, int] = field(default_factory=dict)  # instance id -> category id


@dataclass
class Dataset:
    root: Path
    records: list[SampleRecord]
    splits: dict[int, str]
    samples: dict[int, Sample]
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))


def _blank() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint16)


def _paint(sample: Sample, instance_id: int, category_id: int, region: np.ndarray) -> None:
    sample.semantic[region] = category_id
    sample.instances[region] = instance_id
    sample.categories[instance_id] = category_id


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    region = np.zeros((HEIGHT, WIDTH), bool)
    region[y0:y1, x0:x1] = True
    return region


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def build_samples() -> dict[int, Sample]:
    s0 = Sample(0, *_blank())
    _paint(s0, 1, CAT, _rect(4, 20, 4, 24))  # 20 x 16 box at (4, 4)
    ring = _disc(30, 44, 10) & ~_disc(30, 44, 7)
    s0.semantic[ring] = IGNORE  # uncertain band: ignore in semantic, no instance
    _paint(s0, 2, DOG, _disc(30, 44, 7))
    _paint(s0, 3, CAT, _rect(30, 44, 4, 16) | _rect(40, 44, 22, 26))  # big + small blob

    s1 = Sample(1, *_blank())

    s2 = Sample(2, *_blank())
    _paint(s2, 1, DOG, _rect(10, 40, 30, 60))
    _paint(s2, 2, CAT, _disc(12, 12, 6))

    s3 = Sample(3, *_blank())
    _paint(s3, 5, DOG, _rect(20, 48, 40, 64))  # ids need not be consecutive
    return {s.index: s for s in (s0, s1, s2, s3)}


def annotation_from_mask(instance_id: int, category_id: int, mask: np.ndarray) -> Annotation:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return Annotation(
        instance_id=instance_id,
        category=CATEGORIES[category_id - 1],
        category_id=category_id,
        bbox=tuple(float(v) for v in mask_utils.toBbox(rle)),
        area=float(mask_utils.area(rle)),
        rle=RLE(size=tuple(rle["size"]), counts=rle["counts"].decode("ascii")),
        polygons=[c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3],
        score=0.5 + 0.1 * instance_id,
    )


def write_sample(root: Path, sample: Sample) -> SampleRecord:
    folder = layout.sample_dir(root, sample.index)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(sample.index)
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(folder / "image.png")
    Image.fromarray(sample.semantic).save(folder / "semantic.png")
    Image.fromarray(sample.instances).save(folder / "instances.png")
    annotations = [
        annotation_from_mask(iid, cid, sample.instances == iid) for iid, cid in sorted(sample.categories.items())
    ]
    record = SampleRecord(
        index=sample.index,
        seed=1000 + sample.index,
        prompt=f"a photo of a cat and a dog #{sample.index}",
        classes=list(CATEGORIES),
        model=ModelInfo(id="builtin:tiny", revision="abc123"),
        method="text2image",
        parameters={"steps": 2, "guidance_scale": 7.5},
        width=WIDTH,
        height=HEIGHT,
        annotations=annotations,
        quality={"uncertain_fraction": float((sample.semantic == IGNORE).mean())},
    )
    (folder / layout.RECORD_FILE).write_text(record.model_dump_json())
    return record


def make_dataset(root: Path) -> Dataset:
    samples = build_samples()
    records = [write_sample(root, s) for s in samples.values()]
    splits = {0: "train", 1: "train", 2: "val", 3: "test"}
    return Dataset(root=root, records=records, splits=splits, samples=samples)


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def dataset_factory(tmp_path: Path):
    """Build another copy of the same dataset in a folder of its own: `factory(name)`."""
    return lambda name: make_dataset(tmp_path / name)


@pytest.fixture
def spec() -> JobSpec:
    return JobSpec(
        model="builtin:tiny",
        classes=[{"name": n} for n in CATEGORIES],
        num_images=4,
        seed=7,
    )
