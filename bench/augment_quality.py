"""DA-Fusion augmentation quality on the shapes world (the `augment` part of bench/quality.py).

For each mode (inpaint inside the objects' masks; SDEdit at a low strength), N real renders get
M variants each through `method: augment` with its labels carried over from the source, then:
  .label_validity   mIoU of a segmenter trained on real renders, read on the augmented images,
                    against the carried-over labels (is the label still where the object is?);
  .real_plus_augmented   a segmenter trained on the N real + the augmented images vs on the N
                    real alone (repeated to the same size), on the same real test set.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

AUGMENT_STREAM = 910_007
MODES = {
    "inpaint_inside": {"mode": "inpaint_inside", "strengths": [0.5, 0.75, 1.0]},
    "inpaint_inside_rectified": {"mode": "inpaint_inside", "strengths": [0.5, 0.75, 1.0], "rectify": True},
    "inpaint_inside_rectified_low": {"mode": "inpaint_inside", "strengths": [0.25, 0.5], "rectify": True},
    "sdedit_low": {"mode": "sdedit", "strengths": [0.25], "keep_labels_below": 0.3},
}


def _augment_samples(model_id: str, source: Path, classes, n: int, variants: int, options: dict, steps: int,
                     guidance: float, seed: int, size: int) -> list:
    from shared.formats.spec import parse_spec
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    spec = parse_spec({
        "name": "bench-augment", "model": model_id, "seed": seed, "method": "augment",
        "classes": [{"name": c} for c in classes], "num_images": n * variants,
        "generation": {"width": size, "height": size, "steps": steps, "guidance_scale": guidance,
                       "scheduler": "ddim", "batch_size": 16},
        "augment": {"source": {"path": str(source), "format": "dsgen"}, "variants": variants,
                    "prompt": "source", "template": "a {classes}", **options},
        "export": {"formats": []},
    })
    session = EngineSession(spec, load_model(model_id))
    return list(session.generate(range(spec.num_images)))


def augment_quality(q, model_id: str, n_real: int, variants: int, steps: int, guidance: float, seg_epochs: int,
                    seed: int, test, seg_real, log=print, out: Path | None = None,
                    seg_seeds: tuple[int, ...] = (), modes: tuple[str, ...] = ()) -> dict:
    """`q`: the bench.quality module the caller measures with (its world and helpers).

    `seg_seeds`: the real-only and mixed segmenters are trained once per seed (default: `seed`) and
    compared pair by pair, because one training on 50 images varies by several points with its seed.
    """
    from shared.shapes.dataset import write_real_dataset

    started = time.time()
    source = Path(tempfile.mkdtemp(prefix="bench-augment-")) / "real"
    write_real_dataset(source, n_real, seed=AUGMENT_STREAM, size=q.SIZE, formats=[], world=q.WORLD)
    real_x = [np.asarray(Image.open(p / "image.png").convert("RGB")) for p in sorted((source / "samples").iterdir())]
    real_y = [np.asarray(Image.open(p / "semantic.png")) for p in sorted((source / "samples").iterdir())]
    seeds = seg_seeds or (seed,)
    result: dict = {"n_real": n_real, "variants": variants, "segmenter_seeds": list(seeds)}
    reps = max(1, round((n_real + n_real * variants) / n_real))
    real_only = [q.evaluate_segmenter(q.train_segmenter(real_x * reps, real_y * reps, seg_epochs, sd), test).miou()
                 for sd in seeds]
    result["guidance_scale"] = guidance
    for name in modes or tuple(MODES):
        options = MODES[name]
        samples = _augment_samples(model_id, source, q.SHAPES, n_real, variants, options, steps, guidance, seed, q.SIZE)
        carried = sum(s.record.parameters["augment"]["labels"] == "carried" for s in samples)
        images = [np.asarray(s.image.convert("RGB")) for s in samples]
        labels = [s.semantic for s in samples]
        validity = q.IoU()
        with torch.no_grad():
            for b0 in range(0, len(images), 64):
                pred = seg_real(q.to_tensor(images[b0:b0 + 64])).argmax(1).numpy()
                for p, lab in zip(pred, labels[b0:b0 + 64]):
                    validity.add(np.where(lab == 255, 0, p), np.where(lab == 255, 0, lab))
        mixed = [q.evaluate_segmenter(q.train_segmenter(real_x + images, real_y + labels, seg_epochs, sd), test).miou()
                 for sd in seeds]
        gains = [round(m - r, 4) for m, r in zip(mixed, real_only)]
        result[name] = {
            **options, "n_augmented": len(images), "carried_fraction": round(carried / len(samples), 4),
            "label_validity": validity.miou(), "label_validity_per_class": validity.per_class(),
            "real_plus_augmented": {"miou_real_only": round(float(np.mean(real_only)), 4),
                                    "miou_real_plus_augmented": round(float(np.mean(mixed)), 4),
                                    "gain": round(float(np.mean(gains)), 4), "gain_per_seed": gains,
                                    "miou_real_only_per_seed": real_only, "miou_real_plus_augmented_per_seed": mixed,
                                    "real_repeats_in_real_only": reps},
            "mean_abs_change": round(float(np.mean([np.abs(a.astype(float) - real_x[i // variants].astype(float)).mean()
                                                    for i, a in enumerate(images)])), 2),
        }
        if out is not None:
            q.save_grid([[real_x[i // variants], img, q.overlay(img, lab)] for i, (img, lab) in
                         enumerate(zip(images[:8], labels[:8]))], out / f"augment_{name}.png",
                        labels=["real", f"augment ({name})", "carried labels"])
        log(f"augment {name} done ({time.time() - started:.0f}s)")
    result["seconds"] = round(time.time() - started, 1)
    return result
