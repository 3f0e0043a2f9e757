import json

import numpy as np
from PIL import Image

from shared.formats.export import write_masks


def test_masks_are_plain_pngs_per_split(dataset):
    written = write_masks(dataset.root, dataset.records, dataset.categories, dataset.splits)
    masks = dataset.root / "masks"
    assert json.loads((masks / "classes.json").read_text()) == {
        "background": 0,
        "ignore": 255,
        "classes": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    assert sorted(p.name for p in (masks / "train" / "semantic").iterdir()) == ["000000.png", "000001.png"]
    assert len(written) == 4 * 3 + 1
    with Image.open(masks / "train" / "semantic" / "000000.png") as img:
        assert img.mode == "L"
        assert np.array_equal(np.array(img), dataset.samples[0].semantic)
    with Image.open(masks / "test" / "instances" / "000003.png") as img:
        assert img.mode == "I;16"
        assert np.array_equal(np.array(img), dataset.samples[3].instances)
    assert (masks / "val" / "images" / "000002.png").read_bytes() == (
        dataset.root / "samples" / "000002" / "image.png"
    ).read_bytes()


def test_sample_without_masks_is_exported_as_image_only(dataset):
    no_masks = dataset.records[1].model_copy(
        update={"files": dataset.records[1].files.model_copy(update={"semantic": None, "instances": None})}
    )
    records = [no_masks if r.index == 1 else r for r in dataset.records]
    write_masks(dataset.root, records, dataset.categories, dataset.splits)
    assert (dataset.root / "masks" / "train" / "images" / "000001.png").is_file()
    assert not (dataset.root / "masks" / "train" / "semantic" / "000001.png").exists()
