import json

import numpy as np
import pytest
import supervision as sv
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from shared.formats.export import write_coco
from shared.formats.records import Annotation


def _load(ds, split):
    return COCO(str(ds.root / "coco" / "annotations" / f"instances_{split}.json"))


def test_one_file_per_split_and_images_copied(dataset):
    written = write_coco(dataset.root, dataset.records, dataset.categories, dataset.splits)
    coco_dir = dataset.root / "coco"
    assert sorted(p.name for p in (coco_dir / "annotations").iterdir()) == [
        "instances_test.json", "instances_train.json", "instances_val.json",
    ]
    assert sorted(p.name for p in (coco_dir / "images" / "train").iterdir()) == ["000000.png", "000001.png"]
    # Byte copies of the sample images.
    assert (coco_dir / "images" / "val" / "000002.png").read_bytes() == (
        dataset.root / "samples" / "000002" / "image.png"
    ).read_bytes()
    assert all(p.is_file() for p in written)
    assert len(written) == 4 + 3


def test_loads_in_pycocotools_with_masks_and_boxes_matching(dataset):
    write_coco(dataset.root, dataset.records, dataset.categories, dataset.splits)
    coco = _load(dataset, "train")
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert coco.getCatIds() == [1, 2]
    assert sorted(coco.getImgIds()) == [1, 2]  # samples 0 and 1, id = index + 1
    assert coco.getAnnIds(imgIds=[2]) == []  # sample 1 has no object

    sample = dataset.samples[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == 3
    for ann in anns:
        expected = sample.instances == [iid for iid, _ in sorted(sample.categories.items())][ann["id"] - 1]
        decoded = coco.annToMask(ann).astype(bool)
        assert np.array_equal(decoded, expected)
        ys, xs = np.nonzero(expected)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == expected.sum()
        assert ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["category_id"] == sample.categories[int(sample.instances[ys[0], xs[0]])]
    img = coco.loadImgs([1])[0]
    assert (img["width"], img["height"], img["file_name"]) == (64, 48, "000000.png")


def test_loadres_accepts_the_annotations_as_predictions(dataset):
    write_coco(dataset.root, dataset.records, dataset.categories, dataset.splits)
    coco = _load(dataset, "train")
    predictions = [
        {k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in coco.loadAnns(coco.getAnnIds())
    ]
    results = coco.loadRes(predictions)
    assert len(results.getAnnIds()) == 3
    ann = results.loadAnns(results.getAnnIds())[0]
    assert ann["score"] == pytest.approx(0.6)
    # loadRes recomputes bbox/area from the RLE: they must agree with what we wrote.
    assert list(ann["bbox"]) == coco.loadAnns(coco.getAnnIds())[0]["bbox"]


def test_supervision_from_coco_loads_boxes_masks_and_classes(dataset):
    write_coco(dataset.root, dataset.records, dataset.categories, dataset.splits)
    loaded = sv.DetectionDataset.from_coco(
        images_directory_path=str(dataset.root / "coco" / "images" / "train"),
        annotations_path=str(dataset.root / "coco" / "annotations" / "instances_train.json"),
        force_masks=True,
    )
    assert loaded.classes == ["cat", "dog"]
    assert len(loaded) == 2
    by_name = {path.rsplit("/", 1)[-1]: det for path, _, det in loaded}
    det = by_name["000000.png"]
    assert len(by_name["000001.png"]) == 0
    assert det.class_id.tolist() == [0, 1, 0]  # 0-based class index of cat, dog, cat
    np.testing.assert_allclose(det.xyxy[0], [4, 4, 24, 20])
    assert np.array_equal(det.mask[1], dataset.samples[0].instances == 2)


def test_polygon_only_and_box_only_annotations(dataset):
    record = dataset.records[2]
    rle_ann, box_ann = record.annotations
    polygon_only = rle_ann.model_copy(update={"rle": None})
    box_only = Annotation(instance_id=9, category="cat", category_id=1, bbox=(1, 2, 3, 4), area=12, source="adaptor")
    records = [r for r in dataset.records if r.index != 2] + [
        record.model_copy(update={"annotations": [polygon_only, box_only]})
    ]
    write_coco(dataset.root, records, dataset.categories, dataset.splits)
    doc = json.loads((dataset.root / "coco" / "annotations" / "instances_val.json").read_text())
    poly, box = doc["annotations"]
    assert "segmentation" not in box and box["bbox"] == [1, 2, 3, 4]
    decoded = mask_utils.decode({**poly["segmentation"], "counts": poly["segmentation"]["counts"].encode()})
    truth = dataset.samples[2].instances == rle_ann.instance_id
    # Contour polygons through pixel centres rasterise to roughly the mask (edges may differ).
    assert (decoded.astype(bool) & truth).sum() / (decoded.astype(bool) | truth).sum() > 0.8
    COCO(str(dataset.root / "coco" / "annotations" / "instances_val.json"))  # still loads


def test_category_mismatch_is_refused(dataset):
    bad = dataset.records[0].model_copy(
        update={"annotations": [dataset.records[0].annotations[0].model_copy(update={"category_id": 2})]}
    )
    with pytest.raises(ValueError, match="does not match"):
        write_coco(dataset.root, [bad], dataset.categories, dataset.splits)


def test_annotation_ids_are_unique_across_split_files(dataset):
    write_coco(dataset.root, dataset.records, dataset.categories, dataset.splits)
    ann_dir = dataset.root / "coco" / "annotations"
    merged = [a for f in sorted(ann_dir.glob("instances_*.json")) for a in json.loads(f.read_text())["annotations"]]
    ids = [a["id"] for a in merged]
    assert len(merged) >= 5 and len(set(ids)) == len(ids)
    assert sorted(ids) == list(range(1, len(ids) + 1))
    # Merged into one file, pycocotools reads every annotation (duplicate ids would overwrite).
    doc = json.loads((ann_dir / "instances_train.json").read_text())
    doc["images"] = [i for f in sorted(ann_dir.glob("instances_*.json")) for i in json.loads(f.read_text())["images"]]
    doc["annotations"] = merged
    (dataset.root / "all.json").write_text(json.dumps(doc))
    assert len(COCO(str(dataset.root / "all.json")).anns) == len(merged)
