"""Edit (Shape-Guided) and layout (self-guidance) quality on the shapes world; one JSON object.

  edit     real renders, their largest object re-coloured (inversion prompt = the render's
           caption, inside prompt = "a <new colour> <shape>", outside prompt ""):
    .shape_iou           IoU of the edited object's region (pixels the judge reads as the asked
                         pair, less other objects of that pair already in the source) vs the
                         source mask, mean and the share of edits >= 0.90;
    .shape_iou_by_colour the same with the region read from the pixels' colour (the world's
                         objects are flat palette colours): pixels that became the asked colour;
    .appearance_hit      share of edits whose region is read as the asked (colour, shape) pair;
    .outside_mad         mean |edited - source| outside the mask (0..255);
  layout   one object per image at a random asked box (side 0.4-0.55), guided vs plain:
    .centroid_within_2px, .box_iou_ge_0.70, .both   shares of objects (judge's region of the pair);
    ..._by_colour        the same with the region read from the pixels' colour (the largest
                         component of the asked palette colour: one object per image);
    .seconds_per_image   guided vs plain, interleaved; .time_ratio.
The judge is bench.quality.PairJudge (a segmenter trained on real renders only).
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
import torch  # noqa: E402

from bench import quality as q  # noqa: E402
from shared.formats.model_meta import model_side  # noqa: E402
from shared.formats.spec import GenerationSpec  # noqa: E402
from shared.shapes import render_scene  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402

EDIT_STREAM, LAYOUT_STREAM = 920_001, 920_002
SHAPES_STREAM = 920_004  # the renders layout.shapes takes its shapes from


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _box(m: np.ndarray):
    ys, xs = np.nonzero(m)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def pair_region(judge, image: np.ndarray, colour: str, shape: str) -> np.ndarray:
    with torch.no_grad():
        pred = judge.net(q.to_tensor([image])).argmax(1)[0].numpy()
    return pred == q.pair_index(colour, shape) + 1


def near_colour(image: np.ndarray, colour: str, tolerance: int = 120) -> np.ndarray:
    """Pixels within `tolerance` (L1 over RGB) of a palette colour (the world draws flat colours)."""
    from shared.shapes.world import PALETTE

    return np.abs(image.astype(int) - np.asarray(PALETTE[colour], dtype=int)).sum(-1) < tolerance


def colour_region(edited: np.ndarray, source: np.ndarray, colour: str, tolerance: int = 120) -> np.ndarray:
    """Pixels the edit turned into `colour`: near the palette colour now and not before (other
    objects of that colour are not the edit)."""
    return near_colour(edited, colour, tolerance) & ~near_colour(source, colour, tolerance)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component (stray pixels of the colour elsewhere are not the object)."""
    import cv2

    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask & False
    return comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def centroid_error(region: np.ndarray, asked: np.ndarray) -> float:
    """Distance in px between the centroids of a drawn region and an asked mask (99: nothing drawn)."""
    if not region.any():
        return 99.0
    ys, xs = np.nonzero(region)
    ay, ax = np.nonzero(asked)
    return float(np.hypot(xs.mean() - ax.mean(), ys.mean() - ay.mean()))


def placement(region: np.ndarray, asked: list[float]) -> tuple[float, float]:
    """(centroid error in px, box IoU) of a region against an asked box; (99, 0) for no region."""
    got = _box(region)
    if got is None:
        return 99.0, 0.0
    ys, xs = np.nonzero(region)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    return float(np.hypot(cx - (asked[0] + asked[2]) / 2, cy - (asked[1] + asked[3]) / 2)), _box_iou(got, asked)


