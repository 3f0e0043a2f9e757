"""Render N real images of the shapes-v2 world's held-out concept (a cyan cross), for `dsgen
concepts learn` (make demo-augment): the images into OUT, and the same renders as a labelled dsgen
dataset into OUT/labelled (its masks: `concepts learn --source --class cross --masked`, and the
shapes `layout.shapes` draws the concept in)."""
import sys
from pathlib import Path

from shared.shapes.dataset import write_sample
from shared.shapes.render import render_scene

out, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 16
out.mkdir(parents=True, exist_ok=True)
for i in range(n):
    scene = render_scene(5000 + i, 48, world="v2", objects=[("cyan", "cross")])
    scene.to_pil().save(out / f"{i:02d}.png")
    write_sample(out / "labelled", i, scene)
print(f"wrote {n} renders of a cyan cross to {out} (labelled: {out / 'labelled'})")
