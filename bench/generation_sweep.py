"""Prompt fidelity of text2image against the sampler settings (scheduler, steps, guidance scale).

    python bench/generation_sweep.py [--settings ddim:20:3,ddim:40:3,...] [--stream validation|test]

The model's images are judged as in `make bench-quality` (bench/quality.py's PairJudge, trained
on real renders only; the same cache): for each caption's (colour, shape) objects, is the pair
in the image. Settings are chosen on captions of the validation stream (never the test stream
the quality benchmark reports); `--stream test` re-reads a chosen setting there. Settings run
interleaved, one batch of each in turn, so machine noise does not favour one.

Prints one JSON object: per setting colour_and_shape, colour, shape, all_objects_in_image,
seconds per image, and the same read per object (`by_object`, bench/object_judge.py: blobs and
fragments do not count) with the real renders of the same captions read that way beside them.
A grid of each setting's first 8 images and all images (npz) go to bench/out/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import quality as q  # noqa: E402
from shared.formats.model_meta import model_side  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402

STREAMS = {"validation": q.VALIDATION_STREAM, "test": q.PROMPT_STREAM}


def parse_setting(text: str) -> tuple[str, int, float]:
    scheduler, steps, guidance = text.split(":")
    return scheduler, int(steps), float(guidance)


def fidelity(judge, captions: list[str], images: list[np.ndarray]) -> dict:
    pres = judge.presence(images)
    hits = colour = shape = total = 0
    all_in = []
    for cap, p in zip(captions, pres):
        ok_all = True
        for m in q.OBJ_RE.finditer(cap):
            c, s = m.group(1), m.group(2)
            ok = bool(p[q.pair_index(c, s)] > 0.5)
            total, hits, ok_all = total + 1, hits + ok, ok_all and ok
            colour += bool(max(p[q.pair_index(c, s2)] for s2 in q.SHAPES) > 0.5)
            shape += bool(max(p[q.pair_index(c2, s)] for c2 in q.COLOURS) > 0.5)
        all_in.append(ok_all)
    return {"colour_and_shape": round(hits / max(total, 1), 4), "colour": round(colour / max(total, 1), 4),
            "shape": round(shape / max(total, 1), 4), "all_objects_in_image": round(float(np.mean(all_in)), 4),
            "n_objects": total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--settings", default="ddim:20:3,ddim:40:3,ddim:20:2,ddim:20:5,dpm++:20:3,euler_a:20:3",
                   help="scheduler:steps:guidance, comma-separated")
    p.add_argument("--stream", choices=sorted(STREAMS), default="validation")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--n-classifier", type=int, default=4000)
    p.add_argument("--cls-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reread", type=Path, default=None,
                   help="judge the images a previous run saved (bench/out/generation_sweep_images.npz) again, "
                        "without generating; --settings and --n come from the file")
    a = p.parse_args(argv)
    from shared.formats.spec import parse_spec
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    torch.manual_seed(a.seed)
    model = load_model(a.model)
    q.use_world(get_world(model.extras.get("world")), model_side(model.extras))
    judge = q.PairJudge(q.real_scenes(q.CLASSIFIER_STREAM, a.n_classifier), a.cls_epochs, a.seed)
    captions = [s.caption for s in q.real_scenes(STREAMS[a.stream], a.n)]
    settings = [parse_setting(x) for x in a.settings.split(",") if x.strip()]
    saved = None
    if a.reread is not None:
        saved = np.load(a.reread)
        captions = [str(c) for c in saved["captions"]]
        settings = [parse_setting(k) for k in saved.files if k != "captions"]
        if captions != [s.caption for s in q.real_scenes(STREAMS[a.stream], len(captions))]:
            raise SystemExit(f"--reread: {a.reread} holds captions of another stream than --stream {a.stream}")
    sessions = {}
    for sched, steps, guidance in settings:
        spec = parse_spec({
            "name": "bench-generation-sweep", "model": a.model, "seed": a.seed,
            "classes": [{"name": s} for s in q.SHAPES],
            "prompts": {"source": "list", "prompts": captions, "append_class_names": False},
            "num_images": len(captions),
            "generation": {"width": q.SIZE, "height": q.SIZE, "steps": steps, "guidance_scale": guidance,
                           "scheduler": sched, "batch_size": a.batch},
            "labels": {"mode": "none"}, "export": {"formats": []},
        })
        sessions[(sched, steps, guidance)] = EngineSession(spec, model)
    images: dict = {k: [] for k in sessions}
    seconds: dict = {k: 0.0 for k in sessions}
    if saved is not None:
        images = {k: list(saved[f"{k[0]}:{k[1]}:{k[2]:g}"]) for k in sessions}
    for b0 in range(0, len(captions) if saved is None else 0, a.batch):  # interleaved: one batch of each setting in turn
        for key, session in sessions.items():
            t0 = time.perf_counter()
            images[key] += [np.asarray(s.image.convert("RGB")) for s in session.generate(range(b0, min(b0 + a.batch, len(captions))))]
            seconds[key] += time.perf_counter() - t0
        print(f"{b0 + a.batch}/{len(captions)}", file=sys.stderr, flush=True)
    result = {"model": a.model, "model_revision": model.info.revision, "stream": a.stream, "n_images": len(captions),
              "judge": {"train_renders": a.n_classifier, "epochs": a.cls_epochs}, "settings": {}}
    rule = q.object_rule(judge)
    real = q.real_scenes(STREAMS[a.stream], a.n)
    result["by_object_on_real"] = q.object_fidelity(judge, rule, captions, [s.image for s in real])
    for key, imgs in images.items():
        sched, steps, guidance = key
        result["settings"][f"{sched}:{steps}:{guidance:g}"] = {
            **fidelity(judge, captions, imgs), "scheduler": sched, "steps": steps, "guidance_scale": guidance,
            "seconds_per_image": None if saved is not None else round(seconds[key] / len(imgs), 4),
            "by_object": q.object_fidelity(judge, rule, captions, imgs)}
    if saved is not None:
        result["reread"] = str(a.reread)
        q.emit_json(result, a.out)
        return
    pictures = ROOT / "bench" / "out"
    pictures.mkdir(parents=True, exist_ok=True)
    q.save_grid([imgs[:8] for imgs in images.values()], pictures / "generation_sweep.png",
                labels=[f"{k[0]}:{k[1]}:{k[2]:g}" for k in images])
    # the images themselves, so a judge can be re-read without generating again
    np.savez_compressed(pictures / "generation_sweep_images.npz", captions=np.array(captions),
                        **{f"{k[0]}:{k[1]}:{k[2]:g}": np.stack(v) for k, v in images.items()})
    q.emit_json(result, a.out)


if __name__ == "__main__":
    main()
