"""The golden fingerprints forgive another CPU's rounding and nothing that a change of
behaviour would do."""
import io
import json

import numpy as np
from PIL import Image

from tests.support.fingerprint import compare, fingerprint


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_one_level_on_a_few_pixels_is_rounding():
    a = _image()
    b = a.copy()
    b[3, 4, 0] = b[3, 4, 0] ^ 1
    b[20, 9, 2] = b[20, 9, 2] ^ 1
    assert compare(fingerprint("x.png", _png(a)), fingerprint("x.png", _png(b)), "x.png") == []


def test_another_image_or_a_shifted_one_is_a_change():
    a = _image()
    assert compare(fingerprint("x.png", _png(a)), fingerprint("x.png", _png(_image(1))), "x.png")
    assert compare(fingerprint("x.png", _png(a)), fingerprint("x.png", _png(np.roll(a, 8, axis=1))), "x.png")
    assert compare(fingerprint("x.png", _png(a)), fingerprint("x.png", _png(a[:16])), "x.png")


def test_label_masks_allow_no_more_than_a_pixel_here_and_there():
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 2
    nudged = mask.copy()
    nudged[10, 10] = 0
    grown = mask.copy()
    grown[30:34, 10:30] = 2
    want = fingerprint("m.png", _png(mask))
    assert compare(want, fingerprint("m.png", _png(nudged)), "m") == []
    assert compare(want, fingerprint("m.png", _png(grown)), "m")


def test_json_floats_round_but_integers_strings_and_shapes_are_exact():
    record = {"seed": 16823399, "score": 0.6909816265106201, "category": "cat", "bbox": [0.0, 1.0, 32.0, 32.0],
              "file_sha256": "a" * 64, "rle": "x" * 100}
    want = fingerprint("r.json", json.dumps(record).encode())

    def got(**change):
        return fingerprint("r.json", json.dumps({**record, **change}).encode())
    assert compare(want, got(score=0.6909814476966858, file_sha256="b" * 64), "r") == []
    assert compare(want, got(seed=16823400), "r")
    assert compare(want, got(score=0.7), "r")
    assert compare(want, got(category="dog"), "r")
    assert compare(want, got(bbox=[0.0, 1.0, 32.0]), "r")
    assert compare(want, got(rle="x" * 99 + "y"), "r")


def test_text_numbers_round_and_the_rest_is_exact():
    want = fingerprint("l.txt", b"0 0.5 0.25 0.125 0.0625\n")
    assert compare(want, fingerprint("l.txt", b"0 0.5000001 0.25 0.125 0.0625\n"), "l") == []
    assert compare(want, fingerprint("l.txt", b"1 0.5 0.25 0.125 0.0625\n"), "l")
    assert compare(want, fingerprint("l.txt", b"0 0.5 0.25 0.125\n"), "l")
    assert compare(want, fingerprint("l.txt", b"0,0.5,0.25,0.125,0.0625\n"), "l")


def test_a_manifest_entry_follows_its_file_not_its_bytes():
    entry = {"files": {"a.png": {"bytes": 2984, "sha256": "a" * 64}}, "samples": 4}
    want = fingerprint("manifest.json", json.dumps(entry).encode())
    moved = {"files": {"a.png": {"bytes": 2982, "sha256": "b" * 64}}, "samples": 4}
    assert compare(want, fingerprint("manifest.json", json.dumps(moved).encode()), "m") == []
    assert compare(want, fingerprint("manifest.json", json.dumps({**moved, "samples": 5}).encode()), "m")
