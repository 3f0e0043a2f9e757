"""Quality vs training time: attention mIoU on real renders for every EMA snapshot of a run.

    python bench/shapes_curve.py runs/shapes-v1 [--n-real 200] [--t 100]

Exports each `ema-<step>.pt` not yet measured to a temporary diffusers folder, runs the
attention part of bench/quality.py on it and appends one JSON line to RUN/curve.jsonl
(step, training seconds, refined and DAAM mIoU).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv=None) -> None:
    import quality

    from worker.shapes.train import export_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("--n-real", type=int, default=200)
    p.add_argument("--t", type=int, default=100)
    p.add_argument("--full", action="store_true",
                   help="also prompt fidelity and synthetic-vs-real at small sizes (--n-synth images)")
    p.add_argument("--n-synth", type=int, default=128)
    p.add_argument("--steps", nargs="*", type=int, help="only these snapshot steps")
    a = p.parse_args(argv)
    curve = a.run / "curve.jsonl"
    done = set()
    if curve.is_file():
        done = {(r["step"], r["timestep"]) for r in map(json.loads, curve.read_text().splitlines())}
    for ckpt in sorted(a.run.glob("ema-*.pt")):
        step = int(ckpt.stem.split("-")[1])
        if (step, a.t) in done or (a.steps and step not in a.steps):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_checkpoint(ckpt, Path(tmp) / "model")
            if a.full:
                r = quality.run(str(folder), a.run / f"quality-{step:06d}", a.n_real, a.n_synth, 1500, a.t, 20, 3.0,
                                False, 15, 6, log=lambda m: None)
            else:
                r = quality.run(str(folder), Path(tmp) / "out", a.n_real, 0, 0, a.t, 0, 0.0, False, 0, 0,
                                log=lambda m: None, parts=("attention",))
        att = r["attention_miou_real"]
        row = {"step": step, "training_seconds": r.get("training_seconds"), "timestep": a.t,
               "refined": att["refined"], "daam": att["daam"], "per_class": att["refined_per_class"],
               "uncertain_fraction": att["uncertain_fraction"]}
        if a.full:
            row["prompt_fidelity"] = {k: r["prompt_fidelity"][k] for k in ("colour_and_shape", "colour", "shape",
                                                                           "all_objects_in_image")}
            row["synthetic_vs_real"] = r["synthetic_vs_real"]["ratio"]
            row["seconds"] = r["seconds"]
        with curve.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
