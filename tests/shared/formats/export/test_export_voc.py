import xml.etree.ElementTree as ET

import numpy as np
import supervision as sv
from PIL import Image

from shared.formats.export import write_voc
from shared.formats.export.voc import voc_colormap


def _voc(ds):
    write_voc(ds.root, ds.records, ds.categories, ds.splits)
    return ds.root / "voc"


def test_standard_colormap():
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[2].tolist() == [0, 128, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # "person" in VOC
    assert cmap[255].tolist() == [224, 224, 192]  # the ignore border colour


def test_xml_follows_the_devkit(dataset):
    voc = _voc(dataset)
    root = ET.parse(voc / "Annotations" / "000000.xml").getroot()
    assert root.findtext("filename") == "000000.jpg"
    assert (root.findtext("size/width"), root.findtext("size/height"), root.findtext("size/depth")) == ("64", "48", "3")
    objects = root.findall("object")
    assert [o.findtext("name") for o in objects] == ["cat", "dog", "cat"]
    assert all(o.findtext("difficult") == "0" and o.findtext("truncated") == "0" for o in objects)
    # cat covers columns 4..23 and rows 4..19 (0-based): 1-based inclusive 5..24, 5..20
    box = objects[0].find("bndbox")
    assert [box.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")] == ["5", "5", "24", "20"]
    assert ET.parse(voc / "Annotations" / "000001.xml").getroot().findall("object") == []


def test_image_sets_and_jpegs(dataset):
    voc = _voc(dataset)
    assert (voc / "ImageSets" / "Main" / "train.txt").read_text() == "000000\n000001\n"
    assert (voc / "ImageSets" / "Main" / "val.txt").read_text() == "000002\n"
    assert (voc / "ImageSets" / "Segmentation" / "test.txt").read_text() == "000003\n"
    with Image.open(voc / "JPEGImages" / "000002.jpg") as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (64, 48), "RGB")
        with Image.open(dataset.root / "samples" / "000002" / "image.png") as src:
            # quality 95 without chroma subsampling: close to the source even on noise
            err = np.abs(np.asarray(img, float) - np.asarray(src.convert("RGB"), float)).mean()
            assert err < 8


def test_segmentation_class_is_a_palette_png_with_ignore(dataset):
    voc = _voc(dataset)
    with Image.open(voc / "SegmentationClass" / "000000.png") as img:
        assert img.mode == "P"
        indices = np.array(img)
        palette = np.array(img.getpalette()).reshape(-1, 3)
    semantic = dataset.samples[0].semantic
    assert np.array_equal(indices, semantic)
    assert (indices == 255).sum() == (semantic == 255).sum() > 0  # the ignore band survived
    assert palette[255].tolist() == [224, 224, 192]
    assert palette[1].tolist() == [128, 0, 0]
    rgb = np.array(Image.open(voc / "SegmentationClass" / "000000.png").convert("RGB"))
    assert (rgb[semantic == 255] == [224, 224, 192]).all()


def test_segmentation_object_numbers_objects_in_xml_order(dataset):
    voc = _voc(dataset)
    with Image.open(voc / "SegmentationObject" / "000003.png") as img:
        assert img.mode == "P"
        objects = np.array(img)
    # Sample 3 has one object with instance id 5: VOC calls it object 1.
    assert set(np.unique(objects).tolist()) == {0, 1}
    assert np.array_equal(objects == 1, dataset.samples[3].instances == 5)
    with Image.open(voc / "SegmentationObject" / "000000.png") as img:
        objects0 = np.array(img)
    assert np.array_equal(objects0 == 255, dataset.samples[0].semantic == 255)


def test_supervision_from_pascal_voc(dataset):
    voc = _voc(dataset)
    loaded = sv.DetectionDataset.from_pascal_voc(
        images_directory_path=str(voc / "JPEGImages"),
        annotations_directory_path=str(voc / "Annotations"),
    )
    assert len(loaded) == 4
    assert sorted(loaded.classes) == ["cat", "dog"]
    by_name = {path.rsplit("/", 1)[-1]: det for path, _, det in loaded}
    assert sum(len(d) for d in by_name.values()) == 6
    assert len(by_name["000001.jpg"]) == 0
    det = by_name["000000.jpg"]
    assert [loaded.classes[c] for c in det.class_id] == ["cat", "dog", "cat"]
    np.testing.assert_allclose(det.xyxy[0], [4, 4, 24, 20])


def test_trainval_and_per_class_image_sets(dataset):
    write_voc(dataset.root, dataset.records, dataset.categories, dataset.splits)
    sets = dataset.root / "voc" / "ImageSets"
    assert (sets / "Main" / "trainval.txt").read_text().split() == ["000000", "000001", "000002"]
    assert (sets / "Segmentation" / "trainval.txt").read_text().split() == ["000000", "000001", "000002"]
    for split, stems in (("train", ["000000", "000001"]), ("val", ["000002"]), ("test", ["000003"]),
                         ("trainval", ["000000", "000001", "000002"])):
        for name in dataset.categories:
            lines = [line.split() for line in (sets / "Main" / f"{name}_{split}.txt").read_text().splitlines()]
            assert [stem for stem, _ in lines] == stems
            for stem, flag in lines:
                record = dataset.records[int(stem)]
                has = any(a.category == name for a in record.annotations)
                assert flag == ("1" if has else "-1"), (name, stem)
    # what torchvision's VOCSegmentation(image_set="trainval") reads: every listed file exists
    for stem in (sets / "Segmentation" / "trainval.txt").read_text().split():
        assert (dataset.root / "voc" / "JPEGImages" / f"{stem}.jpg").is_file()
        assert (dataset.root / "voc" / "SegmentationClass" / f"{stem}.png").is_file()
