"""Label-quality benchmark of a shapes model against the shapes world's exact ground truth.

    python bench/quality.py [--model builtin:shapes-v2] [--out bench/out] [--quick]

Prints one JSON object:
  attention_miou_real  held-out *real* renders: noise to timestep --t, one UNet pass with the
                       caption, capture cross (16, 32) + self (32) attention, dsgen's labels;
                       mIoU over the shape classes vs ground truth, "refined" (Dataset Diffusion
                       self-attention refinement) and "daam" (thresholded cross-attention).
                       Uncertain (255) pixels count as "not the class".
  prompt_fidelity      generate from held-out captions with dsgen (CFG, DDIM); fraction of the
                       prompted objects (colour + shape) a small classifier trained on real
                       renders finds in the image; also "colour only" and "shape only".
                       `.by_object`: the same read per object (bench/object_judge.py: one solid
                       region whose silhouette matches the shape as real objects' do; blobs and
                       fragments do not count), with the reading of real renders beside it.
  synthetic_vs_real    the same small segmenter trained once on N generated samples with dsgen's
                       labels (255 ignored) and once on N real renders, both evaluated on the
                       held-out real set: mIoU of each and the ratio synthetic / real.
  labels_on_generated  dsgen's labels on the generated images against the judge's per-pixel
                       reading of those images (truth from their pixels, not from dsgen), with
                       the judge's own mIoU on real renders beside it.
  real_plus_synthetic  the segmenter trained on 50 real renders (repeated to the same size) vs
                       on those 50 + the N generated samples, on the held-out real set.
  mask2image           FreeMask / FreestyleNet on the shapes world (masks of held-out real renders,
                       captions as prompts, rectified cross-attention):
    .mask_fidelity       a segmenter trained on real renders, run on the generated images: mIoU
                         against the input masks (the labels mask2image claims are exact);
    .synthetic_vs_real   the small segmenter trained on N mask2image samples vs on N real renders,
                         both evaluated on the held-out real set (ratio synthetic / real);
    .real_plus_synthetic the segmenter on 50 real renders + the N samples vs on the 50 repeated;
    .filter              FreeMask's segmenter filter (dsgen segmenter): the same segmenter trained
                         on filtered vs unfiltered labels, for text2image and mask2image data (mIoU
                         on real, mean over --filter-seeds, per seed and paired by seed): `.pixels`
                         FreeMask's 1.25 x class mean loss; `.real_quantile` the loss 99 % of real
                         pixels stay under (reference: real_quantile); `.samples_scope` samples
                         dropped whole (scope: samples), min_kept set on held-out real renders (the
                         kept fraction 95% of them reach);
    .hardness            hardness-aware variants vs uniform variants per mask at about the same
                         number of images (mIoU on real of a segmenter trained on each).
  layout_first         text2image drawn layout-first (`method: layout`, `from_prompts`): the same
                       captions, each class word given a random box and a shape of its class from
                       64 held-out real renders, drawn there by rectified cross-attention, labelled
                       by those shapes. The same keys as above (prompt_fidelity with by_object,
                       labels_on_generated, synthetic_vs_real, real_plus_synthetic) for its data.
  augment              DA-Fusion (`method: augment`) on real renders, labels carried over: label
                         validity and real N + augmented vs real N (bench/augment_quality.py).
`--parts` picks parts (attention, fidelity, synthetic, mask2image, layout_first, augment; text2image_samples:
text2image data for the filter without the fidelity judges).
PNG grids (samples, overlays) go to --out.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from shared.formats.model_meta import model_side  # noqa: E402
from shared.formats.prompts import ClassMention  # noqa: E402
from shared.shapes import COLOURS, SHAPES, render_scene  # noqa: E402
from shared.shapes.dataset import scene_seed  # noqa: E402
from shared.shapes.world import World, get_world  # noqa: E402

# Disjoint scene streams (training uses SeedSequence([seed, 7919, step]) streams).
TEST_STREAM, CLASSIFIER_STREAM, SEG_REAL_STREAM, PROMPT_STREAM = 910_001, 910_002, 910_003, 910_004
MASK_STREAM, FILTER_REAL_STREAM = 910_005, 910_006
VALIDATION_STREAM = 910_007  # label settings are chosen here (bench/label_sweep.py), never on TEST_STREAM
FILTER_CALIBRATION_STREAM = 910_008  # real renders that set the sample-scope filter's min_kept (never TEST_STREAM)
SELECTION_TEST_STREAM = 910_009  # held-out real renders that settings are chosen on (bench/generated_labels.py)
OBJECT_CALIBRATION_STREAM = 910_010  # one-object real renders that calibrate the per-object reading
LAYOUT_SHAPES_STREAM = 910_011  # real renders whose instance masks are layout_first's shapes
OUTLINE_STREAM = 910_012  # one-object real renders the outline classifier learns from
FILTER_ROWS = ("pixels", "real_quantile", "samples")
N_CLASSES = len(SHAPES) + 1
CLASS_RGB = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]
OBJ_RE = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


WORLD: World = get_world("v2")
SIZE = 32  # side of the real renders and generated images: the model's own (dsgen.json)


def use_world(world: World, size: int = 32) -> None:
    """Measure against `world` at `size` px (what the model was trained on, from its dsgen.json)."""
    global WORLD, COLOURS, SHAPES, N_PAIRS, OBJ_RE, SIZE
    WORLD, COLOURS, SHAPES, SIZE = world, world.colours, world.shapes, int(size)
    N_PAIRS = len(COLOURS) * len(SHAPES)
    OBJ_RE = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def real_scenes(stream: int, n: int, size: int | None = None):
    return [render_scene(scene_seed(stream, i), size or SIZE, world=WORLD) for i in range(n)]


def caption_mentions(caption: str, suffix: bool) -> tuple[str, tuple[ClassMention, ...]]:
    """Prompt and class mentions: the shape words of the caption, or the appended class names."""
    shapes_in = list(dict.fromkeys(m.group(2) for m in OBJ_RE.finditer(caption)))
    if suffix:
        ordered = [s for s in SHAPES if s in shapes_in]
        prompt, mentions, pos = caption + "; ", [], len(caption) + 2
        for i, s in enumerate(ordered):
            if i:
                prompt += " "
                pos += 1
            mentions.append(ClassMention(s, SHAPES.index(s) + 1, ((pos, pos + len(s)),)))
            prompt += s
            pos += len(s)
        return prompt, tuple(mentions)
    mentions = []
    for s in shapes_in:
        spans = tuple(m.span(2) for m in OBJ_RE.finditer(caption) if m.group(2) == s)
        mentions.append(ClassMention(s, SHAPES.index(s) + 1, spans))
    return caption, tuple(mentions)


class IoU:
    """Accumulated intersection / union per class over a dataset."""

    def __init__(self) -> None:
        self.inter = np.zeros(N_CLASSES)
        self.union = np.zeros(N_CLASSES)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        for c in range(N_CLASSES):
            p, g = pred == c, gt == c
            self.inter[c] += (p & g).sum()
            self.union[c] += (p | g).sum()

    def per_class(self) -> dict[str, float]:
        names = ["background", *SHAPES]
        return {n: round(float(i / u), 4) if u else None for n, i, u in zip(names, self.inter, self.union)}

    def miou(self, with_background: bool = False) -> float:
        sl = slice(0, None) if with_background else slice(1, None)
        i, u = self.inter[sl], self.union[sl]
        return round(float(np.mean(i[u > 0] / u[u > 0])), 4)


# ------------------------------------------------------------------ attention on real images

@torch.no_grad()
def attention_labels(model, images: list[np.ndarray], captions: list[str], t: int, suffix: bool, batch: int = 25,
                     seed: int = 0, specs=None):
    """dsgen's labels read from one UNet pass over `images` noised to `t` with their captions,
    one capture per batch shared by every setting: name -> list of semantic maps. `specs`
    (name -> LabelSpec) defaults to the model's recommended settings (dsgen.json) in refined and
    DAAM mode, as a job using it gets them. The capture is at the model's recommended
    resolutions (label_image reads what the store captured), so settings differ in thresholds,
    tau, edges and mode only."""
    from shared.formats.spec import LabelSpec
    from worker.engine.attention import CaptureConfig, capture_attention
    from worker.engine.text import encode_prompts, token_groups
    from worker.labels.from_attention import label_image

    rec = model.extras.get("recommended_labels", {})
    size = images[0].shape[0]
    if specs is None:
        rec = {k: v for k, v in rec.items() if k in LabelSpec.model_fields and k != "mode"}
        specs = {"refined": LabelSpec(**{**rec, "mode": "refined"}), "daam": LabelSpec(**{**rec, "mode": "daam"})}
    cross = tuple(rec.get("cross_resolutions", (16, 32)))
    self_res = int(rec.get("self_resolution", 16))
    cfg = CaptureConfig(latent_hw=(size, size), cross_resolutions=cross, self_resolutions=(self_res,))
    labels: dict[str, list[np.ndarray]] = {k: [] for k in specs}
    a = model.scheduler.alphas_cumprod[t].float()
    g = torch.Generator().manual_seed(seed)
    for b0 in range(0, len(images), batch):
        chunk, caps = images[b0:b0 + batch], captions[b0:b0 + batch]
        plans = [caption_mentions(c, suffix) for c in caps]
        enc = encode_prompts(model, [p for p, _ in plans])
        x0 = to_tensor(chunk)
        noise = torch.randn(x0.shape, generator=g)
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(model.device, model.dtype)
        tt = torch.full((len(chunk),), t, device=model.device)
        mask = None if enc.attention_mask is None else enc.attention_mask.to(model.device)
        with capture_attention(model.unet, cfg) as store:
            store.begin_step(0, 1)
            model.unet(xt, tt, encoder_hidden_states=enc.embeds.to(model.device, model.dtype), encoder_attention_mask=mask)
        for j, (image, (_, mentions)) in enumerate(zip(chunk, plans)):
            groups = token_groups(enc.offsets[j], mentions)
            for k, spec in specs.items():
                res = label_image(store, j, groups, [m.category_id for m in mentions], [m.name for m in mentions],
                                  spec, (size, size), image=image)
                labels[k].append(res.semantic)
    return labels


def attention_on_real(model, scenes, t: int, suffix: bool, batch: int = 25, seed: int = 0, specs=None):
    """IoU against the truth of label settings on real renders noised to `t` (attention_labels)."""
    labels = attention_labels(model, [s.image for s in scenes], [s.caption for s in scenes], t, suffix, batch, seed, specs)
    ious = {k: IoU() for k in labels}
    for k, maps in labels.items():
        for sem, scene in zip(maps, scenes):
            ious[k].add(sem, scene.semantic)
    first = next(iter(labels))
    ignored = float(np.mean([(sem == 255).mean() for sem in labels.get("refined", labels[first])]))
    examples = []
    if "refined" in labels and "daam" in labels:
        examples = [(s.image, s.semantic, r, d) for s, r, d in zip(scenes[:16], labels["refined"], labels["daam"])]
    return ious, ignored, examples


# ------------------------------------------------------------------ small networks

def pair_index(colour: str, shape: str) -> int:
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


N_PAIRS = len(COLOURS) * len(SHAPES)
MIN_PAIR_PIXELS = 12  # a judged object covers at least this many pixels (real objects: >= ~40)


def pair_map(scene) -> np.ndarray:
    """Per pixel: 0 background, else 1 + pair_index(colour, shape) of the visible object."""
    out = np.zeros(scene.semantic.shape, np.int64)
    for o in scene.objects:
        out[scene.instance_mask(o)] = 1 + pair_index(o.colour, o.shape)
    return out


def presence_targets(scenes) -> torch.Tensor:
    y = torch.zeros(len(scenes), N_PAIRS)
    for i, s in enumerate(scenes):
        for o in s.objects:
            y[i, pair_index(o.colour, o.shape)] = 1
    return y


class PairJudge:
    """Prompt-fidelity judge trained on real renders only: a segmenter over the 20
    (colour, shape) pairs; a pair is present when it wins >= MIN_PAIR_PIXELS pixels."""

    def __init__(self, scenes, epochs: int, seed: int = 0):
        # The judge depends only on its training renders and settings: cache it (bench/out/cache)
        # so the benches that share one do not retrain it (minutes on a CPU).
        import hashlib

        key = hashlib.sha256(json.dumps([WORLD.to_json(), len(scenes), epochs, seed,
                                         hashlib.sha256(b"".join(s.image.tobytes() for s in scenes)).hexdigest()],
                                        sort_keys=True).encode()).hexdigest()[:16]
        cached = ROOT / "bench" / "out" / "cache" / f"pair-judge-{key}.pt"
        if cached.is_file():
            self.net = SegNet(n_classes=1 + N_PAIRS)
            self.net.load_state_dict(torch.load(cached, map_location="cpu"))
            self.net.eval()
            return
        self.net = train_segmenter([s.image for s in scenes], [pair_map(s) for s in scenes], epochs, seed,
                                   n_classes=1 + N_PAIRS, flips=False)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), cached.with_suffix(".tmp"))
        cached.with_suffix(".tmp").replace(cached)

    @torch.no_grad()
    def pairs(self, images: list[np.ndarray]) -> np.ndarray:
        """Per pixel: 0 background, else 1 + pair_index (the judge's reading of an image)."""
        return np.concatenate([self.net(to_tensor(images[b0:b0 + 64])).argmax(1).numpy()
                               for b0 in range(0, len(images), 64)])

    def semantic(self, images: list[np.ndarray]) -> np.ndarray:
        """Per-pixel shape class (0 background): the judge's reading of an image, used as the
        truth of *generated* images (derived from their pixels, not from dsgen's labels)."""
        pair = self.pairs(images)
        return np.where(pair > 0, (pair - 1) % len(SHAPES) + 1, 0).astype(np.uint8)

    def presence(self, images: list[np.ndarray]) -> torch.Tensor:
        """[images, pairs]: 1 where the pair wins >= MIN_PAIR_PIXELS pixels anywhere in the image."""
        pred = torch.from_numpy(self.pairs(images))
        counts = torch.stack([(pred == k + 1).flatten(1).sum(1) for k in range(N_PAIRS)], 1)
        return (counts >= MIN_PAIR_PIXELS).float()


def object_rule(judge: PairJudge, per_shape: int = 40):
    """The per-object reading's thresholds (bench/object_judge.py), calibrated through `judge` on
    real renders holding one object each, every colour x shape of the current world."""
    from bench import object_judge as oj

    scenes = [render_scene(scene_seed(OBJECT_CALIBRATION_STREAM, i), SIZE, world=WORLD,
                           objects=[(COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)])])
              for i in range(per_shape * len(SHAPES))]
    return oj.calibrate(judge.pairs([s.image for s in scenes]), [s.objects[0].shape for s in scenes],
                        [s.objects[0].area for s in scenes], len(SHAPES))


