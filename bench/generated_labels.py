"""How dsgen should read labels on *generated* images, measured by what the labels train.

    python bench/generated_labels.py [--n 200] [--windows 0:1,0.5:1,0.8:1] [--read-t 50,100,200]

text2image at the model's defaults from captions of the validation stream; the same images are
labelled several ways:
  window:a-b  attention captured while denoising, over the steps in [a, b] of the schedule
              (`labels.step_window`; every window re-generates the same images);
  read:tN     one UNet pass over the finished image noised to timestep N with its caption (how
              `attention_miou_real` reads real renders).
For each: mIoU against the judge's per-pixel reading of the images (truth from their pixels),
the uncertain fraction, and the mIoU on held-out real renders (SELECTION_TEST_STREAM, never the
test stream `make bench-quality` reports) of the small segmenter trained on the N generated
images with those labels, beside the same segmenter trained on N real renders (per seed and
the ratio of the means). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import quality as q  # noqa: E402
from shared.formats.model_meta import model_side  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402


def judge_iou(labels: list[np.ndarray], truth: np.ndarray) -> float:
    iou = q.IoU()
    for lab, tr in zip(labels, truth):
        keep = lab != 255
        iou.add(np.where(keep, lab, 254), np.where(keep, tr, 254))
    return iou.miou()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--windows", default="0:1,0.5:1,0.8:1", help="step windows a:b, comma-separated")
    p.add_argument("--read-t", default="50,100,200", help="timesteps of the read pass, comma-separated")
    p.add_argument("--seg-epochs", type=int, default=30)
    p.add_argument("--seg-seeds", default="0,1")
    p.add_argument("--n-classifier", type=int, default=4000)
    p.add_argument("--cls-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    from worker.engine.loading import load_model

    started = time.time()
    model = load_model(a.model)
    gen = model.extras.get("default_generation", {})
    q.use_world(get_world(model.extras.get("world")), model_side(model.extras))
    captions = [s.caption for s in q.real_scenes(q.VALIDATION_STREAM, a.n)]
    test = q.real_scenes(q.SELECTION_TEST_STREAM, 200)
    seeds = [int(x) for x in a.seg_seeds.split(",") if x.strip()]
    steps, guidance = int(gen.get("steps", 20)), float(gen.get("guidance_scale", 3.0))

    labellings: dict[str, list[np.ndarray]] = {}
    images = None
    for w in [x for x in a.windows.split(",") if x.strip()]:
        lo, hi = (float(v) for v in w.split(":"))
        samples = q.generate_with_dsgen(a.model, captions, steps, guidance, False, a.seed, labels={"step_window": [lo, hi]})
        imgs = [np.asarray(s.image.convert("RGB")) for s in samples]
        if images is not None:  # capture windows change the float path (explicit softmax on some steps) only
            drift = float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(images, imgs)]))
            print(f"window {w}: mean pixel difference from the first window's images {drift:.3f}", file=sys.stderr)
            if drift > 1.0:
                raise SystemExit("the windows generated different images: the comparison needs the same images")
        images = imgs if images is None else images
        labellings[f"window:{lo:g}-{hi:g}"] = [s.semantic for s in samples]
        print(f"window {w} done ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
    if images is None:
        samples = q.generate_with_dsgen(a.model, captions, steps, guidance, False, a.seed, labels={"mode": "none"})
        images = [np.asarray(s.image.convert("RGB")) for s in samples]
    for t in [int(x) for x in a.read_t.split(",") if x.strip()]:
        labellings[f"read:t{t}"] = q.attention_labels(model, images, captions, t, False, seed=a.seed)["refined"]
        print(f"read t{t} done ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)

    # built after generation: a judge another bench is training meanwhile is then read from the cache
    judge = q.PairJudge(q.real_scenes(q.CLASSIFIER_STREAM, a.n_classifier), a.cls_epochs, a.seed)
    truth = judge.semantic(images)
    real = q.real_scenes(q.SEG_REAL_STREAM, a.n)
    real_scores = [q.evaluate_segmenter(q.train_segmenter([s.image for s in real], [s.semantic for s in real],
                                                          a.seg_epochs, sd), test).miou() for sd in seeds]
    result = {"model": a.model, "model_revision": model.info.revision, "n_images": a.n, "steps": steps,
              "guidance_scale": guidance, "segmenter_seeds": seeds, "seg_epochs": a.seg_epochs,
              "miou_real_per_seed": real_scores, "labellings": {}}
    for name, labels in labellings.items():
        scores = [q.evaluate_segmenter(q.train_segmenter(images, labels, a.seg_epochs, sd), test).miou() for sd in seeds]
        result["labellings"][name] = {
            "miou_vs_judge": judge_iou(labels, truth),
            "uncertain_fraction": round(float(np.mean([(x == 255).mean() for x in labels])), 4),
            "miou_synthetic_per_seed": scores,
            "ratio": round(float(np.mean(scores)) / max(float(np.mean(real_scores)), 1e-9), 4),
        }
        print(f"{name}: {result['labellings'][name]} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
    grid = [[img] + [q.overlay(img, lab[i]) for lab in labellings.values()] for i, img in enumerate(images[:8])]
    q.save_grid(grid, (a.out.parent if a.out else ROOT / "bench" / "out") / "generated_labels.png",
                labels=["generated", *labellings])
    result["seconds"] = round(time.time() - started, 1)
    q.emit_json(result, a.out)


if __name__ == "__main__":
    main()
