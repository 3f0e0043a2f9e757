import datasets
import pyarrow.parquet as pq
import pytest

from shared.formats.export import write_hf


@pytest.fixture
def load_offline(monkeypatch, tmp_path):
    # No network: the loader must find everything in the folder.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def load(data_dir):
        return datasets.load_dataset("imagefolder", data_dir=str(data_dir), cache_dir=str(tmp_path / "hf-cache"))

    return load


def test_metadata_rows(dataset):
    write_hf(dataset.root, dataset.records, dataset.categories, dataset.splits)
    rows = pq.read_table(dataset.root / "hf" / "train" / "metadata.parquet").to_pylist()
    assert [r["file_name"] for r in rows] == ["000000.png", "000001.png"]
    first = rows[0]
    assert first["index"] == 0 and first["seed"] == 1000 and first["prompt"].startswith("a photo")
    assert first["objects"]["category"] == [0, 1, 0]  # ClassLabel indexes of ["cat", "dog"]
    assert first["objects"]["category_id"] == [1, 2, 1]
    assert first["semantic_file_name"] == "masks/000000_semantic.png"
    assert first["objects"]["bbox"][0] == [4.0, 4.0, 20.0, 16.0]
    assert rows[1]["objects"]["bbox"] == []


def test_load_dataset_imagefolder_reads_every_split_with_metadata(dataset, load_offline):
    write_hf(dataset.root, dataset.records, dataset.categories, dataset.splits)
    ds = load_offline(dataset.root / "hf")
    assert set(ds) == {"train", "validation", "test"}
    assert (ds["train"].num_rows, ds["validation"].num_rows, ds["test"].num_rows) == (2, 1, 1)
    train = ds["train"].sort("index")
    assert train[0]["image"].size == (64, 48)
    names = ds["train"].features["objects"]["category"].feature.names
    assert names == ["cat", "dog"]
    assert [names[c] for c in train[0]["objects"]["category"]] == ["cat", "dog", "cat"]
    assert train[1]["objects"]["bbox"] == []
    val = ds["validation"][0]
    assert val["index"] == 2 and val["seed"] == 1002
    assert val["objects"]["bbox"] == [list(a.bbox) for a in dataset.records[2].annotations]


def test_a_split_without_any_object_loads_beside_splits_with_objects(dataset, load_offline):
    # Sample 1 (no objects) alone in "val": JSON lines would infer its objects as lists of
    # null and datasets would refuse the folder; the fixed parquet schema keeps them typed.
    splits = {r.index: "train" for r in dataset.records}
    splits[1] = "val"
    write_hf(dataset.root, dataset.records, dataset.categories, splits)
    ds = load_offline(dataset.root / "hf")
    assert ds["validation"][0]["objects"]["bbox"] == []
    assert ds["validation"].features == ds["train"].features


def test_masks_load_as_images_equal_to_the_samples(dataset, load_offline):
    import numpy as np

    write_hf(dataset.root, dataset.records, dataset.categories, dataset.splits)
    ds = load_offline(dataset.root / "hf")
    assert type(ds["train"].features["semantic"]).__name__ == "Image"
    for split in ds.values():
        for row in split:
            sample = dataset.samples[row["index"]]
            assert np.array_equal(np.asarray(row["semantic"]), sample.semantic)
            assert np.array_equal(np.asarray(row["instances"]).astype(np.uint16), sample.instances)
    assert ds["train"].features["objects"]["category"].feature.int2str(1) == "dog"


def test_metadata_in_several_row_groups_loads_with_every_row(dataset, load_offline, monkeypatch):
    # The writer streams fixed-size row groups (the fragment merge streams rows through it).
    from shared.formats.export import hf

    monkeypatch.setattr(hf, "ROWS_PER_GROUP", 1)
    splits = {r.index: "train" for r in dataset.records}
    write_hf(dataset.root, dataset.records, dataset.categories, splits)
    path = dataset.root / "hf" / "train" / "metadata.parquet"
    assert pq.ParquetFile(path).num_row_groups == len(dataset.records)
    assert list(hf.read_metadata_rows(path)) == pq.read_table(path).to_pylist()
    ds = load_offline(dataset.root / "hf")
    assert sorted(ds["train"]["index"]) == sorted(r.index for r in dataset.records)
