"""The sample preview: class colours from the palette, background untouched, the ignore band grey and hatched."""
import io

import numpy as np
import pytest
from PIL import Image

from shared.formats.overlay import colour_hex, overlay_png, palette
from shared.formats.records import IGNORE


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_palette_keeps_background_black_ignore_grey_and_classes_distinct():
    colours = palette()
    assert colours[0].tolist() == [0, 0, 0] and colours[IGNORE].tolist() == [128, 128, 128]
    classes = {tuple(c) for c in colours[1:21].tolist()}
    assert len(classes) == 20 and (128, 128, 128) not in classes
    assert colour_hex(1) == "#{:02x}{:02x}{:02x}".format(*colours[1].tolist())
    assert palette().tolist() == colours.tolist()  # the dashboard's legend stays stable across processes


def test_overlay_blends_classes_keeps_background_and_hatches_the_ignore_band():
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    sem = np.zeros((8, 8), np.uint8)
    sem[:, 4:] = 2
    sem[6:, :] = IGNORE
    out = _decode(overlay_png(image, sem, alpha=0.5))
    assert out[0, 0].tolist() == [200, 100, 50]  # background unchanged
    expected = np.round(0.5 * np.array([200, 100, 50]) + 0.5 * palette()[2]).astype(int)
    assert out[0, 5].tolist() == expected.tolist()  # class 2 blended with its palette colour
    band = out[6:, :]
    grey = round(0.3 * np.mean([200, 100, 50]) + 0.7 * 128)
    stripes = [(x + y) % 4 == 0 for y in range(6, 8) for x in range(8)]
    pixels = band.reshape(-1, 3).tolist()
    assert all(p == [40, 40, 40] for p, s in zip(pixels, stripes) if s)  # dark diagonal hatching
    assert all(p == [grey] * 3 for p, s in zip(pixels, stripes) if not s)  # desaturated towards grey


def test_overlay_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="does not match"):
        overlay_png(Image.new("RGB", (8, 8)), np.zeros((4, 4), np.uint8))
