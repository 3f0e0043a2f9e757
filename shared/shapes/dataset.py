"""A real (rendered) shapes dataset in the project's sample layout plus its exports.

`write_real_dataset(out, n, seed)` renders scenes 0..n-1 of stream `seed`, writes each as a
sample folder exactly like `dsgen run` does (image.png, semantic.png, instances.png and
record.json with ground-truth annotations), then runs the project's export writers (COCO by
default), so real and generated sets are read by the same code. No torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from shared.formats import layout
from shared.formats.export import WRITERS, assign_splits
from shared.formats.export.files import atomic_write_bytes, encode_png
from shared.formats.records import RLE, Annotation, ModelInfo, SampleRecord
from shared.shapes.render import Scene, render_scene
from shared.shapes.world import DEFAULT_WORLD, SHAPES, World

RENDERER_ID = "shapes-world"
RENDERER_VERSION = "1"
DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def scene_seed(seed: int, index: int) -> int:
    """Scene seed of sample `index` in the stream `seed` (disjoint streams for disjoint seeds)."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x5CE7E]).generate_state(1, np.uint64)[0] >> 2)


def scene_annotations(scene: Scene) -> list[Annotation]:
    anns = []
    for obj in scene.objects:
        m = np.asfortranarray(scene.instance_mask(obj).astype(np.uint8))
        rle = mask_utils.encode(m)
        anns.append(Annotation(
            instance_id=obj.instance_id, category=obj.shape, category_id=obj.category_id,
            bbox=tuple(float(v) for v in obj.box), area=float(obj.area),
            rle=RLE(size=(int(rle["size"][0]), int(rle["size"][1])), counts=rle["counts"].decode("ascii")),
        ))
    return anns


def scene_record(scene: Scene, index: int) -> SampleRecord:
    h, w = scene.semantic.shape
    return SampleRecord(
        index=index, seed=scene.seed, prompt=scene.caption,
        classes=list(dict.fromkeys(o.shape for o in scene.objects)),
        model=ModelInfo(id=RENDERER_ID, revision=RENDERER_VERSION), method="render",
        parameters={"size": w, "colours": [o.colour for o in scene.objects]},
        width=w, height=h, annotations=scene_annotations(scene),
    )


def write_sample(root: Path, index: int, scene: Scene) -> SampleRecord:
    record = scene_record(scene, index)
    d = layout.sample_dir(root, index)
    atomic_write_bytes(d / record.files.image, encode_png(scene.to_pil()))
    atomic_write_bytes(d / record.files.semantic, encode_png(Image.fromarray(scene.semantic, mode="L")))
    atomic_write_bytes(d / record.files.instances, encode_png(Image.fromarray(scene.instances.astype(np.uint16))))
    atomic_write_bytes(d / layout.RECORD_FILE, record.model_dump_json(indent=1).encode() + b"\n")
    return record


def write_real_dataset(
    out: Path, n: int, seed: int = 0, size: int = 32, formats: Sequence[str] = ("coco",),
    splits: dict[str, float] | None = None, progress=None, world: World | str | None = DEFAULT_WORLD,
) -> list[SampleRecord]:
    """Render n scenes into `out` (sample folders + the requested export formats)."""
    out = Path(out)
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {sorted(WRITERS)}")
    records = []
    for i in range(n):
        records.append(write_sample(out, i, render_scene(scene_seed(seed, i), size, world=world)))
        if progress is not None:
            progress(i + 1)
    split_map = assign_splits(seed, range(n), splits or DEFAULT_SPLITS)
    for fmt in formats:
        WRITERS[fmt](out, records, list(SHAPES), split_map)
    return records
