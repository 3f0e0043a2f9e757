"""Source masks of mask-to-image jobs (and the real data of the segmenter): four folder layouts.

Every loader gives `MaskSource`s whose `load()` returns the label maps in the *job's*
category ids (0 background, 1..C the spec's classes in order, 255 ignore); source classes
the job does not name become 255 (their pixels are labelled, just not with a class we
generate). Formats (`SourceSpec.format`, or detected):

- masks: PNG label maps at the top (or in `semantic/`), values = the job's category ids;
  optional `instances/<stem>.png` (instance ids) and `images/<stem>.*` (the real image).
- coco: a COCO instances JSON; polygons/RLE rasterised in annotation order, crowd -> 255;
  images under the JSON's folder or `images/`; `caption` of an image entry if present.
- voc: `SegmentationClass/` (palette indices; class names from `labels.txt` /
  `class_names.txt` if present, else the 21 VOC classes), `SegmentationObject/`, `JPEGImages/`.
- dsgen: a folder from `dsgen run` or `dsgen shapes render` (`samples/*/record.json`); class
  names from spec.json and the records' annotations; the record's prompt is the caption.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from shared.engine import LabelMaps
from shared.formats import layout
from shared.formats.records import DROPPED, IGNORE
from shared.formats.spec import SourceSpec, SpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
FIELD = "mask2image.source"


class MaskSourceError(SpecError):
    def __init__(self, message: str, field: str = FIELD):
        super().__init__(message, field=field)


@dataclass(frozen=True)
class MaskSource:
    name: str  # the mask's path relative to the source root (what records name)
    caption: str | None
    image: Path | None  # the real image, when the source has one
    _load: Callable[[], LabelMaps] = field(repr=False, compare=False)

    def load(self) -> LabelMaps:
        return self._load()


def _class_lookup(classes: tuple[str, ...]) -> dict[str, int]:
    return {c.lower(): i + 1 for i, c in enumerate(classes)}


def _remap(values: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Source values -> job ids via `table`; 0 stays 0, 255 stays 255, unknown values -> 255."""
    lut = np.full(65536, IGNORE, dtype=np.uint8)
    lut[0] = 0
    for src, dst in table.items():
        lut[src] = dst
    return lut[values.astype(np.int64)]


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            raise MaskSourceError(f"{FIELD}: {path.name} is a colour image; masks are single-channel label maps (L, P or I;16)")
        return np.asarray(im).copy()


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _masks_folder(root: Path, classes: tuple[str, ...]) -> list[MaskSource]:
    sem_dir = root / "semantic" if (root / "semantic").is_dir() else root
    files = sorted(p for p in sem_dir.glob("*.png"))
    if not files:
        raise MaskSourceError(f"{FIELD}: no *.png masks in {sem_dir}")
    n = len(classes)
    identity = {i: i for i in range(1, n + 1)}

    def make(p: Path) -> MaskSource:
        inst = root / "instances" / p.name

        def load() -> LabelMaps:
            values = _read_png(p)
            bad = sorted(set(np.unique(values).tolist()) - set(range(n + 1)) - {IGNORE})
            if bad:
                raise MaskSourceError(
                    f"{FIELD}: {p.name} has value {bad[0]}, but the job has {n} classes (values 0..{n}, 255 ignore)"
                )
            return LabelMaps(_remap(values, identity), _read_png(inst).astype(np.uint16) if inst.is_file() else None)

        return MaskSource(str(p.relative_to(root)), None, _find_image(root / "images", p.stem), load)

    return [make(p) for p in files]


