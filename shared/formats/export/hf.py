"""Hugging Face `imagefolder` export.

    hf/<split>/<stem>.png
    hf/<split>/masks/<stem>_semantic.png    0 background, category ids, 255 ignore (when labelled)
    hf/<split>/masks/<stem>_instances.png   16-bit instance ids
    hf/<split>/metadata.parquet             one row per image, sorted by index, in row groups
                                            of ROWS_PER_GROUP rows (written streaming)

Loads with `datasets.load_dataset("imagefolder", data_dir="DIR/hf")` (splits train,
validation from `val`, test). Each row: image, semantic and instances masks (Image features,
from the `*_file_name` columns), index, seed, prompt, negative_prompt, width, height and
`objects` = {bbox: [[x, y, w, h], ...] in pixels, category: ClassLabel (0-based, the job's
class names), category_id: [1-based id as in the masks], area: [...]} - the layout of the
Hub's detection datasets, so `features["objects"]["category"].feature.names` lists the classes.

Parquet rather than JSON lines: `datasets` infers JSON column types from each split's
first rows, and a split in which no image has an object would infer `objects` as lists of
null and be refused beside the other splits ("have different features"). The parquet
schema below is fixed and carries the `datasets` features (ClassLabel names) in its
`huggingface` metadata, so every split has the same features whatever it holds.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import SampleRecord

FORMAT = "hf"
METADATA_FILE = "metadata.parquet"
# Rows per parquet row group. The file is written a group at a time (the merge of shard
# fragments streams rows through the same writer), so the layout must not depend on how
# the rows arrive: a fixed group size, the same for one pass and for a merge.
ROWS_PER_GROUP = 1000


def _schema(categories: Sequence[str]):
    import json

    import pyarrow as pa

    schema = pa.schema([
        ("file_name", pa.string()),
        ("semantic_file_name", pa.string()),
        ("instances_file_name", pa.string()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("objects", pa.struct([
            ("bbox", pa.list_(pa.list_(pa.float64()))),
            ("category", pa.list_(pa.int64())),
            ("category_id", pa.list_(pa.int64())),
            ("area", pa.list_(pa.float64())),
        ])),
    ])
    string, int64, float64 = ({"dtype": t, "_type": "Value"} for t in ("string", "int64", "float64"))
    features = {
        "file_name": string, "semantic_file_name": string, "instances_file_name": string,
        "index": int64, "seed": int64, "prompt": string, "negative_prompt": string, "width": int64, "height": int64,
        "objects": {
            "bbox": {"feature": {"feature": float64, "_type": "List"}, "_type": "List"},
            "category": {"feature": {"names": list(categories), "_type": "ClassLabel"}, "_type": "List"},
            "category_id": {"feature": int64, "_type": "List"},
            "area": {"feature": float64, "_type": "List"},
        },
    }
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


class MetadataWriter:
    """One split's metadata.parquet, written ROWS_PER_GROUP rows at a time under a temporary
    name and renamed into place by `close`. The bytes depend only on the sequence of rows
    (and the classes), never on how the calls were batched."""

    def __init__(self, path: Path, categories: Sequence[str]):
        self.path, self.categories = Path(path), list(categories)
        self._rows: list[dict[str, Any]] = []
        self._writer = None

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) == ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(self.categories)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path.with_name(f".tmp-{self.path.name}"), schema,
                                            compression="zstd", write_statistics=False)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=schema))
        self._rows = []

    def close(self) -> Path:
        if self._rows or self._writer is None:
            self._flush()
        self._writer.close()
        self.path.with_name(f".tmp-{self.path.name}").replace(self.path)
        return self.path


def read_metadata_rows(path: Path):  # noqa: ANN201
    """The rows of a metadata.parquet, a row group at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for k in range(parquet.num_row_groups):
        yield from parquet.read_row_group(k).to_pylist()


def metadata_row(record: SampleRecord, file_name: str, masks: dict[str, str | None] | None = None) -> dict[str, Any]:
    anns = record.annotations
    masks = masks or {}
    return {
        "file_name": file_name,
        "semantic_file_name": masks.get("semantic"),
        "instances_file_name": masks.get("instances"),
        "index": record.index,
        "seed": record.seed,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "width": record.width,
        "height": record.height,
        "objects": {
            "bbox": [[float(v) for v in a.bbox] for a in anns],
            "category": [a.category_id - 1 for a in anns],  # ClassLabel index of the job's classes
            "category_id": [a.category_id for a in anns],
            "area": [float(a.area) for a in anns],
        },
    }


def write_hf(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    written: list[Path] = []
    writers: dict[str, MetadataWriter] = {}
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        stem = layout.sample_stem(record.index)
        file_name = f"{stem}.png"
        written.append(files.copy_file(files.image_path(root, record), out_dir / split / file_name))
        masks: dict[str, str | None] = {}
        for kind, src in (("semantic", files.semantic_path(root, record)), ("instances", files.instances_path(root, record))):
            if src is not None and src.is_file():
                masks[kind] = f"masks/{stem}_{kind}.png"
                written.append(files.copy_file(src, out_dir / split / masks[kind]))
        if split not in writers:
            writers[split] = MetadataWriter(out_dir / split / METADATA_FILE, categories)
        writers[split].add(metadata_row(record, file_name, masks))
    for _, writer in sorted(writers.items()):
        written.append(writer.close())
    return written
