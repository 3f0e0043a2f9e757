"""Source images of image-to-image jobs: which real image and which strength per sample.

Sample i uses source i mod N (every source equally often, in a fixed order) and a strength
drawn from its own random stream keyed by (job seed, index), so a sample is the same whatever
the batch, shard or order it is made in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.formats.spec import Image2ImageSpec, SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_STREAM_STRENGTH = 0x1261  # distinct from the seed (0) and prompt (1) streams of shared.formats.prompts


@dataclass(frozen=True)
class Source:
    path: Path
    caption: str | None
    name: str | None = None  # what records call it (default: the file name)


class SourceError(SpecError):
    def __init__(self, message: str, field: str = "image2image.images"):
        super().__init__(message, field=field)


@functools.lru_cache(maxsize=4)
def load_sources(spec: Image2ImageSpec, base: Path | None = None) -> tuple[Source, ...]:
    """The source images; `base`: the extracted upload that `images` / `coco` are relative to."""
    images = Path(spec.images or "") if base is None else base / (spec.images or "")
    if not images.is_dir():
        raise SourceError(f"image2image.images: folder not found: {spec.images or '(the archive top)'}")
    if spec.coco:
        from worker.adaptor.data import load_coco

        coco = spec.coco if base is None else str(base / spec.coco)
        try:
            data = load_coco(coco, images)
        except SpecError as err:
            raise SourceError(f"image2image.coco: {err}".replace("--coco: ", "").replace("--images: ", ""),
                              field="image2image.coco") from None
        # Class-name prompts are a training fallback; for generation the spec's prompt is better.
        return tuple(Source(it.path, it.caption if it.caption_source != "classes" else None) for it in data.items)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files and (images / "samples").is_dir():  # a dsgen folder (`dsgen run`, a dataset version)
        found = _dsgen_images(images)
        if found:
            return found
    if not files:
        raise SourceError(f"image2image.images: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images}")
    return tuple(Source(p, None) for p in files)


def _dsgen_images(root: Path) -> tuple[Source, ...]:
    """The images of a dsgen folder's samples (dropped ones left out), each with its prompt as caption."""
    import json

    out = []
    for rec_path in sorted(root.glob("samples/*/record.json")):
        rec = json.loads(rec_path.read_text())
        image = rec_path.parent / ((rec.get("files") or {}).get("image") or "image.png")
        if not (rec.get("quality") or {}).get("dropped") and image.is_file():
            out.append(Source(image, rec.get("prompt") or None, str(image.relative_to(root))))
    return tuple(out)


def sample_strength(spec: Image2ImageSpec, job_seed: int, index: int) -> float:
    lo, hi = spec.strength
    u = np.random.default_rng(np.random.SeedSequence([job_seed, index, _STREAM_STRENGTH])).random()
    return round(float(lo + (hi - lo) * u), 6)


def source_of(sources: tuple[Source, ...], index: int) -> Source:
    return sources[index % len(sources)]


def load_source_image(source: Source, width: int, height: int) -> torch.Tensor:
    """[3, H, W] in [-1, 1] at the generation size."""
    with Image.open(source.path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
