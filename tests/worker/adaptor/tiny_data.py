"""A tiny COCO set: coloured rectangles ('cat' red, 'dog' blue) on grey, 32x32."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_tiny_coco(root: Path, n: int = 8, seed: int = 0, with_captions: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        im = Image.new("RGB", (32, 32), (128, 128, 128))
        draw = ImageDraw.Draw(im)
        names = []
        for _ in range(int(rng.integers(1, 3))):
            w, h = (int(v) for v in rng.integers(8, 14, size=2))
            x, y = int(rng.integers(0, 32 - w)), int(rng.integers(0, 32 - h))
            cat = int(rng.integers(1, 3))
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(220, 40, 40) if cat == 1 else (40, 80, 230))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            names.append("cat" if cat == 1 else "dog")
        im.save(images_dir / f"{i:03d}.png")
        entry = {"id": i + 1, "file_name": f"{i:03d}.png", "width": 32, "height": 32}
        if with_captions:
            entry["caption"] = " and ".join(f"a {n}" for n in names)
        images.append(entry)
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(doc))
    return path, images_dir
