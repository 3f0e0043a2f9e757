"""Plain mask PNGs, for semantic-segmentation training code that wants no format.

    masks/classes.json                       {"background": 0, "ignore": 255, "classes": [{id, name}]}
    masks/<split>/images/<stem>.png
    masks/<split>/semantic/<stem>.png        uint8 "L": 0 background, class id, 255 ignore
    masks/<split>/instances/<stem>.png       uint16 "I;16": 0 none, else the instance id

The mask files are byte copies of the samples' own PNGs. A sample made with
`labels.mode: none` has no masks and appears under `images/` only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import IGNORE, SampleRecord

FORMAT = "masks"
CLASSES_FILE = "classes.json"


def classes_document(categories: Sequence[str]) -> dict:
    return {
        "background": 0,
        "ignore": IGNORE,
        "classes": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }


def write_masks(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    written: list[Path] = []
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split_dir = out_dir / files.split_of(record, splits)
        name = f"{layout.sample_stem(record.index)}.png"
        written.append(files.copy_file(files.image_path(root, record), split_dir / "images" / name))
        for kind, src in (("semantic", files.semantic_path(root, record)), ("instances", files.instances_path(root, record))):
            if src is not None:
                written.append(files.copy_file(src, split_dir / kind / name))
    written.append(files.atomic_write_text(out_dir / CLASSES_FILE, files.dumps_json(classes_document(categories), indent=2)))
    return written