def edit_quality(model, judge, world, n: int, gen: GenerationSpec, batch: int, seed: int,
                 cross_scale: float = 2.5, stream: int = EDIT_STREAM, options: dict | None = None) -> dict:
    """options: further `EditOptions` fields (e.g. {"self_strength": 0.5})."""
    from worker.engine.shape_guided import EditOptions, edit_images

    rng = np.random.default_rng(seed)
    scenes = [render_scene(q.scene_seed(stream, i), gen.width, world=world) for i in range(n)]
    ious, any_pair_ious, colour_ious, hits, outside, started = [], [], [], [], [], time.time()
    for b0 in range(0, n, batch):
        chunk = scenes[b0:b0 + batch]
        objs = [max(s.objects, key=lambda o: o.area) for s in chunk]
        new = [str(rng.choice([c for c in world.colours if c != o.colour])) for o in objs]
        images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 127.5 - 1 for s in chunk])
        masks = torch.from_numpy(np.stack([s.instance_mask(o) for s, o in zip(chunk, objs)]))
        out, _ = edit_images(model, images, masks, [s.caption for s in chunk],
                             [f"a {c} {o.shape}" for c, o in zip(new, objs)], [""] * len(chunk), gen,
                             EditOptions(cross_scale=cross_scale, **(options or {})),
                             seeds=[seed * 1000 + b0 + k for k in range(len(chunk))])
        for s, o, c, img, m in zip(chunk, objs, new, out.images, masks.numpy()):
            a = np.asarray(img.convert("RGB"))
            # the edited object only: pixels outside the mask the judge already read as the asked
            # pair in the source are another object of that pair (outside pixels are copied)
            read = pair_region(judge, a, c, o.shape)
            region = read & ~(pair_region(judge, s.image, c, o.shape) & ~m)
            ious.append(_iou(region, m))
            any_pair_ious.append(_iou(read, m))
            colour_ious.append(_iou(colour_region(a, s.image, c), m))
            hits.append(region.sum() >= q.MIN_PAIR_PIXELS and (region & m).sum() >= 0.5 * region.sum())
            outside.append(float(np.abs(a.astype(float) - s.image.astype(float))[~m].mean()))
    return {
        "n_edits": n, "shape_iou_mean": round(float(np.mean(ious)), 4),
        "shape_iou_ge_0.90": round(float(np.mean([i >= 0.9 for i in ious])), 4),
        # the reading before other objects of the asked pair were excluded (earlier reports)
        "shape_iou_any_pair_mean": round(float(np.mean(any_pair_ious)), 4),
        "shape_iou_by_colour_mean": round(float(np.mean(colour_ious)), 4),
        "shape_iou_by_colour_ge_0.90": round(float(np.mean([i >= 0.9 for i in colour_ious])), 4),
        "appearance_hit": round(float(np.mean(hits)), 4), "outside_mad": round(float(np.mean(outside)), 3),
        "guidance_scale": gen.guidance_scale, "cross_scale": cross_scale, "stream": stream, "steps": gen.steps,
        "options": options or {},
        "seconds": round(time.time() - started, 1),
    }


def shape_bank(world, side: int, n: int = 200):
    """layout.shapes' bank from real renders of another stream than the judge's and the test's."""
    import tempfile

    from shared.formats.spec import SourceSpec
    from shared.shapes.dataset import write_real_dataset
    from worker.engine.mask_sources import load_mask_sources
    from worker.engine.shape_bank import build_shape_bank

    root = Path(tempfile.mkdtemp(prefix="bench-shapes-")) / "real"
    write_real_dataset(root, n, seed=SHAPES_STREAM, size=side, formats=[], world=world)
    sources = load_mask_sources(SourceSpec(path=str(root)), tuple(world.shapes), root)
    return build_shape_bank(sources, {i + 1: name for i, name in enumerate(world.shapes)})


