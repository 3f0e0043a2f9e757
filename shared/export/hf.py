"""Hugging Face `imagefolder` export.

    hf/<split>/<stem>.png
    hf/<split>/metadata.parquet   one row per image, sorted by index

Loads with `datasets.load_dataset("imagefolder", data_dir="DIR/hf")` (splits train,
validation from `val`, test). Each row: file_name, index, seed, prompt, negative_prompt,
width, height and `objects` = {bbox: [[x, y, w, h], ...] in pixels, category: [name],
category_id: [1-based id], area: [...]} - the layout of the Hub's detection datasets,
with class names as strings so the metadata reads without a ClassLabel table.

Parquet rather than JSON lines: `datasets` infers JSON column types from each split's
first rows, and a split in which no image has an object would infer `objects` as lists of
null and be refused beside the other splits ("have different features"). The parquet
schema below is fixed, so every split has the same features whatever it holds.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import layout
from shared.export import files
from shared.records import SampleRecord

FORMAT = "hf"
METADATA_FILE = "metadata.parquet"


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("file_name", pa.string()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("objects", pa.struct([
            ("bbox", pa.list_(pa.list_(pa.float64()))),
            ("category", pa.list_(pa.string())),
            ("category_id", pa.list_(pa.int64())),
            ("area", pa.list_(pa.float64())),
        ])),
    ])


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), sink, compression="zstd", write_statistics=False)
    return sink.getvalue().to_pybytes()


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
    rows: dict[str, list[dict[str, Any]]] = {}
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        file_name = f"{layout.sample_stem(record.index)}.png"
        written.append(files.copy_file(files.image_path(root, record), out_dir / split / file_name))
        rows.setdefault(split, []).append(metadata_row(record, file_name))
    for split, split_rows in sorted(rows.items()):
        written.append(files.atomic_write_bytes(out_dir / split / METADATA_FILE, _parquet_bytes(split_rows)))
    return written
