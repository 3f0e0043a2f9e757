"""Same-budget ablations of the shapes world and recipe: one metric for every run.

    python bench/shapes_ablation.py /work/runs/abl/base /work/runs/abl/bg-texture ... \
        --out docs/bench/shapes-v2-ablations.json

Each RUN is a `worker.shapes.train` folder trained for the same wall budget (`--max-minutes`,
one thread), or one of its `ema-*.pt` snapshots (a training curve). Its `latest.pt` EMA (or the
snapshot's) is exported and measured by bench/quality.py's attention and fidelity parts against
renders of the run's *own* world (the world is what is being ablated, so each model is judged on
what it was asked to learn). Runs already in the output are kept, so the script can be re-run
as more runs finish.
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


def measure(run: Path, n_real: int, n_synth: int, steps: int, guidance: float, seed: int = 0) -> dict:
    import quality
    import torch

    from worker.shapes.train import export_checkpoint

    ckpt = run if run.suffix == ".pt" else run / "latest.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    config = json.loads((ckpt.parent / "train_config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_checkpoint(ckpt, Path(tmp) / "model")
        r = quality.run(str(folder), Path(tmp) / "out", n_real, n_synth, 1500, 100, steps, guidance, False, 15, 6,
                        seed=seed, log=lambda m: None, parts=("attention", "fidelity"))
    fidelity = r["prompt_fidelity"]
    return {
        "run": row_name(run, seed), "measure_seed": seed,
        "world_overrides": {k: config[k] for k in ("world", "background", "count_weights", "size_frac") if config.get(k)},
        "rectify": config["rectify"],
        "steps": int(state["step"]), "training_seconds": round(float(state.get("elapsed", 0.0)), 1),
        "images_seen": int(state["step"]) * int(config["batch_size"]),
        "refined": att(r, "refined"), "daam": att(r, "daam"),
        "colour_and_shape": fidelity["colour_and_shape"], "colour": fidelity["colour"], "shape": fidelity["shape"],
        "all_objects_in_image": fidelity["all_objects_in_image"],
        "final_loss": last_loss(ckpt.parent, int(state["step"])),
    }


def row_name(run: Path, seed: int) -> str:
    """A run folder's name, or `folder/snapshot` for one snapshot of it (a training curve)."""
    name = f"{run.parent.name}/{run.stem}" if run.suffix == ".pt" else run.name
    return name + (f"@seed{seed}" if seed else "")


def att(r: dict, key: str) -> float:
    return r["attention_miou_real"][key]


def last_loss(folder: Path, step: int, window: int = 50) -> float | None:
    """Mean training loss of the `window` steps up to `step` (noisy per step; this is the run's
    level there)."""
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step][-window:]
    return round(sum(r["loss"] for r in rows) / len(rows), 5) if rows else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-real", type=int, default=100)
    p.add_argument("--n-synth", type=int, default=96)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0, help="generation seed of the measurement (another seed: the noise "
                                                       "of the metric on the same run; rows named RUN@seedK)")
    a = p.parse_args(argv)
    table = json.loads(a.out.read_text()) if a.out.is_file() else {"settings": vars(a) | {"runs": None, "out": None},
                                                                  "rows": []}
    done = {row["run"] for row in table["rows"]}
    for run in a.runs:
        ckpt = run if run.suffix == ".pt" else run / "latest.pt"
        if row_name(run, a.seed) in done or not ckpt.is_file():
            continue
        row = measure(run, a.n_real, a.n_synth, a.steps, a.guidance, a.seed)
        print(json.dumps(row), flush=True)
        table["rows"].append(row)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
