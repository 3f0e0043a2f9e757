"""Exports merged from per-shard fragments are byte for byte the single-pass exports."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.formats import layout
from shared.formats.export import write_exports
from shared.formats.export.fragments import Fragment, FragmentError, merge_fragments
from shared.formats.spec import EXPORT_FORMATS, parse_spec

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


def _single_and_merged(tmp_path, samples, spec, shard=SHARD):
    single = tmp_path / "single"
    write_exports(single, spec, _write_samples(single, samples))
    fragments = []
    for start in range(0, len(samples), shard):
        frag = tmp_path / f"shard{start // shard}"
        write_exports(frag, spec, _write_samples(frag, samples[start:start + shard]))
        shutil.rmtree(frag / layout.SAMPLES_DIR)  # a fragment never needs its samples again
        fragments.append(Fragment(frag))
    merged = tmp_path / "merged"
    merge_fragments(merged, spec, fragments)
    return _tree(single), _tree(merged)


def _dropped(gs):
    """The sample as the labeler's drop leaves it: its record kept, marked dropped."""
    import copy

    gs = copy.copy(gs)
    gs.record = gs.record.model_copy(update={"quality": {**gs.record.quality, "dropped": True}})
    return gs


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_each_format_merged_from_fragments_is_byte_for_byte_the_single_pass(tmp_path, samples, fmt):
    single, merged = _single_and_merged(tmp_path, samples, _spec([fmt]))
    assert any(k.startswith(f"{fmt}/") for k in single)
    assert sorted(merged) == sorted(single)
    differ = [k for k in single if merged[k] != single[k]]
    assert not differ, differ


def test_all_formats_merged_with_uneven_shards_and_dropped_samples_are_the_single_pass(tmp_path, samples):
    # shard 1 (indexes 8..15) loses everything, others lose one sample
    kept = [_dropped(gs) if (8 <= gs.record.index < 16 or gs.record.index in (3, 30)) else gs for gs in samples]
    single, merged = _single_and_merged(tmp_path, kept, _spec(), shard=8)
    assert set(merged) == set(single) and all(merged[k] == single[k] for k in single)
    manifest = json.loads(merged["manifest.json"])
    assert {s["index"] for s in manifest["samples"]} == set(range(N)) - set(range(8, 16)) - {3, 30}


def test_the_merge_keeps_the_jobs_guarantees(tmp_path, samples):
    """Exact split counts over the whole job, COCO ids unique across the split files, HF mask
    columns naming files that exist: what a per-shard export alone could not know."""
    from collections import Counter

    from shared.formats.export.splits import split_counts

    spec = _spec()
    _, merged = _single_and_merged(tmp_path, samples, spec, shard=5)
    manifest = json.loads(merged["manifest.json"])
    assert manifest["splits"] == split_counts(N, spec.export.splits)
    assert Counter(s["split"] for s in manifest["samples"]) == manifest["splits"]
    ann_ids, image_ids = [], []
    for split in manifest["splits"]:
        doc = json.loads(merged[f"coco/annotations/instances_{split}.json"])
        ann_ids += [a["id"] for a in doc["annotations"]]
        image_ids += [i["id"] for i in doc["images"]]
    assert len(ann_ids) == len(set(ann_ids)) == sum(s["num_annotations"] for s in manifest["samples"]) > 0
    assert sorted(ann_ids) == list(range(1, len(ann_ids) + 1))
    assert sorted(image_ids) == [i + 1 for i in range(N)]
    import io

    import pyarrow.parquet as pq

    for split in manifest["splits"]:
        rows = pq.read_table(io.BytesIO(merged[f"hf/{split}/metadata.parquet"])).to_pylist()
        assert len(rows) == manifest["splits"][split]
        for row in rows:
            for col in ("semantic_file_name", "instances_file_name"):
                assert f"hf/{split}/{row[col]}" in merged


def test_metadata_parquet_over_several_row_groups_merges_to_the_same_bytes(tmp_path, samples, monkeypatch):
    from shared.formats.export import hf

    monkeypatch.setattr(hf, "ROWS_PER_GROUP", 3)  # row groups cut across the shards
    single, merged = _single_and_merged(tmp_path, samples, _spec(["hf"]))
    assert {k: v for k, v in merged.items()} == single
    import io

    import pyarrow.parquet as pq

    assert pq.ParquetFile(io.BytesIO(single["hf/train/metadata.parquet"])).num_row_groups > 1


def test_a_fragment_is_current_only_for_its_version_and_spec(tmp_path, samples):
    from shared.formats.export.fragments import pack_fragment, unpack_fragment

    spec = _spec(["coco"])
    frag = tmp_path / "f"
    write_exports(frag, spec, _write_samples(frag, samples[:8]))
    packed = unpack_fragment(pack_fragment(frag), tmp_path / "unpacked")
    assert packed.is_current(spec)
    assert not packed.is_current(_spec(["coco", "yolo"]))  # made for another spec
    (tmp_path / "unpacked" / "fragment.json").unlink()  # a fragment from before version 2
    assert not Fragment(tmp_path / "unpacked").is_current(spec)


def test_a_shared_file_without_a_merge_rule_is_refused(tmp_path, samples):
    spec = _spec(["masks"])
    frag = tmp_path / "f0"
    write_exports(frag, spec, _write_samples(frag, samples[:4]))
    (frag / "masks" / "stats.json").write_text("{}")
    with pytest.raises(FragmentError, match="masks/stats.json"):
        merge_fragments(tmp_path / "out", spec, [Fragment(frag)])
