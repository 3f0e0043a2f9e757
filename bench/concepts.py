"""Few-shot concepts on the shapes world: textual inversion of concepts the model never saw.

    python bench/concepts.py --model /work/runs/shapes-v2-preview [--out bench/out] [--quick]

The shapes-v2 world holds out a colour ("cyan") and a shape ("cross"): drawable, never in a
training caption nor in the vocabulary. From <= 16 real renders of cyan crosses, `dsgen`'s
textual inversion learns "<cyan>" and "<cross>" (initialised from "blue" and "star"); then the
model generates "a <cyan> <cross>" through an EngineSession with the concept loaded, and a
judge trained on *real* renders only (every drawable colour x shape pair, held-out ones
included; bench/quality.py's PairJudge) says which objects each image holds.

Prints one JSON object (and writes it to <out>/concepts.json):
  concepts.objects         read per object (bench/object_judge.py: one solid region the judge reads
                           as the pair, its silhouette matching the shape as 95% of real objects'
                           do): share of images holding a cyan cross ("concept"), anything cyan,
                           anything cross, exactly one object, and the init words' pair; for the
                           learned tokens, the untrained model (the tokens at their init words,
                           i.e. what the model drew before learning) and real renders of the concept
  concepts.layout_with_own_shapes   (--layout) the same for `method: layout` with `layout.shapes`
                           taken from the 16 learning renders: the tokens' words drawn in the
                           concept's own shapes, at random boxes (guidance 1.5)
  concepts.unet             (--unet-steps N) the concept learned as `dsgen concepts learn --unet-steps` learns it:
                           textual inversion, then the UNet's cross-attention key/value fine-tuned
                           (Custom Diffusion) with the base model's pictures of the init words as prior
  concepts.*.*_by_silhouette / *_by_outline_classifier   the same with each region's shape read
                           from its outline: the best-fitting renderer shape (IoU >= 0.8), or a small
                           CNN trained on real renders' outlines (bench/outline_classifier.py)
  concepts.pixel_presence  the pixel judge's reading (a pair present when it wins 12 pixels):
                           blobs and fragments of the held-out colour pass it, kept for comparison
  concepts.learn_seconds   wall time of the learning on this CPU, steps, images
  concepts.judge           the judge's pair accuracy on held-out real renders of the concept
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import quality as q  # noqa: E402  (bench/quality.py: the judge and the scene streams)
import torch  # noqa: E402

from bench import object_judge as oj  # noqa: E402  (the per-object reading)
from bench import outline_classifier as oc  # noqa: E402  (shapes read from outlines, learned on real renders)
from shared.formats.model_meta import model_side  # noqa: E402
from shared.shapes import render_scene  # noqa: E402
from shared.shapes.dataset import scene_seed, write_sample  # noqa: E402
from shared.shapes.world import World, get_world  # noqa: E402

CONCEPT_STREAM, JUDGE_STREAM, JUDGE_TEST_STREAM = 920_001, 920_002, 920_003


LAYOUT_GUIDANCE = 1.5  # rectified regions draw whole objects at 1.5 on shapes-v2 (docs/methods.md)
SIDE = 32  # renders and generated images: the measured model's own side (set by run / run_augment)


def use_model_side(model) -> None:
    global SIDE
    SIDE = model_side(model.extras)


def judge_world(world: World) -> World:
    """Every drawable colour and shape as a 'training' concept: what the judge can name."""
    return World(name=f"{world.name}-judge", colours=world.drawable_colours, shapes=world.drawable_shapes,
                 background=world.background, count_weights=world.count_weights, size_frac=world.size_frac)


def judge_scenes(world: World, stream: int, n: int, held: tuple[str, str]):
    """Real renders: half the world's own scenes, half with the held-out colour/shape forced in."""
    rng = np.random.default_rng(stream)
    out = []
    for i in range(n):
        seed = scene_seed(stream, i)
        if i % 2 == 0:
            out.append(render_scene(seed, SIDE, world=world))
            continue
        k = int(rng.integers(1, 3))
        objs = []
        for j in range(k):
            colour = held[0] if (j == 0 and rng.random() < 0.7) else str(rng.choice(world.drawable_colours))
            shape = held[1] if (j == 0 and rng.random() < 0.7) else str(rng.choice(world.drawable_shapes))
            objs.append((colour, shape))
        out.append(render_scene(seed, SIDE, world=world, objects=objs))
    return out


