"""Render N real images of the shapes-v2 world's held-out concept (a cyan cross) into a folder,
for `dsgen concepts learn` (make demo-augment)."""
import sys
from pathlib import Path

from shared.shapes.render import render_scene

out, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 16
out.mkdir(parents=True, exist_ok=True)
for i in range(n):
    render_scene(5000 + i, 48, world="v2", objects=[("cyan", "cross")]).to_pil().save(out / f"{i:02d}.png")
print(f"wrote {n} renders of a cyan cross to {out}")
