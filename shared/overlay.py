"""A preview of a sample: its semantic mask blended over the image (PNG bytes)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def palette(n: int = 256) -> np.ndarray:
    """Distinct colours per category id (0 = background: black, 255 = ignore: white)."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, size=(n, 3), dtype=np.uint8)
    colours[0] = 0
    colours[255 % n] = 255
    return colours


def overlay_png(image: Image.Image, semantic: np.ndarray, alpha: float = 0.5) -> bytes:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if semantic.shape != rgb.shape[:2]:
        raise ValueError(f"mask {semantic.shape} does not match image {rgb.shape[:2]}")
    colours = palette()[semantic.astype(np.uint8)].astype(np.float32)
    labelled = (semantic > 0)[..., None]
    out = np.where(labelled, (1 - alpha) * rgb + alpha * colours, rgb)
    buf = io.BytesIO()
    Image.fromarray(out.round().clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
