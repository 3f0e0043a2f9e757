"""manifest.json: the dataset's table of contents and its commit point.

Written last and atomically: a folder with a manifest is a complete dataset, one without
is not (yet). Its bytes are a pure function of the spec, the records and the exported
files (sorted keys, no timestamps, paths relative to the dataset folder, POSIX slashes),
so two runs of the same job can be compared by their manifests alone.

    {
      "manifest_version": 1,
      "spec": {...},                          the JobSpec as JSON
      "categories": [{"id": 1, "name": ...}],
      "splits": {"train": 80, ...},           sample counts
      "samples": [{... the record without annotations ..., "split": "train",
                   "num_annotations": 3, "exports": {"coco": ["coco/images/train/000000.png"], ...}}],
      "files": {"coco/annotations/instances_train.json": {"sha256": ..., "bytes": ...}, ...}
    }

A sample's `exports` are the exported files whose stem is the sample's stem
(`shared.formats.layout.sample_stem`); files shared by many samples (COCO json, data.yaml,
metadata.parquet, ImageSets lists) are only under `files`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import SampleRecord
from shared.formats.spec import JobSpec

MANIFEST_VERSION = 1


def _relative(root: Path, path: Path) -> str:
    path = Path(path)
    return (path.relative_to(root) if path.is_absolute() else path).as_posix()


def manifest_document(
    root: Path,
    spec: JobSpec,
    records: Sequence[SampleRecord],
    splits: dict[int, str],
    files_written: Sequence[Path],
) -> dict[str, Any]:
    root = Path(root)
    rel_paths = sorted({_relative(root, p) for p in files_written})
    file_table = {
        rel: {"sha256": files.sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in rel_paths
    }

    by_stem: dict[str, dict[str, list[str]]] = {}
    for rel in rel_paths:
        fmt = rel.split("/", 1)[0]
        by_stem.setdefault(Path(rel).stem, {}).setdefault(fmt, []).append(rel)

    samples = []
    for record in files.sorted_by_index(records):
        entry = record.model_dump(mode="json", exclude={"annotations"})
        entry["split"] = files.split_of(record, splits)
        entry["num_annotations"] = len(record.annotations)
        entry["exports"] = by_stem.get(layout.sample_stem(record.index), {})
        samples.append(entry)

    return {
        "manifest_version": MANIFEST_VERSION,
        "spec": spec.model_dump(mode="json"),
        "categories": [{"id": cid, "name": name} for name, cid in spec.category_ids.items()],
        "splits": dict(Counter(s["split"] for s in samples)),
        "samples": samples,
        "files": file_table,
    }


def write_manifest(
    root: Path,
    spec: JobSpec,
    records: Sequence[SampleRecord],
    splits: dict[int, str],
    files_written: Sequence[Path],
) -> Path:
    """Write DIR/manifest.json atomically; call it after every export file is in place."""
    doc = manifest_document(root, spec, records, splits, files_written)
    return files.atomic_write_text(Path(root) / layout.MANIFEST_FILE, files.dumps_json(doc, indent=2))
