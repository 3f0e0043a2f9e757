"""Machine-independent fingerprints of a dataset's files, for the golden-dataset test.

Byte hashes are not portable: the same code on another CPU takes other vector kernels
(ATEN_CPU_CAPABILITY), which moves a few pixels by one intensity level and a float score in
its seventh digit, and with them every byte of the files that carry them. The fingerprint
keeps what such rounding cannot move and compares the rest with a tolerance far below any
real change of behaviour:

- images: size, mode and the mean of each cell of a 4x4 grid per channel (within 0.5 levels);
- label masks (single-channel PNGs): the pixel histogram (within 0.5% of the pixels);
- JSON and parquet: the whole structure, integers exactly, floats within 1e-3, long strings by digest, and
  64-hex digests of other files (and the sizes beside them) not compared: their files are
  compared on their own;
- text (txt, xml, yaml): the text with its numbers blanked, exactly, and the numbers within 1e-3;
- tar archives: each member by these rules; anything else: its sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".txt", ".xml", ".yaml", ".yml", ".csv")
LABEL_MODES = ("1", "L", "P", "I", "I;16")
GRID = 4
CELL_TOLERANCE = 0.5
LABEL_TOLERANCE = 0.005
NUMBER_TOLERANCE = 1e-3
LONG_STRING = 80
DIGEST = re.compile(r"^[0-9a-f]{64}$")
FILE_SIZE_KEYS = ("bytes", "size")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(name: str, data: bytes) -> dict:
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    if suffix in IMAGE_SUFFIXES:
        return _image(data)
    if suffix == ".json":
        return {"json": _tree(json.loads(data))}
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return {"json": _tree(pq.read_table(io.BytesIO(data)).to_pylist())}
    if suffix in TEXT_SUFFIXES:
        text = data.decode()
        return {"text": {"skeleton": sha256(NUMBER.sub("#", text).encode()),
                         "numbers": [float(n) for n in NUMBER.findall(text)]}}
    if suffix == ".tar":
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {"tar": {m.name: fingerprint(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}}
    return {"sha256": sha256(data)}


def _image(data: bytes) -> dict:
    image = Image.open(io.BytesIO(data))
    head = {"size": list(image.size), "mode": image.mode}
    pixels = np.asarray(image)
    if image.mode in LABEL_MODES:
        values, counts = np.unique(pixels, return_counts=True)
        return {"label": {**head, "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)}}}
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    rows = np.array_split(np.arange(pixels.shape[0]), GRID)
    cols = np.array_split(np.arange(pixels.shape[1]), GRID)
    cells = [round(float(pixels[np.ix_(r, c, [ch])].mean()), 2)
             for ch in range(pixels.shape[2]) for r in rows for c in cols]
    return {"image": {**head, "cells": cells}}


def _tree(value):
    """JSON-able value with long strings replaced by their digest (they are compared exactly)."""
    if isinstance(value, dict):
        return {str(k): _tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tree(v) for v in value]
    if isinstance(value, str) and len(value) > LONG_STRING:
        return "long string, sha256 " + sha256(value.encode())  # not a bare digest: compared exactly
    return value


def compare(want: dict, got: dict, where: str) -> list[str]:
    """Every way `got` departs from `want` beyond rounding, as readable lines (empty: the same)."""
    if want.keys() != got.keys():
        return [f"{where}: kind {sorted(got)} != {sorted(want)}"]
    (kind,) = want  # one kind per fingerprint
    if kind == "image":
        return _compare_image(want[kind], got[kind], where)
    if kind == "label":
        return _compare_label(want[kind], got[kind], where)
    if kind == "json":
        return _compare_tree(want[kind], got[kind], where)
    if kind == "text":
        out = [] if want[kind]["skeleton"] == got[kind]["skeleton"] else [f"{where}: text (numbers aside) differs"]
        return out + _compare_tree(want[kind]["numbers"], got[kind]["numbers"], f"{where} numbers")
    if kind == "tar":
        if sorted(want[kind]) != sorted(got[kind]):
            return [f"{where}: members differ"]
        return [m for name in want[kind] for m in compare(want[kind][name], got[kind][name], f"{where}/{name}")]
    return [] if want == got else [f"{where}: bytes differ"]


def _compare_image(want: dict, got: dict, where: str) -> list[str]:
    if (want["size"], want["mode"]) != (got["size"], got["mode"]):
        return [f"{where}: size/mode {got['size']} {got['mode']} != {want['size']} {want['mode']}"]
    worst = max(abs(a - b) for a, b in zip(want["cells"], got["cells"]))
    return [] if worst <= CELL_TOLERANCE else [f"{where}: a grid cell moved by {worst:.2f} levels"]


def _compare_label(want: dict, got: dict, where: str) -> list[str]:
    if (want["size"], want["mode"]) != (got["size"], got["mode"]):
        return [f"{where}: size/mode {got['size']} {got['mode']} != {want['size']} {want['mode']}"]
    values = want["histogram"].keys() | got["histogram"].keys()
    moved = sum(abs(want["histogram"].get(v, 0) - got["histogram"].get(v, 0)) for v in values) / 2
    share = moved / (want["size"][0] * want["size"][1])
    return [] if share <= LABEL_TOLERANCE else [f"{where}: {share:.1%} of the label pixels changed value"]


def _compare_tree(want, got, where: str) -> list[str]:
    if isinstance(want, bool) or isinstance(got, bool) or want is None or got is None:
        return [] if want == got else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, int) and isinstance(got, int):
        return [] if want == got else [f"{where}: {got!r} != {want!r}"]  # ids, seeds, counts: exact
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        close = math.isclose(want, got, rel_tol=NUMBER_TOLERANCE, abs_tol=NUMBER_TOLERANCE)
        return [] if close else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, dict) and isinstance(got, dict):
        if want.keys() != got.keys():
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        # A file's size beside its digest describes another file, compared on its own.
        described = any(isinstance(v, str) and DIGEST.match(v) for v in want.values())
        return [m for k in want if not (described and k in FILE_SIZE_KEYS)
                for m in _compare_tree(want[k], got[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: {len(got)} items != {len(want)}"]
        return [m for i, (a, b) in enumerate(zip(want, got)) for m in _compare_tree(a, b, f"{where}[{i}]")]
    if isinstance(want, str) and isinstance(got, str) and DIGEST.match(want) and DIGEST.match(got):
        return []  # a digest of another file, which is compared on its own
    return [] if want == got else [f"{where}: {got!r} != {want!r}"]
