"""Shapes of each class from a labelled dataset, fitted into asked boxes (`layout.shapes`).

A layout asks for a class at a box. A model trained with rectified cross-attention (the shapes
models, FreestyleNet) draws its words' region: a box-shaped region makes a box-shaped object.
Giving each object a real instance mask of its class, scaled into its box, tells such a model
the class's shape as well as the place, and the same mask is the object's label.

Instances touching the image border are left out (they are cut, not the class's shape). Instances
touching another object may be partly hidden behind it, so a class's shapes are its free-standing
instances when it has at least `MIN_FREE` of them, else all. The bank reads the source in its
fixed order and stops once every class it needs has `PER_CLASS` free-standing shapes, so a large
dataset costs a few hundred label maps, not all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from shared.formats.spec import SpecError
from worker.engine.mask_sources import MaskSource

FIELD = "layout.shapes"
PER_CLASS = 64  # shapes kept per class: enough variety for a job, few maps read
MIN_FREE = 8  # free-standing shapes a class needs before its touching ones are left out
MIN_PIXELS = 16  # smaller instances carry no shape worth copying
_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Shape:
    source: str  # the source mask it came from (records name it)
    mask: np.ndarray  # bool [h, w], cropped to the instance's bounding box


@dataclass
class ShapeBank:
    shapes: dict[int, list[Shape]] = field(default_factory=dict)  # category id -> shapes

    def fitted(self, category_id: int, rng: np.random.Generator, height: int, width: int) -> Shape:
        """One of the class's shapes, chosen with `rng`, scaled (nearest) to `height` x `width`."""
        shape = self.shapes[category_id][int(rng.integers(len(self.shapes[category_id])))]
        image = Image.fromarray(shape.mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
        return Shape(shape.source, np.asarray(image) > 127)


def _instances(semantic: np.ndarray, instances: np.ndarray | None) -> list[tuple[int, np.ndarray]]:
    """(category id, bool mask) of every instance of a label map."""
    out = []
    if instances is not None:
        for k in np.unique(instances):
            if k == 0:
                continue
            mask = instances == k
            ids = semantic[mask]
            ids = ids[(ids > 0) & (ids < 255)]
            if ids.size:
                out.append((int(np.bincount(ids).argmax()), mask))
        return out
    for cid in np.unique(semantic):
        if cid in (0, 255):
            continue
        components, n = ndimage.label(semantic == cid, structure=_STRUCTURE)
        out += [(int(cid), components == k) for k in range(1, n + 1)]
    return out


def build_shape_bank(sources: Sequence[MaskSource], needed: dict[int, str], field: str = FIELD) -> ShapeBank:
    """Shapes of the classes in `needed` (category id -> name) from `sources`, in their order."""
    free: dict[int, list[Shape]] = {cid: [] for cid in needed}
    touching: dict[int, list[Shape]] = {cid: [] for cid in needed}
    for source in sources:
        if all(len(v) >= PER_CLASS for v in free.values()):
            break
        maps = source.load()
        objects = (maps.semantic > 0) & (maps.semantic < 255)
        for cid, mask in _instances(maps.semantic, maps.instances):
            if cid not in free or len(free[cid]) >= PER_CLASS or mask.sum() < MIN_PIXELS:
                continue
            ((rows, cols),) = ndimage.find_objects(mask.astype(np.uint8))
            if rows.start == 0 or cols.start == 0 or rows.stop == mask.shape[0] or cols.stop == mask.shape[1]:
                continue  # cut by the image border: not the class's whole shape
            shape = Shape(source.name, mask[rows, cols].copy())
            if (ndimage.binary_dilation(mask, _STRUCTURE) & objects & ~mask).any():
                touching[cid].append(shape)  # beside another object: perhaps partly behind it
            else:
                free[cid].append(shape)
    bank = ShapeBank({cid: free[cid] if len(free[cid]) >= MIN_FREE else free[cid] + touching[cid][:PER_CLASS]
                      for cid in needed})
    missing = [needed[cid] for cid, v in bank.shapes.items() if not v]
    if missing:
        raise SpecError(f"{field}: the source has no instance of {', '.join(repr(m) for m in missing)} clear of the "
                        "image border; give a dataset labelled with these classes (class names as the job's), or "
                        "leave layout.shapes out to use the boxes themselves", field=field)
    return bank
