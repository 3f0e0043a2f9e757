"""Dataset export writers: samples folder -> COCO / YOLO / VOC / HF imagefolder / masks /
WebDataset.

`write_exports(root, spec, records)` is the one entry point the runner and the finalize
task call. It is idempotent and deterministic: it removes the old manifest first (the
folder stops being "committed"), empties and rewrites each requested format's folder,
and writes manifest.json last, so running it twice, or after a run that died halfway,
leaves byte-identical files. Format folders that the spec does not request are left as
they are and are not listed in the manifest.

Every writer has the signature
    write_<format>(root, records, categories, splits) -> list[Path]
with `categories` the class names in id order (id = position + 1) and `splits`
{sample index: split name}; it reads the samples under `root/samples/` and writes
under `root/<format>/`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shared.formats import layout
from shared.formats.export.coco import write_coco
from shared.formats.export.hf import write_hf
from shared.formats.export.manifest import write_manifest
from shared.formats.export.masks import write_masks
from shared.formats.export.splits import assign_splits, split_counts
from shared.formats.export.voc import write_voc
from shared.formats.export.webdataset import write_webdataset
from shared.formats.export.yolo import write_yolo
from shared.formats.records import DROPPED, SampleRecord
from shared.formats.spec import EXPORT_FORMATS, JobSpec

Writer = Callable[[Path, Sequence[SampleRecord], list[str], dict[int, str]], list[Path]]

WRITERS: dict[str, Writer] = {
    "coco": write_coco,
    "yolo": write_yolo,
    "voc": write_voc,
    "hf": write_hf,
    "masks": write_masks,
    "webdataset": write_webdataset,
}
assert set(WRITERS) == set(EXPORT_FORMATS), "every format of the spec needs a writer"


def write_exports(root: Path, spec: JobSpec, records: Sequence[SampleRecord]) -> Path:
    """Write every format the spec asks for, then the manifest; return the manifest path."""
    root = Path(root)
    (root / layout.MANIFEST_FILE).unlink(missing_ok=True)
    # Samples the labeler dropped (e.g. no adaptor box above the threshold, labels.keep_empty
    # off) keep their record for resume and audit but are not part of the dataset.
    records = [r for r in records if not r.quality.get(DROPPED)]
    categories = [c.name for c in spec.classes]
    # Over the job's planned total, not the records given: a shard exporting its own samples
    # (a fragment) assigns them the splits a pass over the whole job gives.
    splits = assign_splits(spec.seed, (r.index for r in records), spec.export.splits, total=spec.num_images)
    written: list[Path] = []
    for fmt in EXPORT_FORMATS:  # fixed order, whatever order the spec lists them in
        if fmt in spec.export.formats:
            written.extend(WRITERS[fmt](root, records, categories, splits))
    return write_manifest(root, spec, records, splits, written)


__all__ = [
    "WRITERS",
    "assign_splits",
    "split_counts",
    "write_coco",
    "write_exports",
    "write_hf",
    "write_manifest",
    "write_masks",
    "write_voc",
    "write_webdataset",
    "write_yolo",
]
