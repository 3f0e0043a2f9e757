"""(Re)train the shipped adaptor of `builtin:shapes-v1` against the current shapes-v1 weights.

    python -m worker.adaptor.ship_shapes [--epochs 48] [--n 2400] [--threads 2]

Renders a real shapes set (`runs/shapes-v1-adaptor-data`, seed 61, 80/10/10 splits), trains
with `dsgen adaptor train`'s trainer (features cached: one UNet pass per image) into
`runs/shapes-v1-adaptor`, then copies `adaptor.json` + `adaptor.safetensors` into
`worker/engine/builtin/shapes-v1-adaptor/`. The adaptor records the model's content revision,
so it must be re-run whenever the shapes-v1 weights change (the engine refuses a stale one).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from worker.adaptor.io import CONFIG_FILE, WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "worker" / "engine" / "builtin" / "shapes-v1-adaptor"
MODEL = "builtin:shapes-v1"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "shapes-v1-adaptor-data")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "shapes-v1-adaptor")
    p.add_argument("--n", type=int, default=2400, help="real images rendered (80% train, 10% val)")
    p.add_argument("--epochs", type=int, default=48)  # the shipped adaptor: val AP50 0.913 (0.845 at 16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-install", action="store_true", help="train only; do not copy into the package")
    a = p.parse_args(argv)

    from shared.shapes.dataset import write_real_dataset
    from worker.adaptor.train import TrainConfig, Trainer

    coco = a.data / "coco"
    if not (coco / "annotations" / "instances_train.json").is_file():
        print(f"rendering {a.n} real shapes images into {a.data}")
        write_real_dataset(a.data, a.n, seed=61)
    if a.run.exists():
        shutil.rmtree(a.run)  # a fresh run: the base weights may have changed
    cfg = TrainConfig(model=MODEL, coco=str(coco / "annotations" / "instances_train.json"), images=str(coco / "images" / "train"),
                      val_coco=str(coco / "annotations" / "instances_val.json"), val_images=str(coco / "images" / "val"),
                      out=str(a.run), epochs=a.epochs, lr=a.lr, width=a.width, seed=a.seed, cache_features=True,
                      threads=a.threads)
    started = time.perf_counter()
    trainer = Trainer(cfg)
    print(f"{MODEL} revision {trainer.model.info.revision}: {len(trainer.train_items)} train / "
          f"{len(trainer.val_items)} val images, timestep {trainer.timestep}")
    trainer.run(on_epoch=lambda r: print(f"epoch {r.epoch}: loss {r.loss:.4f} val AP {r.metrics['AP']:.4f} "
                                         f"AP50 {r.metrics['AP50']:.4f} ({r.seconds:.0f}s)", flush=True))
    print(f"trained in {time.perf_counter() - started:.0f}s")
    if not a.no_install:
        SHIPPED.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(a.run / name, SHIPPED / name)
        print(f"installed into {SHIPPED}")


if __name__ == "__main__":
    main()