def generate(model_id: str, concept: Path | None, prompt: str, classes: list[str], n: int, steps: int, guidance: float,
             seed: int) -> list[np.ndarray]:
    from shared.formats.spec import parse_spec
    from worker.engine.session import EngineSession

    spec = parse_spec({
        "name": "bench-concepts", "model": model_id, "seed": seed,
        "classes": [{"name": c.strip("<>"), "words": [c]} for c in classes],
        "prompts": {"source": "list", "prompts": [prompt], "append_class_names": False},
        "num_images": n, "concepts": [str(concept)] if concept else [],
        "generation": {"width": SIDE, "height": SIDE, "steps": steps, "guidance_scale": guidance, "scheduler": "ddim",
                       "batch_size": 16},
        "labels": {"mode": "none"}, "export": {"formats": []},
    })
    session = EngineSession(spec)
    return [np.asarray(s.image) for s in session.generate(range(n))]


def generate_layout(model_id: str, concept: Path | None, colour_word: str, shape: str, shape_word: str, shapes: Path,
                    n: int, steps: int, guidance: float, seed: int) -> list[np.ndarray]:
    """`method: layout` with `layout.shapes`: one object per image in a random box, its region a
    shape from `shapes` (the concept's own learning renders), its words "a <colour word> <shape word>"."""
    from shared.formats.spec import parse_spec
    from worker.engine.session import EngineSession

    spec = parse_spec({
        "name": "bench-concepts-layout", "model": model_id, "seed": seed, "method": "layout",
        "classes": [{"name": shape, "words": [shape_word]}], "num_images": n,
        "concepts": [str(concept)] if concept else [],
        "layout": {"random": {"count": [1, 1], "size": [0.4, 0.55]}, "phrase": f"a {colour_word} {{class}}",
                   "scale": 0.0, "box_mask": True, "shapes": {"path": str(shapes)}, "labels": "layout"},
        "generation": {"width": SIDE, "height": SIDE, "steps": steps, "guidance_scale": guidance, "scheduler": "ddim",
                       "batch_size": 16},
        "export": {"formats": []},
    })
    return [np.asarray(s.image) for s in EngineSession(spec).generate(range(n))]


def object_rates(judge, rule, world: World, held: tuple[str, str], images, init: tuple[str, str],
                 outlines: oc.OutlineClassifier | None = None) -> dict:
    """Per image, read per object (bench/object_judge.py): the share of images holding an object
    of the concept, of its colour, of its shape, with exactly one object (the prompt asks one), and
    holding the init words' pair (a pair the model was trained on: for the untrained prompt
    "a <init colour> <init shape>" that is the model's own rate, the ceiling a concept starts under).
    `*_by_silhouette`: the same with each region's shape read from its outline (the judge's
    colour, the best-fitting shape template, `oj.silhouette_objects`). `*_by_outline_classifier`:
    the same with the shape read by `outlines`, a classifier of outlines trained on real renders
    (bench/outline_classifier.py)."""
    found = {"concept": [], "colour": [], "shape": [], "one_object": [], "init_pair": [], "concept_by_silhouette": [],
             "shape_by_silhouette": []}
    if outlines is not None:
        found |= {"concept_by_outline_classifier": [], "shape_by_outline_classifier": []}
    for pm in judge.pairs(images):
        if outlines is not None:
            classified = oc.outline_objects(pm, world.colours, world.shapes, outlines, rule.min_area)
            found["concept_by_outline_classifier"].append(any((c, s) == held for c, s, _ in classified))
            found["shape_by_outline_classifier"].append(any(s == held[1] for _, s, _ in classified))
        outlined = oj.silhouette_objects(pm, world.colours, world.shapes, rule.min_area)
        found["concept_by_silhouette"].append(any((c, s) == held for c, s, _ in outlined))
        found["shape_by_silhouette"].append(any(s == held[1] for _, s, _ in outlined))
        objs = [o for o in oj.read_objects(pm, world.colours, world.shapes, rule.min_area) if rule.accepts(o)]
        found["init_pair"].append(any((o.colour, o.shape) == init for o in objs))
        found["concept"].append(any((o.colour, o.shape) == held for o in objs))
        found["colour"].append(any(o.colour == held[0] for o in objs))
        found["shape"].append(any(o.shape == held[1] for o in objs))
        found["one_object"].append(len(objs) == 1)
    return {k: round(float(np.mean(v)), 4) for k, v in found.items()}