def _coco(root: Path, source: SourceSpec, classes: tuple[str, ...]) -> list[MaskSource]:
    from pycocotools import mask as mask_utils

    if source.coco:
        paths = [Path(source.coco) if Path(source.coco).is_absolute() else root / source.coco]
    else:
        # One COCO file, or the per-split files of a COCO export (annotations/instances_<split>.json).
        paths = sorted(root.glob("*.json")) or sorted(root.glob("annotations/*.json"))
        if not paths:
            raise MaskSourceError(f"{FIELD}.coco: no COCO JSON in {root}", field=f"{FIELD}.coco")
    images, cats, anns = [], {}, []
    for path in paths:
        if not path.is_file():
            raise MaskSourceError(f"{FIELD}.coco: file not found: {path}", field=f"{FIELD}.coco")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            images += data["images"]
            cats.update({int(c["id"]): str(c["name"]) for c in data["categories"]})
            anns += data.get("annotations", [])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise MaskSourceError(f"{FIELD}.coco: {path.name} is not a COCO instances file ({err})", field=f"{FIELD}.coco") from None
    path = paths[0]
    lookup = _class_lookup(classes)
    table = {cid: lookup.get(name.lower(), IGNORE) for cid, name in cats.items()}
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    image_dirs = [path.parent, root, root / "images"] + sorted(p for p in (root / "images").glob("*") if p.is_dir())

    def make(img: dict) -> MaskSource:
        h, w = int(img["height"]), int(img["width"])

        def load() -> LabelMaps:
            semantic = np.zeros((h, w), dtype=np.uint8)
            instances = np.zeros((h, w), dtype=np.uint16)
            for k, a in enumerate(by_image.get(int(img["id"]), []), start=1):
                seg = a.get("segmentation")
                if not seg:
                    continue
                rles = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else (
                    mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
                )
                m = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)
                if a.get("iscrowd"):
                    semantic[m] = IGNORE
                    continue
                semantic[m] = table.get(int(a["category_id"]), IGNORE)
                instances[m] = k
            return LabelMaps(semantic, instances)

        name = str(img["file_name"])
        image = next((d / name for d in image_dirs if (d / name).is_file()), None)
        return MaskSource(name, img.get("caption"), image, load)

    return [make(img) for img in sorted(images, key=lambda i: str(i["file_name"]))]


def _voc(root: Path, classes: tuple[str, ...]) -> list[MaskSource]:
    names = VOC_CLASSES
    for list_file in ("labels.txt", "class_names.txt"):
        if (root / list_file).is_file():
            names = tuple(line.strip() for line in (root / list_file).read_text().splitlines() if line.strip())
    lookup = _class_lookup(classes)
    table = {i: lookup.get(n.lower(), IGNORE) for i, n in enumerate(names) if i > 0}
    table.update({v: lookup.get(n.lower(), IGNORE) for v, n in _voc_names_from_objects(root).items()})
    files = sorted((root / "SegmentationClass").glob("*.png"))
    if not files:
        raise MaskSourceError(f"{FIELD}: no masks in {root / 'SegmentationClass'}")

    def make(p: Path) -> MaskSource:
        obj = root / "SegmentationObject" / p.name

        def load() -> LabelMaps:
            inst = None
            if obj.is_file():
                inst = _read_png(obj).astype(np.uint16)
                inst[inst == IGNORE] = 0
            return LabelMaps(_remap(_read_png(p), table), inst)

        return MaskSource(str(p.relative_to(root)), None, _find_image(root / "JPEGImages", p.stem), load)

    return [make(p) for p in files]


def _voc_names_from_objects(root: Path) -> dict[int, str]:
    """Class index -> name as the folder itself uses them: object k of Annotations/<stem>.xml is
    index k of SegmentationObject/<stem>.png, whose pixels carry the class index in
    SegmentationClass (so exports with their own class order are read right)."""
    import xml.etree.ElementTree as ET

    found: dict[int, str] = {}
    for xml in sorted((root / "Annotations").glob("*.xml")):
        cls_png, obj_png = root / "SegmentationClass" / f"{xml.stem}.png", root / "SegmentationObject" / f"{xml.stem}.png"
        if not (cls_png.is_file() and obj_png.is_file()):
            continue
        cls, obj = _read_png(cls_png), _read_png(obj_png)
        for k, node in enumerate(ET.parse(xml).getroot().iter("object"), start=1):
            values = cls[obj == k]
            values = values[(values != 0) & (values != IGNORE)]
            if values.size:
                found.setdefault(int(np.bincount(values).argmax()), (node.findtext("name") or "").strip())
    return found


