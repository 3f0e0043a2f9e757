"""Choose a shapes model's recommended label settings on a validation stream.

    python bench/label_sweep.py --model builtin:shapes-v2 [--n 100] [--out sweep.json]

Refined attention mIoU on real renders of VALIDATION_STREAM (disjoint from the test stream
that bench/quality.py reports) for a grid of class / uncertain thresholds, tau and edges, all
read from one attention capture per batch at the model's recommended resolutions. Prints one
JSON object: every setting's mIoU, the best, and the model's current setting for comparison.
`--write` stores the best thresholds, tau and edges in the model folder's dsgen.json (a path,
not a builtin name).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def sweep_grid(class_thresholds, gaps, taus, edges) -> dict[str, dict]:
    """Name -> label fields for every combination (uncertain = class threshold - gap)."""
    grid = {}
    for ct, gap, tau, edge in itertools.product(class_thresholds, gaps, taus, edges):
        fields = {"class_threshold": ct, "uncertain_threshold": round(max(ct - gap, 0.0), 3), "tau": tau, "edges": edge}
        grid[f"ct{ct}-u{fields['uncertain_threshold']}-tau{tau}-{edge}"] = fields
    return grid


def run(model_id: str, n: int, t: int = 100, grid: dict[str, dict] | None = None) -> dict:
    import quality

    from shared.formats.model_meta import model_side
    from shared.formats.spec import LabelSpec
    from shared.shapes.world import get_world
    from worker.engine.loading import load_model

    model = load_model(model_id)
    rec = model.extras.get("recommended_labels", {})
    side = model_side(model.extras)
    quality.use_world(get_world(model.extras.get("world")), side)
    scenes = quality.real_scenes(quality.VALIDATION_STREAM, n)
    base = {k: v for k, v in rec.items() if k in LabelSpec.model_fields and k != "mode"}
    grid = grid or sweep_grid((0.3, 0.35, 0.4, 0.45, 0.5), (0.1,), (1, 2), ("guided", "none"))
    specs = {name: LabelSpec(**{**base, **fields, "mode": "refined"}) for name, fields in grid.items()}
    specs["current"] = LabelSpec(**{**base, "mode": "refined"})
    ious, _, _ = quality.attention_on_real(model, scenes, t, False, specs=specs)
    scores = {name: iou.miou() for name, iou in ious.items()}
    best = max(grid, key=lambda name: scores[name])
    return {"model": model_id, "stream": "validation", "n_images": n, "timestep": t, "side": side,
            "current": {"settings": {k: base.get(k) for k in ("class_threshold", "uncertain_threshold", "tau", "edges")},
                        "refined": scores["current"]},
            "best": {"settings": grid[best], "refined": scores[best]},
            "all": dict(sorted(((k, v) for k, v in scores.items() if k != "current"), key=lambda kv: -kv[1]))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--t", type=int, default=100)
    p.add_argument("--out", type=Path)
    p.add_argument("--write", action="store_true", help="store the best settings in the model folder's dsgen.json")
    a = p.parse_args(argv)
    result = run(a.model, a.n, a.t)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    if a.write:
        folder = Path(a.model)
        if not (folder / "dsgen.json").is_file():
            sys.exit("--write needs --model to be a model folder with a dsgen.json (not a builtin name)")
        extras = json.loads((folder / "dsgen.json").read_text())
        extras.setdefault("recommended_labels", {}).update(result["best"]["settings"])
        (folder / "dsgen.json").write_text(json.dumps(extras, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