def run(model_id: str, out: Path, n_learn: int, steps: int, lr: float, batch: int, n_eval: int, n_judge: int,
        judge_epochs: int, gen_steps: int, guidance: float, seed: int = 0, log=print,
        init: tuple[str, str] = ("blue", "star"), gen_seeds: tuple[int, ...] = (), vectors: int = 1,
        layout: bool = False, masked: bool = False, unet_steps: int = 0, unet_lr: float = 1e-4,
        prior_images: int = 16, layout_word: str | None = None, unet_params: str = "cross-kv") -> dict:
    from worker.engine.concept_training import LearnConfig, learn_concept
    from worker.engine.loading import load_model

    torch.manual_seed(seed)
    model = load_model(model_id)
    use_model_side(model)
    world = get_world(model.extras.get("world"))
    held = (world.held_out_colours[0], world.held_out_shapes[0])
    folder = out / "concepts-bench"
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    paths, masks = [], []
    shapes_dir = folder / "shapes"  # the same renders as a labelled dsgen folder (layout.shapes' source)
    for i in range(n_learn):
        p = images_dir / f"{i:02d}.png"
        scene = render_scene(scene_seed(CONCEPT_STREAM, i), SIDE, world=world, objects=[held])
        scene.to_pil().save(p)
        write_sample(shapes_dir, i, scene)
        paths.append(p)
        masks.append(scene.semantic > 0)
    tokens = [f"<{held[0]}>", f"<{held[1]}>"]
    init = list(init)
    # one folder per learning setting: a re-run with the same settings resumes (finished: no work)
    concept_dir = folder / (f"concept-{'-'.join(init)}-{steps}x{batch}-lr{lr:g}-s{seed}-{n_learn}img-v{vectors}"
                            + ("-masked" if masked else "")
                            + (f"-unet{unet_steps}-{unet_params}-lr{unet_lr:g}-prior{prior_images}" if unet_steps else ""))
    t0, c0 = time.time(), time.process_time()
    state = learn_concept(model, paths, LearnConfig(tokens=tokens, init_words=init, steps=steps, lr=lr, batch_size=batch,
                                                    seed=seed, vectors=vectors, masked=masked, unet_steps=unet_steps,
                                                    unet_lr=unet_lr, prior_images=prior_images, unet_params=unet_params),
                          concept_dir, resume=True,
                          masks=masks,
                          progress=lambda s, n, loss: log(f"learn {s}/{n} loss {loss:.4f}") if s % 50 == 0 else None)
    learn_s, learn_cpu = time.time() - t0, time.process_time() - c0
    log(f"learned in {learn_s:.0f}s")

    jw = judge_world(world)
    q.use_world(jw, SIDE)
    t1 = time.time()
    judge = q.PairJudge(judge_scenes(world, JUDGE_STREAM, n_judge, held), judge_epochs, seed)
    test = [render_scene(scene_seed(JUDGE_TEST_STREAM, i), SIDE, world=world, objects=[held]) for i in range(100)]
    pair = q.pair_index(*held)
    judge_acc = float(judge.presence([s.image for s in test])[:, pair].mean())
    log(f"judge trained in {time.time() - t1:.0f}s; finds {held} in {judge_acc:.2f} of real renders")

    rule = q.object_rule(judge)  # calibrated on one-object real renders of every drawable colour x shape
    outlines = q.outline_classifier(judge, seed=seed)
    log(f"outline classifier {outlines.to_json()}")
    real_objects = object_rates(judge, rule, jw, held, [s.image for s in test], tuple(init), outlines)
    log(f"object rule {rule.to_json()}; real concept renders read {real_objects}")

    def rates(images):
        pres = judge.presence(images)
        colour = [q.pair_index(held[0], s) for s in jw.shapes]
        shape = [q.pair_index(c, held[1]) for c in jw.colours]
        return (round(float(pres[:, pair].mean()), 4), round(float(pres[:, colour].amax(1).mean()), 4),
                round(float(pres[:, shape].amax(1).mean()), 4),
                object_rates(judge, rule, jw, held, images, tuple(init), outlines))

    phrase = f"a {tokens[0]} {tokens[1]}"
    per_seed, per_layout, kept = {}, {}, {}
    for gs in gen_seeds or (seed,):  # one generation seed reads the rate to a few points only
        learned = generate(model_id, concept_dir, phrase, tokens, n_eval, gen_steps, guidance, gs)
        # the untrained model: the same tokens at their init words (what the concept started from)
        baseline = generate(model_id, None, f"a {init[0]} {init[1]}", init, n_eval, gen_steps, guidance, gs)
        per_seed[gs] = (rates(learned), rates(baseline))
        kept |= {f"learned-{gs}": np.stack(learned), f"untrained-{gs}": np.stack(baseline)}
        log(f"generation seed {gs}: pixel rate {per_seed[gs][0][0]} baseline {per_seed[gs][1][0]}; "
            f"objects {per_seed[gs][0][3]} baseline {per_seed[gs][1][3]}")
        if layout:  # the concept's words drawn in shapes taken from its own learning renders (guidance 1.5)
            # the shape's word: its learned token, or (--layout-word) a word the model knows: the region
            # gives the shape either way
            lay = generate_layout(model_id, concept_dir, tokens[0], held[1], layout_word or tokens[1], shapes_dir, n_eval,
                                  gen_steps, LAYOUT_GUIDANCE, gs)
            lay_base = generate_layout(model_id, None, init[0], held[1], init[1], shapes_dir, n_eval, gen_steps,
                                       LAYOUT_GUIDANCE, gs)
            per_layout[gs] = (rates(lay), rates(lay_base))
            kept |= {f"layout-{gs}": np.stack(lay), f"layout-untrained-{gs}": np.stack(lay_base)}
            log(f"layout seed {gs}: objects {per_layout[gs][0][3]} baseline {per_layout[gs][1][3]}")

    def mean(which: int, k: int) -> float:
        return round(float(np.mean([v[which][k] for v in per_seed.values()])), 4)

    r, rc, rs = mean(0, 0), mean(0, 1), mean(0, 2)
    b, bc, bs = mean(1, 0), mean(1, 1), mean(1, 2)

    def mean_objects(which: int, runs: dict = per_seed) -> dict:
        keys = next(iter(runs.values()))[which][3]
        return {k: round(float(np.mean([v[which][3][k] for v in runs.values()])), 4) for k in keys}

    rows, names = [learned[:16], baseline[:16]], [phrase, f"a {init[0]} {init[1]} (untrained)"]
    if per_layout:
        rows, names = rows + [lay[:16], lay_base[:16]], names + ["layout, own shapes", "layout, untrained"]
    q.save_grid(rows + [[s.image for s in test[:16]]], out / "concepts_grid.png", row_labels=names + ["real"])
    np.savez_compressed(out / "concepts_images.npz", **kept)  # to re-read with another judge, no generation
    return {
        "_judge": judge,
        "concepts": {
            "model": model_id, "model_revision": model.info.revision, "concept": list(held), "tokens": tokens,
            "init_words": init, "prompt": phrase,
            # the headline: per object (one solid region of the concept's colour and shape, its
            # silhouette matching the shape as 95% of real objects do); bench/object_judge.py
            "objects": {"learned": mean_objects(0), "untrained": mean_objects(1), "real_renders": real_objects,
                        "rule": rule.to_json(), "outline_classifier": outlines.to_json()},
            # method layout, layout.shapes from the 16 learning renders: the token gives the colour,
            # the shape is the region it is drawn in (docs/concepts-augment.md)
            **({"layout_with_own_shapes": {"learned": mean_objects(0, per_layout), "untrained": mean_objects(1, per_layout),
                                           "guidance": LAYOUT_GUIDANCE, "per_seed": {str(k): v[0][3] for k, v in per_layout.items()}}}
               if per_layout else {}),
            # the pixel judge's presence (>= 12 pixels won anywhere): blobs and fragments pass it
            "pixel_presence": {"rate": r, "colour_rate": rc, "shape_rate": rs,
                               "baseline_rate": b, "baseline_colour_rate": bc, "baseline_shape_rate": bs},
            "n_generated": n_eval,
            "generation_seeds": {str(k): {"objects": v[0][3], "untrained_objects": v[1][3], "pixel_rate": v[0][0],
                                          "pixel_baseline_rate": v[1][0]}
                                 for k, v in per_seed.items()},
            "learn_images": n_learn, "learn_steps": state.step, "learn_vectors": vectors, "learn_masked": masked,
            "learn_lr": lr, "learn_batch": batch,
            "unet": {"steps": unet_steps, "lr": unet_lr, "prior_images": prior_images,
                     "parameters": unet_params} if unet_steps else None,
            "layout_shape_word": layout_word or tokens[1],
            "learn_seconds": round(learn_s, 1), "learn_cpu_seconds": round(learn_cpu, 1),
            "final_loss": round(float(np.mean(state.losses[-50:])), 5),
            "judge": {"real_concept_found": round(judge_acc, 4), "train_scenes": n_judge, "epochs": judge_epochs},
            "generation": {"steps": gen_steps, "guidance": guidance, "scheduler": "ddim"},
            "threads": torch.get_num_threads(),
        }
    }


