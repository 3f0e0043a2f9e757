"""Pascal VOC export (the VOC2012 devkit layout).

    voc/Annotations/<stem>.xml
    voc/JPEGImages/<stem>.jpg                 JPEG quality 95 (VOC readers expect .jpg)
    voc/ImageSets/Main/<split>.txt            every sample of the split (and trainval = train + val)
    voc/ImageSets/Main/<class>_<split>.txt    every sample of the split, then 1 (has the class) or -1
    voc/ImageSets/Segmentation/<split>.txt    samples of the split that have masks (and trainval)
    voc/SegmentationClass/<stem>.png          palette PNG: 0 background, class ids, 255 ignore
    voc/SegmentationObject/<stem>.png         palette PNG: object k of the XML = index k, 255 ignore

Boxes use the devkit convention: 1-based inclusive pixel indices, so a box covering
pixel columns x .. x+w-1 (0-based) is xmin = x + 1, xmax = x + w.

SegmentationObject numbers objects in XML order as VOC does (not by instance id, which
is uint16 and may exceed a palette's range); objects past the 254th are marked 255.
`trainval` is what torchvision's `VOCSegmentation(image_set="trainval")` and the devkit's
classification lists read; it is written whenever there is a train or val split.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import IGNORE, Annotation, SampleRecord

FORMAT = "voc"
MAX_OBJECTS = 254  # indices 1..254; 255 is ignore


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC palette: bits of the index spread over R, G, B (MSB first).

    Index 255 comes out as (224, 224, 192), the colour VOC draws its ignore border in.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_PALETTE = voc_colormap().reshape(-1).tolist()


def palette_png(indices: np.ndarray) -> bytes:
    img = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8))
    img.putpalette(_PALETTE)  # turns the "L" image into "P" with the VOC palette
    return files.encode_png(img)


def voc_bndbox(ann: Annotation, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = ann.bbox
    xmin = min(max(round(x) + 1, 1), width)
    ymin = min(max(round(y) + 1, 1), height)
    xmax = min(max(round(x + w), xmin), width)
    ymax = min(max(round(y + h), ymin), height)
    return xmin, ymin, xmax, ymax


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def annotation_xml(record: SampleRecord, filename: str, segmented: bool) -> bytes:
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC")
    _sub(root, "filename", filename)
    source = _sub(root, "source")
    _sub(source, "database", "dsgen")
    size = _sub(root, "size")
    _sub(size, "width", record.width)
    _sub(size, "height", record.height)
    _sub(size, "depth", 3)
    _sub(root, "segmented", int(segmented))
    for ann in record.annotations:
        obj = _sub(root, "object")
        _sub(obj, "name", ann.category)
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", 0)
        box = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), voc_bndbox(ann, record.width, record.height)):
            _sub(box, tag, value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def object_indices(record: SampleRecord, instances: np.ndarray, semantic: np.ndarray | None) -> np.ndarray:
    """Instance-id mask -> VOC object mask (XML order 1..N, 255 on ignore pixels)."""
    out = np.zeros(instances.shape, dtype=np.uint8)
    for k, ann in enumerate(record.annotations, start=1):
        out[instances == ann.instance_id] = k if k <= MAX_OBJECTS else IGNORE
    if semantic is not None:
        out[semantic == IGNORE] = IGNORE
    return out


def write_voc(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    written: list[Path] = []
    main_sets: dict[str, list[str]] = {}
    seg_sets: dict[str, list[str]] = {}
    present: dict[str, set[str]] = {}  # stem -> class names in it
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        stem = layout.sample_stem(record.index)
        main_sets.setdefault(split, []).append(stem)
        present[stem] = {a.category for a in record.annotations}

        with Image.open(files.image_path(root, record)) as img:
            jpeg = files.encode_jpeg(img)
        written.append(files.atomic_write_bytes(out_dir / "JPEGImages" / f"{stem}.jpg", jpeg))

        semantic = files.read_mask(files.semantic_path(root, record))
        instances = files.read_mask(files.instances_path(root, record))
        if semantic is not None:
            seg_sets.setdefault(split, []).append(stem)
            written.append(
                files.atomic_write_bytes(out_dir / "SegmentationClass" / f"{stem}.png", palette_png(semantic))
            )
        if instances is not None:
            objects = object_indices(record, instances, semantic)
            written.append(
                files.atomic_write_bytes(out_dir / "SegmentationObject" / f"{stem}.png", palette_png(objects))
            )
        xml = annotation_xml(record, f"{stem}.jpg", segmented=semantic is not None)
        written.append(files.atomic_write_bytes(out_dir / "Annotations" / f"{stem}.xml", xml))

    for sets in (main_sets, seg_sets):
        if "train" in sets or "val" in sets:
            sets["trainval"] = sorted(sets.get("train", []) + sets.get("val", []))
    for folder, sets in (("Main", main_sets), ("Segmentation", seg_sets)):
        for split, stems in sorted(sets.items()):
            text = "".join(f"{s}\n" for s in stems)
            written.append(files.atomic_write_text(out_dir / "ImageSets" / folder / f"{split}.txt", text))
    for split, stems in sorted(main_sets.items()):
        for name in categories:
            text = "".join(f"{stem} {1 if name in present[stem] else -1:>2}\n" for stem in stems)
            written.append(files.atomic_write_text(out_dir / "ImageSets" / "Main" / f"{name}_{split}.txt", text))
    return written
