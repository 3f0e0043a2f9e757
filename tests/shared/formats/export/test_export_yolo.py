import numpy as np
import pytest
import supervision as sv
import yaml

from shared.formats.export import write_yolo
from shared.formats.records import Annotation


def _load(ds, task, split, force_masks=False):
    base = ds.root / "yolo" / task
    loaded = sv.DetectionDataset.from_yolo(
        images_directory_path=str(base / "images" / split),
        annotations_directory_path=str(base / "labels" / split),
        data_yaml_path=str(base / "data.yaml"),
        force_masks=force_masks,
    )
    return loaded, {path.rsplit("/", 1)[-1]: det for path, _, det in loaded}


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_data_yaml_is_relative_and_names_classes(dataset):
    write_yolo(dataset.root, dataset.records, dataset.categories, dataset.splits)
    for task in ("detect", "segment"):
        data = yaml.safe_load((dataset.root / "yolo" / task / "data.yaml").read_text())
        assert "path" not in data  # Ultralytics then resolves against the yaml's folder
        assert data["names"] == {0: "cat", 1: "dog"}
        assert data["nc"] == 2
        assert {data["train"], data["val"], data["test"]} == {"images/train", "images/val", "images/test"}
        for split in ("train", "val", "test"):
            assert (dataset.root / "yolo" / task / data[split]).is_dir()


def test_detection_lines_are_normalised_centre_boxes(dataset):
    write_yolo(dataset.root, dataset.records, dataset.categories, dataset.splits)
    labels = dataset.root / "yolo" / "detect" / "labels"
    first = (labels / "train" / "000000.txt").read_text().splitlines()[0].split()
    # cat box x=4, y=4, w=20, h=16 in a 64 x 48 image
    assert first[0] == "0"
    assert [float(v) for v in first[1:]] == pytest.approx([14 / 64, 12 / 48, 20 / 64, 16 / 48], abs=1e-6)
    assert (labels / "train" / "000001.txt").read_text() == ""  # explicit "no object"


def test_supervision_loads_detection(dataset):
    write_yolo(dataset.root, dataset.records, dataset.categories, dataset.splits)
    loaded, by_name = _load(dataset, "detect", "train")
    assert loaded.classes == ["cat", "dog"]
    assert len(loaded) == 2
    assert len(by_name["000001.png"]) == 0
    det = by_name["000000.png"]
    assert det.class_id.tolist() == [0, 1, 0]
    np.testing.assert_allclose(det.xyxy[0], [4, 4, 24, 20], atol=1e-3)
    _, val = _load(dataset, "detect", "val")
    assert val["000002.png"].class_id.tolist() == [1, 0]


def test_supervision_loads_segmentation_and_masks_match(dataset):
    write_yolo(dataset.root, dataset.records, dataset.categories, dataset.splits)
    lines = (dataset.root / "yolo" / "segment" / "labels" / "train" / "000000.txt").read_text().splitlines()
    assert all(len(line.split()) >= 7 and len(line.split()) % 2 == 1 for line in lines)  # cls + >= 3 points
    loaded, by_name = _load(dataset, "segment", "train", force_masks=True)
    det = by_name["000000.png"]
    instances = dataset.samples[0].instances
    assert det.mask is not None and det.mask.shape == (3, *instances.shape)
    assert _iou(det.mask[0], instances == 1) > 0.95  # rectangle
    assert _iou(det.mask[1], instances == 2) > 0.9  # disc
    # Instance 3 has two blobs: only the larger one (rows 30..43, cols 4..15) is kept.
    big_blob = np.zeros_like(det.mask[2])
    big_blob[30:44, 4:16] = True
    assert _iou(det.mask[2], big_blob) > 0.95
    assert not det.mask[2][40:44, 22:26].any()


def test_instance_from_rle_only_and_box_only_instance(dataset):
    record = dataset.records[3]
    rle_only = record.annotations[0].model_copy(update={"polygons": []})
    box_only = Annotation(instance_id=9, category="cat", category_id=1, bbox=(0, 0, 8, 8), area=64, source="adaptor")
    records = [r for r in dataset.records if r.index != 3] + [
        record.model_copy(update={"annotations": [rle_only, box_only]})
    ]
    write_yolo(dataset.root, records, dataset.categories, dataset.splits)
    detect = (dataset.root / "yolo" / "detect" / "labels" / "test" / "000003.txt").read_text().splitlines()
    segment = (dataset.root / "yolo" / "segment" / "labels" / "test" / "000003.txt").read_text().splitlines()
    assert len(detect) == 2
    assert len(segment) == 1  # the box-only instance has no mask to write
    _, by_name = _load(dataset, "segment", "test", force_masks=True)
    assert _iou(by_name["000003.png"].mask[0], dataset.samples[3].instances == 5) > 0.95
