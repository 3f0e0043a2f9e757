"""(Re)train the shipped adaptor of a builtin shapes model against its current weights.

    python -m worker.adaptor.ship_shapes [--model builtin:shapes-v2] [--epochs 48] [--n 2400] [--threads 2]

Renders a real shapes set of the model's world (`runs/<name>-adaptor-data`, seed 61, 80/10/10
splits), trains with `dsgen adaptor train`'s trainer (features cached: one UNet pass per image)
into `runs/<name>-adaptor`, then copies `adaptor.json` + `adaptor.safetensors` into
`worker/engine/builtin/<name>-adaptor/`. The adaptor records the model's content revision,
so it must be re-run whenever the model's weights change (the engine refuses a stale one).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from shared.formats.model_meta import model_side
from worker.adaptor.io import CONFIG_FILE, WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ROOT / "worker" / "engine" / "builtin"
MODEL = "builtin:shapes-v2"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL, help="a builtin shapes model")
    p.add_argument("--data", type=Path, help="default: runs/<name>-adaptor-data")
    p.add_argument("--run", type=Path, help="default: runs/<name>-adaptor")
    p.add_argument("--n", type=int, default=2400, help="real images rendered (80% train, 10% val)")
    p.add_argument("--epochs", type=int, default=48)  # the shipped adaptor: val AP50 0.913 (0.845 at 16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=None, help="image side (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-install", action="store_true", help="train only; do not copy into the package")
    a = p.parse_args(argv)
    if not a.model.startswith("builtin:"):
        p.error("--model must be a builtin shapes model, e.g. builtin:shapes-v2")
    name = a.model.split(":", 1)[1]
    a.data = a.data or ROOT / "runs" / f"{name}-adaptor-data"
    a.run = a.run or ROOT / "runs" / f"{name}-adaptor"
    shipped = BUILTIN / f"{name}-adaptor"

    from shared.shapes.dataset import write_real_dataset
    from shared.shapes.world import get_world
    from worker.adaptor.train import TrainConfig, Trainer
    from worker.engine.loading import load_model

    model = load_model(a.model)
    world = get_world(model.extras.get("world"))
    a.width = a.width or model_side(model.extras)

    coco = a.data / "coco"
    if not (coco / "annotations" / "instances_train.json").is_file():
        print(f"rendering {a.n} real shapes images into {a.data}")
        write_real_dataset(a.data, a.n, seed=61, size=a.width, world=world)
    if a.run.exists():
        shutil.rmtree(a.run)  # a fresh run: the base weights may have changed
    cfg = TrainConfig(model=a.model, coco=str(coco / "annotations" / "instances_train.json"), images=str(coco / "images" / "train"),
                      val_coco=str(coco / "annotations" / "instances_val.json"), val_images=str(coco / "images" / "val"),
                      out=str(a.run), epochs=a.epochs, lr=a.lr, width=a.width, seed=a.seed, cache_features=True,
                      threads=a.threads)
    started = time.perf_counter()
    trainer = Trainer(cfg)
    print(f"{a.model} revision {trainer.model.info.revision}: {len(trainer.train_items)} train / "
          f"{len(trainer.val_items)} val images, timestep {trainer.timestep}")
    trainer.run(on_epoch=lambda r: print(f"epoch {r.epoch}: loss {r.loss:.4f} val AP {r.metrics['AP']:.4f} "
                                         f"AP50 {r.metrics['AP50']:.4f} ({r.seconds:.0f}s)", flush=True))
    print(f"trained in {time.perf_counter() - started:.0f}s")
    if not a.no_install:
        shipped.mkdir(parents=True, exist_ok=True)
        for fname in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(a.run / fname, shipped / fname)
        print(f"installed into {shipped}")


if __name__ == "__main__":
    main()
