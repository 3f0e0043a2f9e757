"""The WebDataset export loads with the `webdataset` package, and its labels match the masks."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from shared.formats.export.webdataset import write_webdataset


def test_webdataset_loads_with_the_webdataset_package(dataset):
    import webdataset as wds

    written = write_webdataset(dataset.root, dataset.records, dataset.categories, dataset.splits)
    assert written and all(p.suffix == ".tar" for p in written)
    seen = {}
    for path in written:
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            seen[sample["__key__"]] = sample
    assert len(seen) == len(dataset.records)
    for record in dataset.records:
        sample = seen[f"{record.index:06d}"]
        meta = json.loads(sample["json"])
        assert meta["index"] == record.index and meta["split"] == dataset.splits[record.index]
        image = np.array(Image.open(io.BytesIO(sample["png"])))
        assert image.shape[:2] == (record.height, record.width)
        instances = np.array(Image.open(io.BytesIO(sample["instances.png"])))
        semantic = np.array(Image.open(io.BytesIO(sample["semantic.png"])))
        assert instances.dtype == np.uint16 or instances.max() < 256
        for ann in meta["annotations"]:
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            mask = mask_utils.decode(rle).astype(bool)
            assert (mask == (instances == ann["instance_id"])).all()
            assert (semantic[mask] == ann["category_id"]).all()
            assert ann["category"] == dataset.categories[ann["category_id"] - 1]


def test_tars_are_byte_identical_on_rewrite(dataset):
    first = [p.read_bytes() for p in write_webdataset(dataset.root, dataset.records, dataset.categories, dataset.splits)]
    second = [p.read_bytes() for p in write_webdataset(dataset.root, dataset.records, dataset.categories, dataset.splits)]
    assert first == second
