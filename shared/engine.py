"""The engine/service boundary, without torch: what an engine is and what it yields.

`Engine` is anything with `generate(indexes)` yielding `Sample`s in index order (the diffusion
`worker.engine.session.EngineSession`, the no-model `worker.engine.standin.StandinEngine`, the
tests' fake); `EngineFactory` builds one for a spec. `GeneratedSample` is the concrete sample
type (pixels and maps as arrays, plus its record). `sample_files` and `write_sample_files` are
the one writer of a sample's files, used by `dsgen run` (a folder) and the shard task (object
store + a scratch folder): the record is always written last, so a sample whose record exists
is complete.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from shared.formats.export.files import atomic_write_bytes, encode_png
from shared.formats.layout import RECORD_FILE
from shared.formats.records import SampleRecord


class Sample(Protocol):
    """What the service and the folder writer read of a generated sample."""

    record: SampleRecord
    image: Image.Image
    semantic: np.ndarray | None  # uint8 [H, W]: 0 background, category ids, 255 ignore

    def files(self) -> dict[str, bytes]:
        """File name -> bytes, record.json last."""
        ...


class Engine(Protocol):
    def generate(self, indexes: Sequence[int]) -> Iterable[Sample]:
        """The samples of `indexes`, in that order (a batch at a time)."""
        ...


# (spec[, uploads=fetch][, datasets=fetch]) -> Engine; `uploads` is passed only for specs that name
# uploads, `datasets` only for specs that name a dataset version.
EngineFactory = Callable[..., Engine]


@dataclass(frozen=True)
class LabelMaps:
    """Labels a method is given rather than derives (mask2image's input masks, a source's labels)."""

    semantic: np.ndarray  # uint8 [H, W], job category ids
    instances: np.ndarray | None  # uint16 [H, W] or None (then: connected components)


@dataclass
class GeneratedSample:
    record: SampleRecord
    image: Image.Image
    semantic: np.ndarray | None = None  # uint8 [H, W]: 0 background, category ids, 255 ignore
    instances: np.ndarray | None = None  # uint16 [H, W]: 0 none, else instance id
    seconds: float = 0.0  # share of its batch's wall time (not part of the record: see SampleRecord)

    def files(self) -> dict[str, bytes]:
        """File name -> bytes, record last (writers of these files must keep that order)."""
        out = {self.record.files.image: encode_png(self.image)}
        if self.semantic is not None and self.record.files.semantic:
            out[self.record.files.semantic] = encode_png(Image.fromarray(self.semantic, mode="L"))
        if self.instances is not None and self.record.files.instances:
            out[self.record.files.instances] = encode_png(Image.fromarray(self.instances.astype(np.uint16)))
        out[RECORD_FILE] = self.record.model_dump_json(indent=1).encode() + b"\n"
        return out


def sample_files(sample: Sample, extra: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The sample's files in write order, `extra` ones (e.g. the service's overlay) before the
    record, which always comes last."""
    files = dict(sample.files())
    record = files.pop(RECORD_FILE)
    files.update(extra or {})
    files[RECORD_FILE] = record
    return files


def write_sample_files(folder: Path, files: Mapping[str, bytes], durable: bool = True) -> None:
    """Write a sample's files into its folder in order (record last). `durable`: each file is
    written to a temporary name, fsynced and renamed (a dataset folder that a killed run
    resumes); without it plain writes (a scratch folder deleted with its task)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if durable:
            atomic_write_bytes(folder / name, data)
        else:
            (folder / name).write_bytes(data)

