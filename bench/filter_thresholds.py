"""FreeMask's segmenter filter: which real-loss threshold, read with several segmenter seeds.

    python bench/filter_thresholds.py gen m2i|t2i          # 400 samples each, cached under --cache
    python bench/filter_thresholds.py seg                  # the FreeMask segmenter + its loss statistics
    python bench/filter_thresholds.py train m2i|t2i 0,1,2 none,heldout0.99,train0.99,mean1.25

The same sets as `bench/quality.py --parts text2image_samples,mask2image` (mask2image from the
masks of held-out real renders; text2image from real captions; shapes-v2, 20 steps), the same
FreeMask segmenter (400 real renders x 30 epochs), and the same small segmenter trained on the
filtered labels and read on the 200 real test renders; but the generated sets are cached, so
every threshold reference is trained on the same data, once per seed, and two jobs (one per
set) can run side by side. References: `none` (unfiltered), `meanT` (FreeMask: T x the class's
mean loss on the segmenter's training renders), `trainQ` / `heldoutQ` (the loss Q of a class's
real pixels stay under, measured on the training renders / on 400 held-out real renders;
heldoutQ is what `dsgen segmenter train --calibration-split` and `labels.filter.reference:
real_quantile` do). Writes <cache>/quantiles.json and <cache>/res-<set>-<seeds>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import bench.quality as q  # noqa: E402
from shared.formats.model_meta import model_side  # noqa: E402
from shared.formats.spec import FILTER_QUANTILE_LEVELS  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402

N = 400  # samples per set, real renders for the FreeMask segmenter and for the held-out quantiles


def generate(which: str, model_id: str, cache: Path) -> None:
    t = time.time()
    if which == "m2i":
        from shared.shapes.dataset import write_real_dataset

        tmp = Path(tempfile.mkdtemp())
        write_real_dataset(tmp / "masks", N, seed=q.MASK_STREAM, size=q.SIZE, formats=[], world=q.WORLD)
        _, samples = q._m2i_samples(model_id, tmp / "masks", N, 20, 1.5, 0)
    else:
        samples = q.generate_with_dsgen(model_id, [s.caption for s in q.real_scenes(q.PROMPT_STREAM, N)], 20, 3.0, False, 0)
    np.savez_compressed(cache / f"{which}.npz", images=np.stack([np.asarray(s.image.convert("RGB")) for s in samples]),
                        semantic=np.stack([s.semantic for s in samples]))
    print(which, "generated in", round(time.time() - t), "s")


def freemask_segmenter(cache: Path) -> None:
    from worker.labels.segmenter import pixel_loss, train_segmenter

    real = q.real_scenes(q.FILTER_REAL_STREAM, N)
    fm, _ = train_segmenter([(Image.fromarray(s.image), s.semantic) for s in real], list(q.SHAPES),
                            image_size=q.SIZE, epochs=30, seed=0)
    fm.save(cache / "seg")
    out = {"mean": fm.class_mean_loss}
    for name, stream in (("train", q.FILTER_REAL_STREAM), ("heldout", q.FILTER_CALIBRATION_STREAM)):
        scenes = q.real_scenes(stream, N)
        target = np.stack([s.semantic for s in scenes]).astype(np.int64)
        loss = pixel_loss(fm.logits([Image.fromarray(s.image) for s in scenes]), target)
        out[name] = {}
        for c, cname in enumerate(["background", *fm.classes]):
            v = loss[target == c]
            out[name][cname] = {f"{level:g}": float(np.quantile(v, level)) for level in FILTER_QUANTILE_LEVELS}
            out[name][cname]["mean"] = float(v.mean())
            out[name][cname]["share_over_1.25_mean"] = float((v > 1.25 * fm.class_mean_loss[cname]).mean())
    (cache / "quantiles.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


def train(which: str, seeds: list[int], variants: list[str], cache: Path) -> dict:
    from worker.labels.segmenter import load_segmenter, pixel_loss

    data = np.load(cache / f"{which}.npz")
    images, semantic = list(data["images"]), data["semantic"]
    fm = load_segmenter(str(cache / "seg"))
    stats = json.loads((cache / "quantiles.json").read_text())
    names = ["background", *fm.classes]
    loss = np.concatenate([pixel_loss(fm.logits([Image.fromarray(x) for x in images[i:i + 100]]),
                                      semantic[i:i + 100].astype(np.int64)) for i in range(0, len(images), 100)])
    test = q.real_scenes(q.TEST_STREAM, 200)
    res: dict = {}
    for v in variants:
        if v == "none":
            threshold = np.full(len(names), np.inf)
        elif v.startswith("mean"):
            threshold = np.array([fm.class_mean_loss[n] * float(v[4:]) for n in names])
        else:
            src = "heldout" if v.startswith("heldout") else "train"
            threshold = np.array([stats[src][n][v[len(src):]] for n in names])
        labels = semantic.copy()
        bad = (labels != 255) & (loss > threshold[np.clip(labels, 0, len(names) - 1)])
        labels[bad] = 255
        scores = []
        for sd in seeds:
            t = time.time()
            scores.append(q.evaluate_segmenter(q.train_segmenter(images, list(labels), 30, sd), test).miou())
            print(which, v, sd, scores[-1], f"{time.time() - t:.0f}s", flush=True)
        res[v] = {"ignored_fraction": round(float(bad.mean()), 4), "miou": scores, "mean": round(float(np.mean(scores)), 4)}
        (cache / f"res-{which}-{','.join(map(str, seeds))}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    global N
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["gen", "seg", "train"])
    p.add_argument("args", nargs="*")
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "out" / "filter-thresholds")
    p.add_argument("--n", type=int, default=400, help="set size (the reported numbers use 400; smaller is a smoke run)")
    a = p.parse_args(argv)
    N = a.n
    from worker.engine.loading import load_model

    model = load_model(a.model)
    q.use_world(get_world(model.extras.get("world")), model_side(model.extras))
    a.cache.mkdir(parents=True, exist_ok=True)
    if a.command == "gen":
        generate(a.args[0], a.model, a.cache)
    elif a.command == "seg":
        freemask_segmenter(a.cache)
    else:
        variants = a.args[2].split(",") if len(a.args) > 2 else ["none", "heldout0.99", "train0.99", "mean1.25"]
        print(json.dumps(train(a.args[0], [int(x) for x in a.args[1].split(",")], variants, a.cache), indent=1))


if __name__ == "__main__":
    main()
