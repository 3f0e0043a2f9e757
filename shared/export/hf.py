"""Hugging Face `imagefolder` export.

    hf/<split>/<stem>.png
    hf/<split>/metadata.jsonl     one JSON object per image, sorted by index

Loads with `datasets.load_dataset("imagefolder", data_dir="DIR/hf")` (splits train,
validation from `val`, test). Each row: file_name, index, seed, prompt, negative_prompt,
width, height and `objects` = {bbox: [[x, y, w, h], ...] in pixels, category: [name],
category_id: [1-based id], area: [...]} - the layout of the Hub's detection datasets,
with class names as strings so the metadata reads without a ClassLabel table.

Known limit (of `datasets`, not fixable from JSON): column types are inferred from each
split's first 10 MB of metadata, and an empty list infers as a list of null. A split in
which no image has an object therefore gets different `objects` types from the other
splits and `load_dataset` refuses the folder ("have different features"). It cannot
happen when every split has an object among its first ~30k rows, nor when no split does (`labels.mode: none`);
a metadata.parquet with a fixed schema would lift it but needs pyarrow in `shared/`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import layout
from shared.export import files
from shared.records import SampleRecord

FORMAT = "hf"
METADATA_FILE = "metadata.jsonl"


def metadata_row(record: SampleRecord, file_name: str) -> dict[str, Any]:
    anns = record.annotations
    return {
        "file_name": file_name,
        "index": record.index,
        "seed": record.seed,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "width": record.width,
        "height": record.height,
        "objects": {
            "bbox": [[float(v) for v in a.bbox] for a in anns],
            "category": [a.category for a in anns],
            "category_id": [a.category_id for a in anns],
            "area": [float(a.area) for a in anns],
        },
    }


def write_hf(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    written: list[Path] = []
    rows: dict[str, list[str]] = {}
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        file_name = f"{layout.sample_stem(record.index)}.png"
        written.append(files.copy_file(files.image_path(root, record), out_dir / split / file_name))
        rows.setdefault(split, []).append(files.dumps_json(metadata_row(record, file_name)))
    for split, lines in sorted(rows.items()):
        written.append(files.atomic_write_text(out_dir / split / METADATA_FILE, "".join(lines)))
    return written
