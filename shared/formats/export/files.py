"""File helpers shared by the export writers: atomic, deterministic writes.

Every writer goes through these so that an export is a pure function of the samples:
no timestamps, no metadata chunks, and no half-written file left under its final name
if the process dies (a file is written to a temporary name and `os.replace`d).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.formats import layout
from shared.formats.records import SampleRecord

_TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write to a temporary name beside `path`, fsync, rename into place: a reader (or a run
    resumed after a crash) sees the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(data: Any, indent: int | None = None) -> str:
    """JSON with sorted keys: the same data always gives the same bytes."""
    separators = (",", ": ") if indent is not None else (",", ":")
    return json.dumps(data, sort_keys=True, indent=indent, separators=separators, ensure_ascii=False) + "\n"


def copy_file(src: Path, dst: Path) -> Path:
    """Copy bytes (not re-encode): the exported image is exactly the sample's image."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{_TMP_PREFIX}{dst.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def encode_png(image: Image.Image) -> bytes:
    # Pillow writes no tIME/tEXt chunk unless asked, so the bytes depend on pixels only.
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    # Baseline, no EXIF, fixed quality/subsampling: deterministic for a given libjpeg.
    buf = io.BytesIO()
    image.convert("RGB").save(
        buf, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False
    )
    return buf.getvalue()


def reset_dir(path: Path) -> Path:
    """Empty an export folder so that nothing from an earlier (partial) run survives."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sorted_by_index(records: Sequence[SampleRecord]) -> list[SampleRecord]:
    """Records in index order; duplicate indexes are a caller bug, refused loudly."""
    ordered = sorted(records, key=lambda r: r.index)
    for a, b in zip(ordered, ordered[1:]):
        if a.index == b.index:
            raise ValueError(f"sample index {a.index} appears twice in the records")
    return ordered


def split_of(record: SampleRecord, splits: dict[int, str]) -> str:
    try:
        return splits[record.index]
    except KeyError:
        raise ValueError(f"sample {record.index} has no split assigned") from None


def check_categories(record: SampleRecord, categories: Sequence[str]) -> None:
    """Category ids are 1-based positions in `categories`; refuse records that disagree."""
    for ann in record.annotations:
        cid = ann.category_id
        if not 1 <= cid <= len(categories) or categories[cid - 1] != ann.category:
            raise ValueError(
                f"sample {record.index}: annotation {ann.instance_id} has category "
                f"{ann.category!r} with id {cid}, which does not match the job's classes"
            )


def image_path(root: Path, record: SampleRecord) -> Path:
    return layout.sample_dir(root, record.index) / record.files.image


def semantic_path(root: Path, record: SampleRecord) -> Path | None:
    name = record.files.semantic
    return layout.sample_dir(root, record.index) / name if name else None


def instances_path(root: Path, record: SampleRecord) -> Path | None:
    name = record.files.instances
    return layout.sample_dir(root, record.index) / name if name else None


def read_mask(path: Path | None) -> np.ndarray | None:
    """A mask PNG as an array (uint8 semantic, uint16 instances); None if the sample has none.

    A record that names a mask whose file is missing is a broken sample: that raises.
    """
    if path is None:
        return None
    with Image.open(path) as img:
        return np.array(img)