def outline_classifier(judge: PairJudge, per_shape: int = 160, seed: int = 0):
    """A shape classifier of regions' outlines (bench/outline_classifier.py), trained through
    `judge` on real renders holding one object each, every colour x shape of the current world."""
    from bench import outline_classifier as oc

    scenes = [render_scene(scene_seed(OUTLINE_STREAM, i), SIZE, world=WORLD,
                           objects=[(COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)])])
              for i in range(per_shape * len(SHAPES))]
    read = [(oc.largest_region(pm, len(SHAPES)), s.objects[0].shape) for pm, s in zip(judge.pairs([s.image for s in scenes]), scenes)]
    read = [(r, shape) for r, shape in read if r.any()]  # the judge saw nothing: no outline to learn
    return oc.OutlineClassifier([r for r, _ in read], [shape for _, shape in read], SHAPES, seed=seed)


def object_fidelity(judge: PairJudge, rule, captions: list[str], images: list[np.ndarray]) -> dict:
    """Prompt fidelity read per object (bench/object_judge.py): a prompted (colour, shape) counts
    when the image holds one solid region the judge reads as that pair whose silhouette matches
    the shape as real objects do. Also: the share of the images' foreground regions (fragments
    included) that are such objects, and images whose objects are exactly the prompted ones."""
    from bench import object_judge as oj

    hits = colour = shape = total = regions = objects = 0
    all_in, exact, silhouettes = [], [], []
    for cap, pm in zip(captions, judge.pairs(images)):
        read = oj.read_objects(pm, COLOURS, SHAPES, rule.min_area)
        found = [o for o in read if rule.accepts(o)]
        silhouettes += [o.shape_iou for o in read if o.area >= rule.min_area[o.shape]]
        regions, objects = regions + len(read), objects + len(found)
        wanted = [(m.group(1), m.group(2)) for m in OBJ_RE.finditer(cap)]
        ok_all = True
        for c, s in wanted:
            ok = any((o.colour, o.shape) == (c, s) for o in found)
            total, hits, ok_all = total + 1, hits + ok, ok_all and ok
            colour += any(o.colour == c for o in found)
            shape += any(o.shape == s for o in found)
        all_in.append(ok_all)
        exact.append(ok_all and len(found) == len(wanted) == len(read))
    return {"colour_and_shape": round(hits / max(total, 1), 4), "colour": round(colour / max(total, 1), 4),
            "shape": round(shape / max(total, 1), 4), "all_objects_in_image": round(float(np.mean(all_in)), 4),
            "exactly_the_prompted_objects": round(float(np.mean(exact)), 4),
            "regions_that_are_objects": round(objects / max(regions, 1), 4),
            # how close object-sized regions come to their judged shape's silhouette (real renders ~0.95)
            "silhouette_iou_median": round(float(np.median(silhouettes)), 4) if silhouettes else None,
            "rule": rule.to_json()}


