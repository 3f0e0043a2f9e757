"""Write out/methods/<method>/grid.png: each sample's image above its label overlay (make demo-methods)."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.formats.overlay import overlay_png  # noqa: E402


def grid(folder: Path, n: int = 8, scale: int = 4) -> Path:
    tiles = []
    for rec_path in sorted((folder / "samples").glob("*/record.json"))[:n]:
        rec = json.loads(rec_path.read_text())
        image = Image.open(rec_path.parent / rec["files"]["image"]).convert("RGB")
        sem_name = rec["files"].get("semantic")
        sem = np.asarray(Image.open(rec_path.parent / sem_name)) if sem_name else np.zeros(image.size[::-1], np.uint8)
        tiles.append((image, Image.open(io.BytesIO(overlay_png(image, sem))).convert("RGB")))
    w, h = tiles[0][0].size
    canvas = Image.new("RGB", (len(tiles) * (w * scale + 2) + 2, 2 * (h * scale + 2) + 2), (255, 255, 255))
    for i, (img, ov) in enumerate(tiles):
        for row, tile in enumerate((img, ov)):
            canvas.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (2 + i * (w * scale + 2), 2 + row * (h * scale + 2)))
    out = folder / "grid.png"
    canvas.save(out)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(grid(Path(name)))
