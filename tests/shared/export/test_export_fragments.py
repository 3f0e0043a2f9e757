"""Exports merged from per-shard fragments are byte for byte the single-pass exports."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared import layout
from shared.export import write_exports
from shared.export.fragments import Fragment, FragmentError, merge_fragments
from shared.spec import EXPORT_FORMATS, parse_spec

N, SHARD = 37, 8  # the last shard is short


def _spec(formats=EXPORT_FORMATS):
    return parse_spec({"name": "frag", "model": "builtin:fleet-standin", "seed": 5, "num_images": N,
                       "classes": [{"name": "cat"}, {"name": "dog"}, {"name": "bird"}],
                       "prompts": {"templates": ["a {class} and a {class_2}"]},
                       "generation": {"width": 40, "height": 32, "steps": 1, "batch_size": 4},
                       "export": {"formats": list(formats), "splits": {"train": 0.5, "val": 0.3, "test": 0.2}}})


def _write_samples(root: Path, samples) -> list:
    records = []
    for gs in samples:
        folder = layout.sample_dir(root, gs.record.index)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in gs.files().items():
            (folder / name).write_bytes(data)
        records.append(gs.record)
    return records


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and layout.SAMPLES_DIR not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def samples():
    from worker.engine.standin import StandinEngine

    return list(StandinEngine(_spec()).generate(range(N)))


def _single_and_merged(tmp_path, samples, spec):
    single = tmp_path / "single"
    write_exports(single, spec, _write_samples(single, samples))
    fragments = []
    for start in range(0, N, SHARD):
        frag = tmp_path / f"shard{start // SHARD}"
        write_exports(frag, spec, _write_samples(frag, samples[start:start + SHARD]))
        shutil.rmtree(frag / layout.SAMPLES_DIR)  # a fragment never needs its samples again
        fragments.append(Fragment(frag))
    merged = tmp_path / "merged"
    merge_fragments(merged, spec, fragments)
    return _tree(single), _tree(merged)


def test_a_shared_file_without_a_merge_rule_is_refused(tmp_path, samples):
    spec = _spec(["masks"])
    frag = tmp_path / "f0"
    write_exports(frag, spec, _write_samples(frag, samples[:4]))
    (frag / "masks" / "stats.json").write_text("{}")
    with pytest.raises(FragmentError, match="masks/stats.json"):
        merge_fragments(tmp_path / "out", spec, [Fragment(frag)])