class SegNet(nn.Module):
    """A small encoder-decoder segmenter (the same for synthetic and real training data)."""

    def __init__(self, width: int = 32, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.e1, self.e2, self.e3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.d2, self.d1 = block(6 * w, 2 * w), block(3 * w, w)
        self.head = nn.Conv2d(w, n_classes, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return self.head(d1)


def train_segmenter(images: list[np.ndarray], masks: list[np.ndarray], epochs: int, seed: int = 0,
                    n_classes: int = N_CLASSES, flips: bool = True) -> SegNet:
    torch.manual_seed(seed)
    net = SegNet(n_classes=n_classes)
    x = to_tensor(images)
    y = torch.from_numpy(np.stack(masks).astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(32):
            xb, yb = x[idx], y[idx]
            flip = (torch.rand(len(idx), generator=g) < 0.5) & flips  # horizontal flips: labels follow
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yb = torch.where(flip[:, None, None], yb.flip(-1), yb)
            loss = F.cross_entropy(net(xb), yb, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def evaluate_segmenter(net: SegNet, scenes) -> IoU:
    iou = IoU()
    for b0 in range(0, len(scenes), 64):
        chunk = scenes[b0:b0 + 64]
        pred = net(to_tensor([s.image for s in chunk])).argmax(1).numpy()
        for p, s in zip(pred, chunk):
            iou.add(p, s.semantic)
    return iou


# ------------------------------------------------------------------ generation with dsgen

def generate_with_dsgen(model_id: str, captions: list[str], steps: int, guidance: float, suffix: bool, seed: int,
                        labels: dict | None = None):
    """text2image samples of `captions`, labelled with the model's recommended settings (+ `labels`)."""
    from shared.formats.spec import parse_spec
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    model = load_model(model_id)
    rec = model.extras.get("recommended_labels", {})
    spec = parse_spec({
        "name": "bench-quality", "model": model_id, "seed": seed,
        "classes": [{"name": s} for s in SHAPES],
        "prompts": {"source": "list", "prompts": captions, "append_class_names": suffix},
        "num_images": len(captions),
        "generation": {"width": SIZE, "height": SIZE, "steps": steps, "guidance_scale": guidance,
                       "scheduler": "ddim", "batch_size": 16},
        "labels": {"mode": "refined", **rec, **(labels or {})},
        "export": {"formats": []},
    })
    session = EngineSession(spec, model)
    return list(session.generate(range(len(captions))))


def generate_layout_first(model_id: str, captions: list[str], steps: int, guidance: float, seed: int,
                          shapes_dir: Path):
    """The captions drawn layout-first (`method: layout`, `from_prompts`): each class word a random
    box of the world's object sizes and a shape of its class from `shapes_dir`, rectified there,
    labelled by that shape."""
    from shared.formats.spec import parse_spec
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    spec = parse_spec({
        "name": "bench-layout-first", "model": model_id, "seed": seed, "method": "layout",
        "classes": [{"name": s} for s in SHAPES],
        "prompts": {"source": "list", "prompts": captions},
        "num_images": len(captions),
        "generation": {"width": SIZE, "height": SIZE, "steps": steps, "guidance_scale": guidance,
                       "scheduler": "ddim", "batch_size": 16},
        "layout": {"from_prompts": True, "random": {"size": list(WORLD.size_frac)}, "box_mask": True, "scale": 0.0,
                   "shapes": {"path": str(shapes_dir)}, "labels": "layout"},
        "export": {"formats": []},
    })
    return list(EngineSession(spec, load_model(model_id)).generate(range(len(captions))))


def emit_json(result: dict, out: Path | None) -> None:
    """A benchmark's one JSON object: printed, and written to `out` when given."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


# ------------------------------------------------------------------ grids

def colourise(sem: np.ndarray) -> np.ndarray:
    out = np.zeros((*sem.shape, 3), np.uint8)
    for c, rgb in enumerate(CLASS_RGB):
        out[sem == c] = rgb
    out[sem == 255] = (128, 128, 128)
    return out


def overlay(img: np.ndarray, sem: np.ndarray) -> np.ndarray:
    col = colourise(sem).astype(np.float32)
    m = ((sem > 0) & (sem != 255))[..., None]
    return np.where(m, 0.45 * img + 0.55 * col, img).astype(np.uint8)


def save_grid(rows: list[list[np.ndarray]], path: Path, scale: int = 4, labels: list[str] | None = None,
              row_labels: list[str] | None = None) -> None:
    """Tiles in rows; `labels` name the columns (along the top), `row_labels` the rows (at the left)."""
    h, w = rows[0][0].shape[:2]
    pad = 2
    top = 12 if labels else 0
    left = 6 * max(map(len, row_labels)) + 4 if row_labels else 0  # PIL's default font: about 6 px a character
    cols = max(len(r) for r in rows)
    size = (left + cols * (w * scale + pad) + pad, len(rows) * (h * scale + pad) + pad + top)
    canvas = Image.new("RGB", size, (255, 255, 255))
    for ri, row in enumerate(rows):
        for ci, tile in enumerate(row):
            im = Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(im, (left + pad + ci * (w * scale + pad), pad + ri * (h * scale + pad) + top))
    d = ImageDraw.Draw(canvas)
    for ci, text in enumerate(labels or []):
        d.text((left + pad + ci * (w * scale + pad), 0), text, fill=(0, 0, 0))
    for ri, text in enumerate(row_labels or []):
        d.text((2, top + pad + ri * (h * scale + pad) + (h * scale) // 2 - 5), text, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ------------------------------------------------------------------ main

def run(model_id: str, out: Path, n_real: int, n_synth: int, n_classifier: int, t: int, steps: int, guidance: float,
        suffix: bool, seg_epochs: int, cls_epochs: int, seed: int = 0, log=print, n_few_real: int = 50,
        parts: tuple[str, ...] = ("attention", "fidelity", "synthetic"), m2i_guidance: float = 1.5,
        filter_scopes: tuple[str, ...] = FILTER_ROWS, hardness: bool = True, filter_seeds: tuple[int, ...] = (),
        filter_quantile: float = 0.99, augment_seeds: tuple[int, ...] = (), augment_variants: int = 2,
        augment_guidance: float | None = None, augment_modes: tuple[str, ...] = ()) -> dict:
    from worker.engine.loading import load_model

    torch.manual_seed(seed)
    started = time.time()
    model = load_model(model_id)
    use_world(get_world(model.extras.get("world")), model_side(model.extras))
    test = real_scenes(TEST_STREAM, n_real)
    extras = model.extras.get("training", {})
    result = {"model": model_id, "model_revision": model.info.revision, "training_steps": extras.get("steps"),
              "training_seconds": extras.get("elapsed_s")}
    out.mkdir(parents=True, exist_ok=True)
    if "attention" in parts:
        result.update(_attention_part(model, test, t, suffix, out, log, started))
    samples = seg_real = None
    if "fidelity" in parts or "synthetic" in parts:
        samples, seg_real = _generation_parts(model_id, test, out, n_synth, n_classifier, steps, guidance, suffix,
                                              seg_epochs, cls_epochs, seed, log, started, result, n_few_real,
                                              segmenters="synthetic" in parts)
    if "text2image_samples" in parts and samples is None:  # text2image data for the filter, without the judges
        captions = [s.caption for s in real_scenes(PROMPT_STREAM, n_synth)]
        samples = generate_with_dsgen(model_id, captions, steps, guidance, suffix, seed)
        log(f"text2image generation done ({time.time() - started:.0f}s)")
    if "mask2image" in parts:
        if seg_real is None:
            seg_scenes = real_scenes(SEG_REAL_STREAM, n_synth)
            seg_real = train_segmenter([s.image for s in seg_scenes], [s.semantic for s in seg_scenes], seg_epochs, seed)
        result["mask2image"] = mask2image_quality(model_id, out, n_synth, steps, m2i_guidance, seg_epochs, seed, test,
                                                  seg_real, samples, log, filter_scopes, hardness, filter_seeds,
                                                  filter_quantile)
    if "layout_first" in parts:
        import functools
        import tempfile

        from shared.shapes.dataset import write_real_dataset

        shapes_dir = Path(tempfile.mkdtemp(prefix="bench-layout-")) / "shapes"
        write_real_dataset(shapes_dir, 64, seed=LAYOUT_SHAPES_STREAM, size=SIZE, formats=[], world=WORLD)
        draw = functools.partial(generate_layout_first, model_id, steps=steps, guidance=m2i_guidance, seed=seed,
                                 shapes_dir=shapes_dir)
        result["layout_first"] = {"guidance_scale": m2i_guidance, "shapes": "64 real renders (LAYOUT_SHAPES_STREAM)"}
        _, seg_real = _generation_parts(model_id, test, out, n_synth, n_classifier, steps, m2i_guidance, suffix,
                                        seg_epochs, cls_epochs, seed, log, started, result["layout_first"], n_few_real,
                                        generate=draw, prefix="layout_first_", seg_real=seg_real)
    if "augment" in parts:
        from bench.augment_quality import augment_quality

        if seg_real is None:
            seg_scenes = real_scenes(SEG_REAL_STREAM, n_synth)
            seg_real = train_segmenter([s.image for s in seg_scenes], [s.semantic for s in seg_scenes], seg_epochs, seed)
        result["augment"] = augment_quality(sys.modules[__name__], model_id, n_few_real, augment_variants, steps,
                                            augment_guidance or guidance, seg_epochs, seed, test, seg_real, log, out,
                                            seg_seeds=augment_seeds, modes=augment_modes)
    result["grids"] = sorted(str(p) for p in out.glob("*.png"))
    result["seconds"] = round(time.time() - started, 1)
    return result


def _attention_part(model, test, t, suffix, out, log, started) -> dict:
    # 1. attention on real images
    ious, ignored, examples = attention_on_real(model, test, t, suffix)
    log(f"attention done ({time.time() - started:.0f}s)")
    result = {
        "attention_miou_real": {
            "refined": ious["refined"].miou(), "daam": ious["daam"].miou(),
            "refined_with_background": ious["refined"].miou(True),
            "refined_per_class": ious["refined"].per_class(),
            "daam_per_class": ious["daam"].per_class(),
            "uncertain_fraction": round(ignored, 4),
            "n_images": len(test), "timestep": t, "prompt_form": "caption; classes" if suffix else "caption",
        },
    }
    save_grid([[img, colourise(gt), colourise(ref), colourise(daam)] for img, gt, ref, daam in examples[:8]],
              out / "real_attention.png", labels=["real", "truth", "refined", "daam"])
    return result


def _generation_parts(model_id, test, out, n_synth, n_classifier, steps, guidance, suffix, seg_epochs, cls_epochs,
                      seed, log, started, result, n_few_real: int = 50, segmenters: bool = True,
                      generate=None, prefix: str = "", seg_real=None):
    """Fidelity, labels and segmenters of generated data, written into `result`: text2image by
    default, or what `generate(captions)` makes (layout_first). `seg_real`: the real-trained
    segmenter of an earlier call (the same renders and seed), reused rather than trained again."""
    # 2. generation with dsgen: captions of another real stream (realistic object counts)
    captions = [s.caption for s in real_scenes(PROMPT_STREAM, n_synth)]
    if generate is None:
        samples = generate_with_dsgen(model_id, captions, steps, guidance, suffix, seed)
    else:
        samples = generate(captions)
    gen_images = [np.asarray(s.image.convert("RGB")) for s in samples]
    gen_labels = [s.semantic for s in samples]
    log(f"generation done ({time.time() - started:.0f}s)")
    # 3. prompt fidelity, judged by a classifier trained on real renders
    cls_train = real_scenes(CLASSIFIER_STREAM, n_classifier)
    judge = PairJudge(cls_train, cls_epochs, seed)
    p_real = judge.presence([s.image for s in test])
    p_gen = judge.presence(gen_images)
    y_real = presence_targets(test)
    judge_recall = float(((p_real > 0.5) & (y_real > 0)).sum() / y_real.sum())
    judge_fp = float(((p_real > 0.5) & (y_real == 0)).sum() / (y_real == 0).sum())
    hits = colour_hits = shape_hits = total = 0
    per_image_all = []
    for cap, p in zip(captions, p_gen):
        objs = [(m.group(1), m.group(2)) for m in OBJ_RE.finditer(cap)]
        ok_all = True
        for c, s in objs:
            total += 1
            ok = bool(p[pair_index(c, s)] > 0.5)
            hits += ok
            ok_all &= ok
            colour_hits += bool(max(p[pair_index(c, s2)] for s2 in SHAPES) > 0.5)
            shape_hits += bool(max(p[pair_index(c2, s)] for c2 in COLOURS) > 0.5)
        per_image_all.append(ok_all)
    rule = object_rule(judge)
    by_object = object_fidelity(judge, rule, captions, gen_images)
    by_object["on_real"] = object_fidelity(judge, rule, [s.caption for s in test], [s.image for s in test])
    by_object["on_real"].pop("rule")
    log(f"fidelity done ({time.time() - started:.0f}s)")
    # 3b. dsgen's labels on the generated images vs the judge's per-pixel reading of them
    # (uncertain 255 pixels left out of both); the judge's own mIoU on real renders says how
    # far that "truth" can be trusted.
    judge_sem = judge.semantic(gen_images)
    iou_gen, iou_judge_real = IoU(), IoU()
    for lab, truth in zip(gen_labels, judge_sem):
        keep = lab != 255
        iou_gen.add(np.where(keep, lab, 254), np.where(keep, truth, 254))
    for sc, truth in zip(test, judge.semantic([s.image for s in test])):
        iou_judge_real.add(truth, sc.semantic)
    if segmenters:  # the 'synthetic' part (a curve or an ablation asks only for fidelity)
        # 4. synthetic vs real: same segmenter, same real test set
        seg_real_scenes = real_scenes(SEG_REAL_STREAM, n_synth)
        if seg_real is None:
            seg_real = train_segmenter([s.image for s in seg_real_scenes], [s.semantic for s in seg_real_scenes],
                                       seg_epochs, seed)
        seg_synth = train_segmenter(gen_images, gen_labels, seg_epochs, seed)
        iou_real, iou_synth = evaluate_segmenter(seg_real, test), evaluate_segmenter(seg_synth, test)
        # 5. real + synthetic vs real only, at a small real N (FreeMask's claim): the real images
        # are repeated so both sets have the same size and the segmenters the same updates.
        few = seg_real_scenes[:n_few_real]
        reps = max(1, round((n_few_real + len(gen_images)) / n_few_real))
        few_x, few_y = [s.image for s in few], [s.semantic for s in few]
        seg_few = train_segmenter(few_x * reps, few_y * reps, seg_epochs, seed)
        seg_mix = train_segmenter(few_x + gen_images, few_y + gen_labels, seg_epochs, seed)
        iou_few, iou_mix = evaluate_segmenter(seg_few, test), evaluate_segmenter(seg_mix, test)
        log(f"segmenters done ({time.time() - started:.0f}s)")
    # grids
    save_grid([gen_images[r * 8:(r + 1) * 8] for r in range(min(4, len(gen_images) // 8))], out / f"{prefix}samples.png")
    save_grid([[g_img, overlay(g_img, lab)] for g_img, lab in list(zip(gen_images, gen_labels))[:8]],
              out / f"{prefix}generated_overlay.png", labels=["generated", "dsgen labels"])
    result.update({
        "prompt_fidelity": {
            "colour_and_shape": round(hits / max(total, 1), 4),
            "colour": round(colour_hits / max(total, 1), 4),
            "shape": round(shape_hits / max(total, 1), 4),
            "all_objects_in_image": round(float(np.mean(per_image_all)), 4),
            "n_objects": total, "n_images": len(captions), "steps": steps, "guidance_scale": guidance,
            "judge_on_real": {"recall": round(judge_recall, 4), "false_positive_rate": round(judge_fp, 5)},
            # the same read per object (blobs and fragments do not count; bench/object_judge.py)
            "by_object": by_object,
        },
        "labels_on_generated": {
            "miou_vs_judge": iou_gen.miou(), "per_class": iou_gen.per_class(),
            "judge_miou_on_real": iou_judge_real.miou(),
            "uncertain_fraction": round(float(np.mean([(lab == 255).mean() for lab in gen_labels])), 4),
        },
    })
    if segmenters:
        result.update({
            "real_plus_synthetic": {
                "miou_real_only": iou_few.miou(), "miou_real_plus_synthetic": iou_mix.miou(),
                "gain": round(iou_mix.miou() - iou_few.miou(), 4),
                "n_real": n_few_real, "real_repeats_in_real_only": reps, "n_synthetic": len(gen_images),
            },
            "synthetic_vs_real": {
                "miou_synthetic": iou_synth.miou(), "miou_real": iou_real.miou(),
                "ratio": round(iou_synth.miou() / max(iou_real.miou(), 1e-9), 4),
                "miou_synthetic_with_background": iou_synth.miou(True), "miou_real_with_background": iou_real.miou(True),
                "n_train": n_synth, "n_test": len(test), "epochs": seg_epochs,
            },
        })
    return samples, seg_real


# ------------------------------------------------------------------ mask2image (FreeMask)

def _m2i_samples(model_id: str, masks_dir: Path, n: int, steps: int, guidance: float, seed: int,
                 variants: int = 1, resample: dict | None = None, segmenter: str | None = None):
    from shared.formats.spec import parse_spec
    from worker.engine.loading import load_model
    from worker.engine.session import EngineSession

    m2i = {"source": {"path": str(masks_dir)}, "prompt": "source", "variants": variants}
    if resample:
        m2i["resample"] = resample
    labels = {"filter": {"segmenter": segmenter, "min_kept": 0.0}} if segmenter else {}
    spec = parse_spec({
        "name": "bench-m2i", "model": model_id, "seed": seed, "method": "mask2image",
        "classes": [{"name": s} for s in SHAPES], "num_images": n,
        "generation": {"width": SIZE, "height": SIZE, "steps": steps, "guidance_scale": guidance,
                       "scheduler": "ddim", "batch_size": 16},
        "mask2image": m2i, "labels": labels, "export": {"formats": []},
    })
    session = EngineSession(spec, load_model(model_id))
    return session, list(session.generate(range(n)))


def _filtered(samples, seg_dir: str, job_classes, scope: str = "pixels", min_kept: float = 0.0,
              reference: str = "class_mean", quantile: float = 0.99) -> tuple[list, float]:
    """FreeMask's filter applied to existing samples (copies); returns the samples it keeps and the
    ignored pixel fraction. scope pixels: high-loss pixels ignored; samples: samples dropped whole."""
    import copy

    from shared.formats.records import DROPPED
    from shared.formats.spec import parse_spec
    from worker.labels.filters import SegmenterFilter

    spec = parse_spec({"model": "m", "classes": [{"name": c} for c in job_classes], "num_images": 1,
                       "labels": {"filter": {"segmenter": seg_dir, "min_kept": min_kept, "scope": scope,
                                             "reference": reference, "quantile": quantile}}})
    flt = SegmenterFilter(spec, seg_dir)
    out = flt([copy.copy(s) for s in samples])
    ignored = float(np.mean([s.record.quality["segmenter_filter"]["ignored_fraction"] for s in out]))
    return [s for s in out if not s.record.quality.get(DROPPED)], ignored


def calibrated_min_kept(seg_dir: str, job_classes, n: int, quantile: float = 0.05) -> float:
    """The sample-scope threshold from real data: the kept fraction (pixels within tolerance) that
    all but `quantile` of held-out real renders reach. A synthetic sample below it looks worse to the
    segmenter than 95% of real ones."""
    import copy

    from shared.engine import GeneratedSample
    from shared.formats.records import ModelInfo, SampleRecord
    from shared.formats.spec import parse_spec
    from worker.labels.filters import SegmenterFilter

    real = real_scenes(FILTER_CALIBRATION_STREAM, n)
    wrapped = [GeneratedSample(SampleRecord(index=i, seed=0, prompt=s.caption, classes=[], method="real",
                                            model=ModelInfo(id="real"), width=SIZE, height=SIZE),
                               Image.fromarray(s.image), s.semantic.astype(np.uint8))
               for i, s in enumerate(real)]
    spec = parse_spec({"model": "m", "classes": [{"name": c} for c in job_classes], "num_images": 1,
                       "labels": {"filter": {"segmenter": seg_dir, "min_kept": 0.0, "scope": "samples"}}})
    kept = [s.record.quality["segmenter_filter"]["kept"] for s in SegmenterFilter(spec, seg_dir)([copy.copy(w) for w in wrapped])]
    return float(np.quantile(kept, quantile))


def mask2image_quality(model_id: str, out: Path, n: int, steps: int, guidance: float, seg_epochs: int, seed: int,
                       test, seg_real, t2i_samples=None, log=print, filter_scopes=FILTER_ROWS,
                       hardness: bool = True, filter_seeds: tuple[int, ...] = (), filter_quantile: float = 0.99) -> dict:
    import tempfile

    from shared.shapes.dataset import write_real_dataset
    from worker.engine.resample import mask_hardness, variants_by_hardness
    from worker.labels.segmenter import train_segmenter as train_freemask_segmenter

    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench-m2i-"))
    masks_dir = tmp / "masks"
    write_real_dataset(masks_dir, n, seed=MASK_STREAM, size=SIZE, formats=[], world=WORLD)
    session, samples = _m2i_samples(model_id, masks_dir, n, steps, guidance, seed)
    images = [np.asarray(s.image.convert("RGB")) for s in samples]
    labels = [s.semantic for s in samples]
    log(f"mask2image generation done ({time.time() - started:.0f}s)")
    # mask fidelity: a segmenter trained on real renders reads the generated images
    fidelity = IoU()
    with torch.no_grad():
        for b0 in range(0, len(images), 64):
            pred = seg_real(to_tensor(images[b0:b0 + 64])).argmax(1).numpy()
            for p, lab in zip(pred, labels[b0:b0 + 64]):
                fidelity.add(np.where(lab == 255, 0, p), np.where(lab == 255, 0, lab))
    iou_real = evaluate_segmenter(seg_real, test)
    seg_m2i = train_segmenter(images, labels, seg_epochs, seed)
    iou_m2i = evaluate_segmenter(seg_m2i, test)
    # real + mask2image vs real only at a small real N (FreeMask's claim), as for text2image
    few = real_scenes(SEG_REAL_STREAM, min(50, n))
    reps = max(1, round((len(few) + len(images)) / len(few)))
    few_x, few_y = [s.image for s in few], [s.semantic for s in few]
    iou_few = evaluate_segmenter(train_segmenter(few_x * reps, few_y * reps, seg_epochs, seed), test).miou()
    iou_mix = evaluate_segmenter(train_segmenter(few_x + images, few_y + labels, seg_epochs, seed), test).miou()
    save_grid([[img, overlay(img, lab)] for img, lab in list(zip(images, labels))[:8]], out / "mask2image_overlay.png",
              labels=["mask2image", "input mask"])
    log(f"mask2image fidelity done ({time.time() - started:.0f}s)")
    # FreeMask's segmenter (dsgen segmenter) trained on real renders -> class mean loss
    real = real_scenes(FILTER_REAL_STREAM, n)
    # class mean loss and loss quantiles on its own training renders (dsgen segmenter train's default)
    fm, summary = train_freemask_segmenter([(Image.fromarray(s.image), s.semantic) for s in real], list(SHAPES),
                                           image_size=SIZE, epochs=seg_epochs, seed=seed)
    seg_dir = tmp / "freemask-seg"
    fm.save(seg_dir)
    result = {
        "mask_fidelity": fidelity.miou(), "mask_fidelity_per_class": fidelity.per_class(),
        "synthetic_vs_real": {"miou_synthetic": iou_m2i.miou(), "miou_real": iou_real.miou(),
                              "ratio": round(iou_m2i.miou() / max(iou_real.miou(), 1e-9), 4), "n_train": n},
        "real_plus_synthetic": {"miou_real_only": iou_few, "miou_real_plus_mask2image": iou_mix,
                                "gain": round(iou_mix - iou_few, 4), "n_real": len(few), "real_repeats_in_real_only": reps,
                                "n_synthetic": len(images)},
        "freemask_segmenter": {"class_mean_loss": {k: round(v, 4) for k, v in fm.class_mean_loss.items()}, **summary},
        "filter": {},
    }
    sets = {"mask2image": samples}
    if t2i_samples is not None:
        sets["text2image"] = t2i_samples
    min_kept = calibrated_min_kept(str(seg_dir), SHAPES, n)
    seeds = filter_seeds or (seed,)

    def trained(data) -> list[float]:
        """mIoU on the real test set of the segmenter trained on `data`, once per seed."""
        imgs, labs = [np.asarray(s.image.convert("RGB")) for s in data], [s.semantic for s in data]
        return [evaluate_segmenter(train_segmenter(imgs, labs, seg_epochs, sd), test).miou() for sd in seeds]

    def row(scores: list[float], base: list[float], **extra) -> dict:
        mean = round(float(np.mean(scores)), 4)
        return {"miou_filtered": mean, "miou_per_seed": scores, **extra,
                "paired_difference": [round(a - b, 4) for a, b in zip(scores, base)],
                "filter_not_worse": bool(mean >= float(np.mean(base)) - 0.005)}

    for name, data in sets.items():
        unf = trained(data)
        entry = {"miou_unfiltered": round(float(np.mean(unf)), 4), "miou_unfiltered_per_seed": unf, "seeds": list(seeds)}
        if "pixels" in filter_scopes:  # FreeMask: 1.25 x the class mean loss on real data
            filtered, ignored = _filtered(data, str(seg_dir), SHAPES)
            entry["pixels"] = row(trained(filtered), unf, reference="class_mean", tolerance=1.25,
                                  ignored_fraction=round(ignored, 4))
        if "real_quantile" in filter_scopes:  # the loss `filter_quantile` of real pixels stay under
            filtered, ignored = _filtered(data, str(seg_dir), SHAPES, reference="real_quantile", quantile=filter_quantile)
            entry["real_quantile"] = row(trained(filtered), unf, reference="real_quantile", quantile=filter_quantile,
                                         tolerance=1.0, ignored_fraction=round(ignored, 4))
        if "samples" in filter_scopes:
            kept, _ = _filtered(data, str(seg_dir), SHAPES, scope="samples", min_kept=min_kept)
            entry["samples_scope"] = row(trained(kept), unf, min_kept=round(min_kept, 4), dropped=len(data) - len(kept),
                                         of=len(data))
        result["filter"][name] = entry
    log(f"filter done ({time.time() - started:.0f}s)")
    if not hardness:
        result["seconds"] = round(time.time() - started, 1)
        return result
    # hardness-aware vs uniform variants, about the same number of images
    m = max(4, n // 4)
    pool = tmp / "pool"
    write_real_dataset(pool, m, seed=MASK_STREAM + 1, size=SIZE, formats=[], world=WORLD)
    loss = fm.class_loss_by_id(list(SHAPES))
    from shared.formats.spec import SourceSpec
    from worker.engine.mask_sources import load_mask_sources

    maps = [src.load().semantic for src in load_mask_sources(SourceSpec(path=str(pool)), tuple(SHAPES), pool)]
    k = 6
    counts = variants_by_hardness([mask_hardness(x, loss) for x in maps], k, seed)
    total = sum(counts)
    uniform_v = max(1, round(total / m))
    _, hard_samples = _m2i_samples(model_id, pool, total, steps, guidance, seed, resample={"segmenter": str(seg_dir), "max_variants": k})
    _, uni_samples = _m2i_samples(model_id, pool, uniform_v * m, steps, guidance, seed, variants=uniform_v)
    scores = {}
    for name, data in (("hardness", hard_samples), ("uniform", uni_samples)):
        imgs = [np.asarray(s.image.convert("RGB")) for s in data]
        scores[name] = evaluate_segmenter(train_segmenter(imgs, [s.semantic for s in data], seg_epochs, seed), test).miou()
    result["hardness"] = {"miou_hardness": scores["hardness"], "miou_uniform": scores["uniform"],
                          "images_hardness": len(hard_samples), "images_uniform": len(uni_samples),
                          "masks": m, "max_variants": k, "variants": counts}
    log(f"hardness done ({time.time() - started:.0f}s)")
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--quick", action="store_true", help="small sizes (a test's floor check), not the reported numbers")
    p.add_argument("--n-real", type=int, default=200)
    p.add_argument("--n-synth", type=int, default=400)
    p.add_argument("--n-classifier", type=int, default=4000)
    p.add_argument("--t", type=int, default=100, help="timestep the real images are noised to")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--m2i-guidance", type=float, default=1.5,
                   help="mask2image's guidance scale (rectified attention already steers; 1.5 measured best on shapes-v2)")
    p.add_argument("--suffix", action="store_true", help="read class attention from '; <class names>'")
    p.add_argument("--seg-epochs", type=int, default=30)
    p.add_argument("--cls-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention-only", action="store_true", help="only attention_miou_real (fast; for curves)")
    p.add_argument("--parts", default="attention,fidelity,synthetic,mask2image,layout_first,augment",
                   help="comma-separated parts to run")
    p.add_argument("--filter-scopes", default=",".join(FILTER_ROWS),
                   help="segmenter filter rows measured in mask2image: pixels (FreeMask, 1.25 x class mean), "
                        "real_quantile (pixels above the real loss quantile), samples (whole samples dropped)")
    p.add_argument("--filter-seeds", default="", help="segmenter seeds per filter row, comma-separated (default: --seed)")
    p.add_argument("--filter-quantile", type=float, default=0.99, help="the real_quantile row's level")
    p.add_argument("--augment-variants", type=int, default=2, help="augment: variants per real image (DA-Fusion's M)")
    p.add_argument("--augment-guidance", type=float, default=None, help="augment's guidance scale (default: --guidance)")
    p.add_argument("--augment-modes", default="", help="augment modes, comma-separated (default: all of bench/augment_quality.py's MODES)")
    p.add_argument("--augment-seeds", default="", help="segmenter seeds of the augment gains, comma-separated (default: --seed)")
    p.add_argument("--no-hardness", action="store_true", help="skip hardness-aware vs uniform resampling")
    a = p.parse_args(argv)
    if a.quick:
        a.n_real, a.n_synth, a.n_classifier, a.steps, a.seg_epochs, a.cls_epochs = 32, 32, 600, 8, 8, 6
    result = run(a.model, a.out, a.n_real, a.n_synth, a.n_classifier, a.t, a.steps, a.guidance, a.suffix,
                 a.seg_epochs, a.cls_epochs, a.seed, log=lambda m: print(m, file=sys.stderr),
                 parts=("attention",) if a.attention_only else tuple(x.strip() for x in a.parts.split(",") if x.strip()),
                 m2i_guidance=a.m2i_guidance, filter_scopes=tuple(a.filter_scopes.split(",")), hardness=not a.no_hardness,
                 filter_seeds=tuple(int(x) for x in a.filter_seeds.split(",") if x.strip()),
                 filter_quantile=a.filter_quantile,
                 augment_seeds=tuple(int(x) for x in a.augment_seeds.split(",") if x.strip()),
                 augment_variants=a.augment_variants, augment_guidance=a.augment_guidance,
                 augment_modes=tuple(x for x in a.augment_modes.split(",") if x.strip()))
    (a.out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
