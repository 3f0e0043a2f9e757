"""Where things live inside a local dataset folder (the `dsgen run --out DIR` layout).

One module names every path so that the runner, the resume logic and the export writers
agree. (Object-store keys for the service live in `shared.storage.keys`.)

    DIR/
      spec.json                       the spec this folder was made from (resume checks it)
      samples/000000/image.png        one folder per sample; record.json is written last
      samples/000000/semantic.png       and marks the sample complete
      samples/000000/instances.png
      samples/000000/record.json
      coco/ yolo/ voc/ hf/ masks/     exports, written after every sample is complete
      manifest.json                   written last: the dataset's commit point
"""
from __future__ import annotations

from pathlib import Path

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
SAMPLES_DIR = "samples"
RECORD_FILE = "record.json"


def sample_dir_name(index: int) -> str:
    return f"{index:06d}"


def sample_dir(root: Path, index: int) -> Path:
    return root / SAMPLES_DIR / sample_dir_name(index)


def record_path(root: Path, index: int) -> Path:
    return sample_dir(root, index) / RECORD_FILE


def export_dir(root: Path, fmt: str) -> Path:
    return root / fmt


def sample_stem(index: int) -> str:
    """File stem of a sample inside exports (stable, sortable, unique)."""
    return f"{index:06d}"