def run_augment(model_id: str, out: Path, judge, n_real: int, variants: int, gen_steps: int, guidance: float,
                seg_epochs: int, seed: int = 0, log=print) -> dict:
    """augment on real renders: label validity (carried / re-derived masks vs the judge's reading of
    the generated image) for inpaint-inside and low-strength SDEdit, and a segmenter trained on
    real N vs real N + augmented, evaluated on held-out real renders."""
    from shared.formats.spec import parse_spec
    from shared.shapes.dataset import write_real_dataset
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    model = load_model(model_id)
    use_model_side(model)
    world = get_world(model.extras.get("world"))
    real_dir = out / "augment-bench" / "real"
    if not (real_dir / "samples").is_dir():
        write_real_dataset(real_dir, n_real, seed=q.SEG_REAL_STREAM, size=SIDE, formats=["coco"], world=world)
    shapes = list(world.shapes)
    result, synthetic = {}, []
    for name, aug in (("inpaint_inside", {"mode": "inpaint_inside", "strengths": [1.0]}),
                      ("sdedit_0.25", {"mode": "sdedit", "strengths": [0.25]})):
        spec = parse_spec({
            "model": model_id, "method": "augment", "seed": seed, "num_images": n_real * variants,
            "classes": [{"name": c} for c in shapes],
            "generation": {"width": SIDE, "height": SIDE, "steps": gen_steps, "guidance_scale": guidance, "scheduler": "ddim",
                           "batch_size": 16},
            "labels": {"mode": "refined", **model.extras.get("recommended_labels", {})},
            "augment": {"source": {"path": str(real_dir), "format": "dsgen"}, "variants": variants, "template": "a {classes}",
                        **aug},
            "export": {"formats": []},
        })
        samples = list(EngineSession(spec).generate(range(spec.num_images)))
        images = [np.asarray(s.image) for s in samples]
        truth = judge.semantic(images)
        iou = q.IoU()
        for s, t in zip(samples, truth):
            iou.add(np.where(s.semantic == 255, 0, s.semantic), t)
        result[name] = {"label_validity_miou": iou.miou(), "per_class": iou.per_class(),
                        "labels": sorted({s.record.parameters["augment"]["labels"] for s in samples}), "n": len(samples)}
        log(f"augment {name}: validity {iou.miou()}")
        if name == "inpaint_inside":
            synthetic = [(np.asarray(s.image), s.semantic) for s in samples]
    q.use_world(world)
    reals = q.real_scenes(q.SEG_REAL_STREAM, n_real)
    test = q.real_scenes(q.TEST_STREAM, 200)
    rep = max(1, len(synthetic) // n_real + 1)
    real_net = q.train_segmenter([s.image for s in reals] * rep, [s.semantic for s in reals] * rep, seg_epochs, seed)
    mix_net = q.train_segmenter([s.image for s in reals] + [i for i, _ in synthetic],
                                [s.semantic for s in reals] + [m for _, m in synthetic], seg_epochs, seed)
    result["segmenter"] = {"real_only_miou": q.evaluate_segmenter(real_net, test).miou(),
                           "real_plus_augmented_miou": q.evaluate_segmenter(mix_net, test).miou(),
                           "n_real": n_real, "n_augmented": len(synthetic), "epochs": seg_epochs, "test": len(test)}
    return {"augment": result}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run), not the reported numbers")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--n-judge", type=int, default=2000)
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--gen-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--init-words", default="blue,star", help="the words the colour and shape tokens start from")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vectors", type=int, default=1, help="embedding vectors per token")
    p.add_argument("--gen-seeds", default="", help="generation seeds, comma-separated; rates are their mean (default: 0)")
    p.add_argument("--masked", action="store_true",
                   help="learn inside the renders' object masks (rectified cross-attention; `concepts learn --masked`)")
    p.add_argument("--layout", action="store_true",
                   help="also measure the concept drawn by method layout in shapes from its own learning renders")
    p.add_argument("--unet-steps", type=int, default=0,
                   help="then fine-tune the cross-attention key/value (`concepts learn --unet-steps`)")
    p.add_argument("--unet-lr", type=float, default=1e-4)
    p.add_argument("--unet-params", default="cross-kv", choices=("cross-kv", "all"))
    p.add_argument("--prior-images", type=int, default=16)
    p.add_argument("--layout-word", default=None,
                   help="with --layout: the shape's word in the layout prompt (default: the learned shape token)")
    p.add_argument("--augment", action="store_true", help="also measure method augment (label validity, segmenter)")
    p.add_argument("--n-real", type=int, default=50)
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--seg-epochs", type=int, default=30)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.steps, a.n_eval, a.n_judge, a.judge_epochs = 10, 16, 200, 1
    a.out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.quick:
        a.n_real, a.variants, a.seg_epochs = 4, 1, 1
    result = run(a.model, a.out, a.images, a.steps, a.lr, a.batch, a.n_eval, a.n_judge, a.judge_epochs, a.gen_steps,
                 a.guidance, log=log, init=tuple(a.init_words.split(",")),
                 gen_seeds=tuple(int(x) for x in a.gen_seeds.split(",") if x.strip()), vectors=a.vectors,
                 layout=a.layout, masked=a.masked, unet_steps=a.unet_steps, unet_lr=a.unet_lr,
                 prior_images=a.prior_images, layout_word=a.layout_word, unet_params=a.unet_params)
    if a.augment:
        result.update(run_augment(a.model, a.out, result.pop("_judge"), a.n_real, a.variants, a.gen_steps, a.guidance,
                                  a.seg_epochs, log=log))
    result.pop("_judge", None)
    (a.out / "concepts.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
