import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shared.formats.export as export
from shared.formats.export import write_exports
from shared.formats.export.splits import assign_splits

EXPORT_DIRS = ("coco", "yolo", "voc", "hf", "masks")


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_twice_gives_identical_bytes(dataset, spec):
    manifest = write_exports(dataset.root, spec, dataset.records)
    first = tree_hashes(dataset.root)
    assert manifest == dataset.root / "manifest.json"
    assert write_exports(dataset.root, spec, dataset.records) == manifest
    assert tree_hashes(dataset.root) == first
    assert all(any(path.startswith(f"{d}/") for path in first) for d in EXPORT_DIRS)


def test_same_samples_in_another_folder_give_the_same_bytes(dataset_factory, spec):
    a, b = dataset_factory("a"), dataset_factory("b")
    write_exports(a.root, spec, a.records)
    write_exports(b.root, spec, list(reversed(b.records)))  # order of records does not matter
    assert tree_hashes(a.root) == tree_hashes(b.root)  # no absolute path, no timestamp


def test_rerun_after_a_partial_run_cleans_up(dataset_factory, spec):
    clean, partial = dataset_factory("clean"), dataset_factory("partial")
    write_exports(clean.root, spec, clean.records)
    # A run that died halfway: a stale image of a sample that no longer exists, a
    # temporary file, a half-written json, and an old manifest.
    (partial.root / "coco" / "images" / "train").mkdir(parents=True)
    (partial.root / "coco" / "images" / "train" / "999999.png").write_bytes(b"stale")
    (partial.root / "yolo" / "detect").mkdir(parents=True)
    (partial.root / "yolo" / "detect" / ".tmp-data.yaml").write_text("half")
    (partial.root / "hf" / "train").mkdir(parents=True)
    (partial.root / "hf" / "train" / "metadata.parquet").write_bytes(b"PAR1 half")
    (partial.root / "manifest.json").write_text("{}")
    write_exports(partial.root, spec, partial.records)
    assert tree_hashes(partial.root) == tree_hashes(clean.root)


def test_a_failing_writer_leaves_no_manifest(dataset, spec, monkeypatch):
    write_exports(dataset.root, spec, dataset.records)
    assert (dataset.root / "manifest.json").is_file()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setitem(export.WRITERS, "voc", broken)
    with pytest.raises(OSError):
        write_exports(dataset.root, spec, dataset.records)
    # The old manifest would vouch for exports that are being rewritten: it must be gone.
    assert not (dataset.root / "manifest.json").exists()


def test_manifest_lists_every_exported_file_with_its_sha256(dataset, spec):
    manifest_path = write_exports(dataset.root, spec, dataset.records)
    manifest = json.loads(manifest_path.read_text())
    on_disk = {
        path: digest
        for path, digest in tree_hashes(dataset.root).items()
        if path.split("/", 1)[0] in EXPORT_DIRS
    }
    assert {path: entry["sha256"] for path, entry in manifest["files"].items()} == on_disk
    assert all(entry["bytes"] == (dataset.root / path).stat().st_size for path, entry in manifest["files"].items())
    assert manifest_path.read_text() == json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_manifest_samples_carry_the_audit_trail(dataset, spec):
    manifest = json.loads(write_exports(dataset.root, spec, dataset.records).read_text())
    assert manifest["spec"] == spec.model_dump(mode="json")
    assert manifest["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    samples = {s["index"]: s for s in manifest["samples"]}
    assert sorted(samples) == [0, 1, 2, 3]
    s0 = samples[0]
    split = assign_splits(spec.seed, [r.index for r in dataset.records], spec.export.splits)[0]
    assert s0["split"] == split
    assert (s0["seed"], s0["model"], s0["method"]) == (1000, {"id": "builtin:tiny", "revision": "abc123"}, "text2image")
    assert s0["parameters"] == {"steps": 2, "guidance_scale": 7.5}
    assert s0["quality"]["uncertain_fraction"] > 0
    assert s0["num_annotations"] == 3
    assert s0["exports"]["coco"] == [f"coco/images/{split}/000000.png"]
    assert s0["exports"]["voc"] == [
        "voc/Annotations/000000.xml",
        "voc/JPEGImages/000000.jpg",
        "voc/SegmentationClass/000000.png",
        "voc/SegmentationObject/000000.png",
    ]
    assert len(s0["exports"]["yolo"]) == 4  # image + label, detect and segment
    assert sum(manifest["splits"].values()) == 4


def test_only_the_requested_formats_are_written(dataset, spec):
    coco_only = spec.model_copy(update={"export": spec.export.model_copy(update={"formats": ["coco"]})})
    manifest = json.loads(write_exports(dataset.root, coco_only, dataset.records).read_text())
    assert {p.split("/", 1)[0] for p in manifest["files"]} == {"coco"}
    assert not (dataset.root / "voc").exists()


def test_export_package_imports_neither_torch_nor_web_stack():
    code = (
        "import sys, shared.formats.export; "
        "bad = {'torch', 'fastapi', 'celery'} & set(sys.modules); "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[4]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
