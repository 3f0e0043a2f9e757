"""Colour palettes of segmentation conditioning images (ControlNet seg models read colours, not ids)."""
from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from shared.formats.export.voc import voc_colormap
from shared.formats.records import IGNORE


@functools.lru_cache(maxsize=1)
def ade20k() -> dict[str, tuple[int, int, int]]:
    """ADE20K class name -> colour (the public segmentation ControlNet was trained on these)."""
    data = json.loads(resources.files("worker.engine").joinpath("ade20k_palette.json").read_text())
    table: dict[str, tuple[int, int, int]] = {}
    for c in data["classes"]:
        for alias in c["name"].strip().split(";"):
            table.setdefault(alias.strip().lower(), tuple(c["rgb"]))
    return table


def _distinct(i: int) -> tuple[int, int, int]:
    """A colour for a class the palette does not name: VOC's bit-spread colours from 64 on."""
    return tuple(int(v) for v in voc_colormap(256)[64 + i % 190])


def class_colours(palette, class_names: list[str]) -> np.ndarray:
    """[C + 2, 3] uint8 lookup: row 0 background (black), rows 1..C the classes, last row ignore (black)."""
    out = np.zeros((len(class_names) + 2, 3), dtype=np.uint8)
    if isinstance(palette, dict):
        table = {k.lower(): tuple(v) for k, v in palette.items()}
    elif palette == "voc":
        from worker.engine.mask_sources import VOC_CLASSES

        cmap = voc_colormap(256)
        table = {n: tuple(int(v) for v in cmap[i]) for i, n in enumerate(VOC_CLASSES)}
    else:
        table = ade20k()
    for i, name in enumerate(class_names):
        out[i + 1] = table.get(name.lower(), _distinct(i))
    return out


def draw(semantic: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Label map (job ids, 255 ignore) -> RGB uint8 conditioning image."""
    idx = semantic.astype(np.int64)
    idx[idx == IGNORE] = len(colours) - 1
    idx[idx >= len(colours)] = len(colours) - 1
    return colours[idx]