def _dsgen(root: Path, classes: tuple[str, ...]) -> list[MaskSource]:
    names: dict[int, str] = {}
    spec_file = root / layout.SPEC_FILE
    if spec_file.is_file():
        for i, c in enumerate(json.loads(spec_file.read_text()).get("classes", [])):
            names[i + 1] = c["name"] if isinstance(c, dict) else str(c)
    records = []
    for rec_path in sorted((root / layout.SAMPLES_DIR).glob(f"*/{layout.RECORD_FILE}")):
        rec = json.loads(rec_path.read_text())
        if (rec.get("quality") or {}).get(DROPPED) or not (rec.get("files") or {}).get("semantic"):
            continue
        for a in rec.get("annotations", []):
            names.setdefault(int(a["category_id"]), a["category"])
        records.append((rec_path.parent, rec))
    if not records:
        raise MaskSourceError(f"{FIELD}: no labelled samples under {root / layout.SAMPLES_DIR}")
    lookup = _class_lookup(classes)
    table = {i: lookup.get(n.lower(), IGNORE) for i, n in names.items()}

    def make(folder: Path, rec: dict) -> MaskSource:
        files = rec["files"]

        def load() -> LabelMaps:
            inst = folder / files["instances"] if files.get("instances") else None
            return LabelMaps(
                _remap(_read_png(folder / files["semantic"]), table),
                _read_png(inst).astype(np.uint16) if inst is not None and inst.is_file() else None,
            )

        image = folder / files.get("image", "image.png")
        return MaskSource(str((folder / files["semantic"]).relative_to(root)), rec.get("prompt"), image if image.is_file() else None, load)

    return [make(f, r) for f, r in records]


def detect_format(root: Path) -> str:
    if (root / "segmenter.json").is_file():
        return "segmenter"
    if (root / layout.SAMPLES_DIR).is_dir():
        return "dsgen"
    if (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "config.json").is_file() and any(root.glob("diffusion_pytorch_model*")):
        return "controlnet"  # a diffusers model folder (mask2image.controlnet), not a COCO file
    if any(root.glob("*.json")) or any(root.glob("annotations/*.json")):
        return "coco"
    if any(root.glob("*.png")) or (root / "semantic").is_dir():
        return "masks"
    raise MaskSourceError(
        f"{FIELD}: cannot tell the layout of {root}: expected samples/ (dsgen), SegmentationClass/ (voc), "
        "a COCO *.json, or *.png masks; set source.format"
    )


def source_root(path: Path) -> Path:
    """An archive often wraps everything in one folder: use it as the root (unless `path` is one)."""
    try:
        detect_format(path)
        return path
    except MaskSourceError:
        pass
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return path


@functools.lru_cache(maxsize=4)
def load_mask_sources(source: SourceSpec, classes: tuple[str, ...], root: Path) -> tuple[MaskSource, ...]:
    """The masks of a source folder for a job with these class names, in a fixed order."""
    if not root.is_dir():
        raise MaskSourceError(f"{FIELD}.path: folder not found: {root}", field=f"{FIELD}.path")
    root = source_root(root)
    fmt = detect_format(root) if source.format == "auto" else source.format
    loaders = {
        "masks": lambda: _masks_folder(root, classes),
        "coco": lambda: _coco(root, source, classes),
        "voc": lambda: _voc(root, classes),
        "dsgen": lambda: _dsgen(root, classes),
    }
    if fmt not in loaders:
        raise MaskSourceError(f"{FIELD}: {root} holds a {fmt}, not masks (expected a dsgen, COCO, VOC or masks folder)")
    found = loaders[fmt]()
    if not found:
        raise MaskSourceError(f"{FIELD}: no masks found in {root} ({fmt})")
    return tuple(found)


def source_class_names(root: Path, fmt: str = "auto") -> list[str]:
    """The class names a source itself defines, in its id order (for `dsgen segmenter train`)."""
    root = source_root(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    names: dict[int, str] = {}
    if fmt == "dsgen":
        spec_file = root / layout.SPEC_FILE
        if spec_file.is_file():
            names.update({i + 1: c["name"] for i, c in enumerate(json.loads(spec_file.read_text()).get("classes", []))})
        for rec_path in sorted((root / layout.SAMPLES_DIR).glob(f"*/{layout.RECORD_FILE}")):
            for a in json.loads(rec_path.read_text()).get("annotations", []):
                names.setdefault(int(a["category_id"]), a["category"])
    elif fmt == "coco":
        for path in sorted(root.glob("*.json")) or sorted(root.glob("annotations/*.json")):
            for c in json.loads(path.read_text()).get("categories", []):
                names.setdefault(int(c["id"]), str(c["name"]))
    elif fmt == "voc":
        names.update(_voc_names_from_objects(root))
    if not names:
        raise MaskSourceError(f"{FIELD}: {root} ({fmt}) does not name its classes; pass them (--classes a,b,c)")
    return [names[k] for k in sorted(names)]
