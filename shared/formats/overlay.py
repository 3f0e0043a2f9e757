"""A preview of a sample: its semantic mask blended over the image (PNG bytes).

Classes get distinct colours (`palette`, the same ones the dashboard uses for boxes and
legends); the ignore band (255: pixels the labeller was unsure about) is greyed and hatched
so that it cannot be mistaken for a class.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.formats.records import IGNORE

_GREY = np.array([128, 128, 128], np.float32)
_HATCH = np.array([40, 40, 40], np.float32)


def palette(n: int = 256) -> np.ndarray:
    """Distinct colours per category id (0 = background: black, 255 = ignore: grey)."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, size=(n, 3), dtype=np.uint8)
    colours[0] = 0
    colours[IGNORE % n] = 128
    return colours


_PALETTE = palette()


def colour_hex(category_id: int) -> str:
    r, g, b = (int(c) for c in _PALETTE[int(category_id) % 256])
    return f"#{r:02x}{g:02x}{b:02x}"


def overlay_png(image: Image.Image, semantic: np.ndarray, alpha: float = 0.5) -> bytes:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if semantic.shape != rgb.shape[:2]:
        raise ValueError(f"mask {semantic.shape} does not match image {rgb.shape[:2]}")
    sem = semantic.astype(np.uint8)
    colours = _PALETTE[sem].astype(np.float32)
    labelled = ((sem > 0) & (sem != IGNORE))[..., None]
    out = np.where(labelled, (1 - alpha) * rgb + alpha * colours, rgb)
    # ignore band: desaturated towards grey, with dark diagonal hatching every 4 pixels
    h, w = sem.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ignore = (sem == IGNORE)[..., None]
    stripe = (((xx + yy) % 4) == 0)[..., None]
    grey = 0.3 * rgb.mean(axis=2, keepdims=True) + 0.7 * _GREY
    out = np.where(ignore & stripe, _HATCH, np.where(ignore, grey, out))
    buf = io.BytesIO()
    Image.fromarray(out.round().clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