def layout_quality(model, judge, world, n: int, gen: GenerationSpec, batch: int, seed: int, scale: float,
                   modes: tuple[str, ...] = ("guided", "plain"), box_window: tuple[float, float] = (0.0, 1.0)) -> dict:
    """modes: guided (self-guidance), plain (none), box_mask (rectified words in their boxes),
    shapes (rectified words in a real shape of their class fitted into the box: layout.shapes),
    and guided+ either; interleaved per batch. The shapes modes are also read against the fitted
    shape's own centroid (`..._vs_shape`): a triangle that fills its box is not centred on it."""
    from shared.formats.prompts import ClassMention, SamplePlan
    from worker.engine.methods.layout import box_mask, region_mask
    from worker.engine.self_guidance import GuidanceOptions, ObjectTarget, layout_images
    from worker.engine.text import tokenize

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        side = float(rng.uniform(0.4, 0.55))
        x0, y0 = float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side))
        items.append((str(rng.choice(world.colours)), str(rng.choice(world.shapes)), (x0, y0, x0 + side, y0 + side)))
    res = tuple((model.extras.get("recommended_labels") or {}).get("cross_resolutions") or ()) or None
    side = gen.width
    shape_regions = []
    if any("shapes" in m for m in modes):
        bank, shape_rng = shape_bank(world, side), np.random.default_rng(seed + 1)
        for _, s, box in items:
            x0, y0, x1, y1 = (int(round(v * side)) for v in box)
            region = np.zeros((side, side), bool)
            region[y0:y1, x0:x1] = bank.fitted(world.shapes.index(s) + 1, shape_rng, y1 - y0, x1 - x0).mask
            shape_regions.append(region)
    result, times = {}, {m: [] for m in modes}
    for mode in modes:
        result[mode] = {"centroid": [], "box": [], "centroid_by_colour": [], "box_by_colour": [],
                        "centroid_vs_shape": [], "centroid_vs_shape_by_colour": []}
    for b0 in range(0, n, batch):
        chunk = items[b0:b0 + batch]
        prompts = [f"a {c} {s}" for c, s, _ in chunk]
        ids = tokenize(model.tokenizer, prompts)["input_ids"]
        shape_ids = [model.tokenizer.convert_tokens_to_ids(s) for _, s, _ in chunk]
        targets = [[ObjectTarget((row.tolist().index(t),), box)] for row, t, (_, _, box) in zip(ids, shape_ids, chunk)]
        seeds = [seed * 1000 + b0 + k for k in range(len(chunk))]
        plans = [SamplePlan(k, sd, pr, "", (ClassMention(s, 1, ((len(pr) - len(s), len(pr)),)),))
                 for k, (sd, pr, (_, s, _)) in enumerate(zip(seeds, prompts, chunk))]
        pixel_boxes = [[tuple(int(round(v * side)) for v in box)] for _, _, box in chunk]
        for mode in modes:  # interleaved per batch
            t0 = time.perf_counter()
            controls = [box_mask(model, plans, pixel_boxes, (side, side), box_window)] if "box_mask" in mode else []
            if "shapes" in mode:
                regions = np.stack(shape_regions[b0:b0 + batch]).astype(np.int64)
                controls = [region_mask(model, plans, regions, box_window)]
            out = layout_images(model, prompts, seeds, gen, targets,
                                GuidanceOptions(scale=scale if "guided" in mode else 0.0, resolutions=res),
                                controls=controls)
            times[mode].append((time.perf_counter() - t0) / len(chunk))
            for k, ((c, s, box), img) in enumerate(zip(chunk, out.images)):
                pixels = np.asarray(img.convert("RGB"))
                asked = [v * side for v in box]
                # the judge's region of the (colour, shape) pair, and (one object per image, flat
                # palette colours) the largest region of the asked colour: where it was drawn
                for suffix, region in (("", pair_region(judge, pixels, c, s)),
                                       ("_by_colour", largest_component(near_colour(pixels, c)))):
                    err, iou = placement(region, asked)
                    result[mode]["centroid" + suffix].append(err)
                    result[mode]["box" + suffix].append(iou)
                    if "shapes" in mode:
                        result[mode]["centroid_vs_shape" + suffix].append(centroid_error(region, shape_regions[b0 + k]))
    out = {"n_objects": n, "scale": scale, "resolutions": None if res is None else list(res), "box_window": list(box_window)}
    for mode, r in result.items():
        out[mode] = {"seconds_per_image_median": round(float(np.median(times[mode])), 3)}
        for suffix in ("", "_by_colour"):
            c, b = np.asarray(r["centroid" + suffix]), np.asarray(r["box" + suffix])
            out[mode] |= {f"centroid_within_2px{suffix}": round(float((c <= 2).mean()), 4),
                          f"box_iou_ge_0.70{suffix}": round(float((b >= 0.7).mean()), 4),
                          f"both{suffix}": round(float(((c <= 2) & (b >= 0.7)).mean()), 4),
                          f"centroid_error_px_median{suffix}": round(float(np.median(c)), 2),
                          f"box_iou_median{suffix}": round(float(np.median(b)), 4)}
            if r["centroid_vs_shape" + suffix]:
                cs = np.asarray(r["centroid_vs_shape" + suffix])
                out[mode] |= {f"centroid_within_2px_vs_shape{suffix}": round(float((cs <= 2).mean()), 4),
                              f"both_vs_shape{suffix}": round(float(((cs <= 2) & (b >= 0.7)).mean()), 4),
                              f"centroid_error_px_median_vs_shape{suffix}": round(float(np.median(cs)), 2)}
    for mode in modes:
        if mode != "plain" and "plain" in modes:
            out[f"time_ratio_{mode}_vs_plain"] = round(out[mode]["seconds_per_image_median"] / out["plain"]["seconds_per_image_median"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--parts", default="edit,layout")
    p.add_argument("--n-edit", type=int, default=32)
    p.add_argument("--n-layout", type=int, default=32)
    p.add_argument("--n-classifier", type=int, default=1000)
    p.add_argument("--cls-epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--edit-guidance", type=float, default=1.5,
                   help="edit's guidance scale: the source is inverted without guidance, and a high scale on the way "
                   "back breaks the inversion (noisy objects); 1.5 measured on shapes-v2")
    p.add_argument("--edit-cross-scale", type=float, default=6.0,
                   help="edit's word scaling (edit.cross_scale; the authors' 2.5 for SD): 6.0 chosen on a validation "
                   "stream on shapes-v2 (docs/methods.md)")
    p.add_argument("--edit-inside-noise", type=float, default=1.0,
                   help="edit.inside_noise (fresh noise inside the mask; the authors' pure inversion is 0): 1.0 chosen "
                   "on the validation stream on shapes-v2 (docs/methods.md)")
    p.add_argument("--edit-options", type=json.loads, default=None,
                   help='further EditOptions fields as JSON, e.g. \'{"self_strength": 0.5}\'')
    p.add_argument("--edit-stream", type=int, default=EDIT_STREAM, help="930001: the validation stream settings are chosen on")
    p.add_argument("--layout-scale", type=float, default=2.0)
    p.add_argument("--layout-modes", default="plain,box_mask,shapes,guided+shapes",
                   help="of plain, guided, box_mask, guided+box_mask, shapes, guided+shapes")
    p.add_argument("--layout-guidance", type=float, default=1.5,
                   help="layout's guidance scale: rectified objects break into pieces at 3.0 and stay whole at 1.5 "
                   "(as mask2image's; docs/methods.md)")
    p.add_argument("--box-window", type=float, default=1.0, help="box_mask acts in steps [0, this) of the run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args()
    from worker.engine.loading import load_model

    torch.manual_seed(a.seed)
    model = load_model(a.model)
    world = get_world(model.extras.get("world"))
    side = model_side(model.extras)  # the model's own side
    q.use_world(world, side)
    t0 = time.time()
    judge = q.PairJudge(q.real_scenes(q.CLASSIFIER_STREAM, a.n_classifier), a.cls_epochs, a.seed)
    result = {"model": a.model, "model_revision": model.info.revision, "judge_seconds": round(time.time() - t0, 1)}
    gen = GenerationSpec(width=side, height=side, steps=a.steps, guidance_scale=a.layout_guidance, scheduler="ddim",
                         batch_size=a.batch)
    parts = a.parts.split(",")
    if "edit" in parts:
        result["edit"] = edit_quality(model, judge, world, a.n_edit, gen.model_copy(update={"guidance_scale": a.edit_guidance}),
                                      a.batch, a.seed, a.edit_cross_scale, a.edit_stream,
                                      {"inside_noise": a.edit_inside_noise, **(a.edit_options or {})})
        print(json.dumps({"edit": result["edit"]}), file=sys.stderr)
    if "layout" in parts:
        result["layout"] = layout_quality(model, judge, world, a.n_layout, gen, a.batch, a.seed, a.layout_scale,
                                          tuple(a.layout_modes.split(",")), (0.0, a.box_window))
    q.emit_json(result, a.out)


if __name__ == "__main__":
    main()
