"""WebDataset export: tar shards that large-scale training streams from.

    webdataset/<split>/<split>-000000.tar    SAMPLES_PER_TAR samples each, in index order

Each sample is a group of members sharing the key `<stem>` (the sample stem):
    <stem>.png             the image (the sample's own bytes)
    <stem>.semantic.png    uint8 class map (0 background, class id, 255 ignore), if any
    <stem>.instances.png   uint16 instance map (0 none, else annotation instance_id), if any
    <stem>.json            {index, seed, prompt, negative_prompt, width, height, split,
                            categories, annotations: [{instance_id, category, category_id,
                            bbox [x, y, w, h] px, area, score, source, segmentation (COCO RLE)}]}

`webdataset.WebDataset(".../train-{000000..000003}.tar").decode()` yields dicts with keys
`png`, `semantic.png`, `instances.png` and `json`. Tars are deterministic: members sorted
per sample, mtime 0, owner 0/0 without names, mode 0644, USTAR headers.
"""
from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import SampleRecord

FORMAT = "webdataset"
SAMPLES_PER_TAR = 1000

Member = tuple[str, bytes]  # (name inside the tar, bytes)


def tar_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def sample_json(record: SampleRecord, split: str, categories: Sequence[str]) -> dict[str, Any]:
    return {
        "index": record.index, "seed": record.seed, "prompt": record.prompt,
        "negative_prompt": record.negative_prompt, "width": record.width, "height": record.height,
        "split": split, "categories": list(categories),
        "annotations": [
            {"instance_id": a.instance_id, "category": a.category, "category_id": a.category_id,
             "bbox": [float(v) for v in a.bbox], "area": float(a.area), "score": float(a.score), "source": a.source,
             **({"segmentation": {"size": list(a.rle.size), "counts": a.rle.counts}} if a.rle else {})}
            for a in record.annotations
        ],
    }


def sample_members(root: Path, record: SampleRecord, split: str, categories: Sequence[str]) -> list[Member]:
    stem = layout.sample_stem(record.index)
    members = [(f"{stem}.png", files.image_path(root, record).read_bytes())]
    for kind, path in (("semantic", files.semantic_path(root, record)), ("instances", files.instances_path(root, record))):
        if path is not None:
            members.append((f"{stem}.{kind}.png", path.read_bytes()))
    members.append((f"{stem}.json", files.dumps_json(sample_json(record, split, categories)).encode("utf-8")))
    return sorted(members)


class TarShards:
    """Writes samples (lists of members) of one split into numbered tars of `per_tar` samples;
    the same sequence of samples always gives the same tar bytes."""

    def __init__(self, folder: Path, split: str, per_tar: int | None = None):
        self.folder, self.split, self.per_tar = folder, split, per_tar or SAMPLES_PER_TAR
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def add(self, members: Iterable[Member]) -> None:
        if self._tar is None or self._count == self.per_tar:
            self._close()
            path = self.folder / tar_name(self.split, len(self.written))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tar = tarfile.open(path.with_name(f".tmp-{path.name}"), "w", format=tarfile.USTAR_FORMAT)
            self.written.append(path)
            self._count = 0
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            path = self.written[-1]
            path.with_name(f".tmp-{path.name}").replace(path)
            self._tar = None

    def close(self) -> list[Path]:
        self._close()
        return self.written


def read_samples(tar_path: Path) -> Iterable[list[Member]]:
    """The samples of a tar written by `TarShards`, as lists of members (grouped by key)."""
    group: list[Member] = []
    key = None
    with tarfile.open(tar_path, "r") as tar:
        for info in tar:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            k = info.name.split(".", 1)[0]
            if group and k != key:
                yield group
                group = []
            key = k
            group.append((info.name, data))
    if group:
        yield group


def write_webdataset(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    writers: dict[str, TarShards] = {}
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        writer = writers.setdefault(split, TarShards(out_dir / split, split))
        writer.add(sample_members(root, record, split, categories))
    return [p for _, w in sorted(writers.items()) for p in w.close()]


def merge_webdataset(fragment_dirs: Sequence[Path], dest: Path) -> None:
    """The tars of the shards' fragments (each a `write_webdataset` output), in shard order,
    re-cut into the tars one `write_webdataset` over all samples writes."""
    dest.mkdir(parents=True, exist_ok=True)
    splits = sorted({p.name for d in fragment_dirs if d.is_dir() for p in d.iterdir() if p.is_dir()})
    for split in splits:
        writer = TarShards(dest / split, split)
        for d in fragment_dirs:
            for tar_path in sorted((d / split).glob("*.tar")) if (d / split).is_dir() else []:
                for members in read_samples(tar_path):
                    writer.add(members)
        writer.close()
