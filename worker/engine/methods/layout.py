"""layout (self-guidance): each sample's objects asked at a box (or centroid + size), steered there.

A sample's layout is the spec's fixed `objects`, or drawn from `random` with the sample's own
random stream (keyed by job seed and index), so a sample is the same in any batch or shard.
The prompt joins the objects' phrases; each object's class-word tokens carry its energies
(`worker.engine.self_guidance`). With `from_prompts` the job is text2image drawn layout-first
(LMD's two stages, with a random layout in place of a language model's): the prompt is the
job's own and each class word in it is an object given a random box. `scale: 0` runs no
guidance (no gradients): the box mask alone places the objects, as mask2image does. Labels:
- `labels: layout` (by construction): each object's asked box is its box, and its mask is that
  box (records say so: `layout.labels`);
- `labels: attention`: masks and boxes from the captured attention, as text2image.
The record keeps the asked boxes (pixels, COCO xywh) either way.
"""
from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np

from shared.engine import LabelMaps
from shared.formats.prompts import ClassMention, SamplePlan, plan_sample, sample_seed
from shared.formats.spec import SpecError
from worker.engine.controls import RectifiedCrossAttention
from worker.engine.methods import BatchInputs
from worker.engine.methods.mask2image import rectified_control
from worker.engine.self_guidance import GuidanceOptions, ObjectTarget, layout_images
from worker.engine.shape_bank import FIELD as SHAPES_FIELD
from worker.engine.shape_bank import ShapeBank, build_shape_bank
from worker.engine.text import token_groups, tokenize

_STREAM_LAYOUT = 0x1A70  # distinct from the seed/prompt/strength streams
_STREAM_SHAPES = 0x5A9E  # which shape of its class each object gets


class Layout:
    name = "layout"

    def __init__(self, session):
        self.spec = session.spec
        self.model = session.model
        self.options = session.spec.layout
        self.labels_from_inputs = self.options.labels == "layout"
        res = self.options.resolutions
        if res == "auto":
            res = session.labels.cross_resolutions if isinstance(session.labels.cross_resolutions, list) else None
        self.guidance = GuidanceOptions(
            weights=dict(self.options.weights), scale=self.options.scale, step_window=tuple(self.options.step_window),
            resolutions=None if res is None else tuple(res), checkpointing=self.options.checkpointing,
        )
        # from_prompts: the prompt's own class words are the objects, so appended class names
        # (on by default for lists and captions) would be objects too: never appended here.
        self.prompt_spec = self.spec.model_copy(update={
            "prompts": self.spec.prompts.model_copy(update={"append_class_names": False})})
        self.bank: ShapeBank | None = None
        if self.options.shapes is not None:
            self.bank = self._shape_bank(session)
        self.regions = functools.lru_cache(maxsize=256)(self._regions)

    def _shape_bank(self, session) -> ShapeBank:
        from worker.engine.mask_sources import load_mask_sources

        names = tuple(c.name for c in self.spec.classes)
        try:
            sources = load_mask_sources(self.options.shapes, names, session.source_root(self.options.shapes, SHAPES_FIELD))
        except SpecError as err:  # the loaders name mask2image's field: name this one
            raise SpecError(str(err).replace("mask2image.source", SHAPES_FIELD), field=SHAPES_FIELD) from None
        if self.options.objects is not None:
            needed = {self.spec.category_ids[o.class_name] for o in self.options.objects}
        else:
            needed = set(self.spec.category_ids.values())
        return build_shape_bank(sources, {cid: names[cid - 1] for cid in sorted(needed)})

    # --- the layout of a sample ----------------------------------------------------------------
    def objects(self, index: int) -> list[tuple[int, str, tuple[float, float, float, float]]]:
        """(category id, phrase, box x0 y0 x1 y1 in 0..1) of sample `index`'s objects."""
        ids = self.spec.category_ids
        if self.options.objects is not None:
            out = []
            for o in self.options.objects:
                box = o.box if o.box is not None else _square(o.centroid, o.size)
                out.append((ids[o.class_name], o.phrase or self.options.phrase, box))
            return out
        r = self.options.random
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, index, _STREAM_LAYOUT]))
        if self.options.from_prompts:
            mentions = self.plan(index).mentions
            boxes = _random_boxes(rng, len(mentions), r.size, r.separate, keep_all=True)
            return [(m.category_id, "", b) for m, b in zip(mentions, boxes)]
        count = int(rng.integers(r.count[0], r.count[1] + 1))
        boxes = _random_boxes(rng, count, r.size, r.separate, keep_all=False)
        classes = rng.choice(len(self.spec.classes), size=len(boxes), replace=len(boxes) > len(self.spec.classes))
        return [(int(c) + 1, self.options.phrase, b) for c, b in zip(classes, boxes)]

    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.spec.num_images:
            raise IndexError(f"sample index {index} outside 0..{self.spec.num_images - 1}")
        if self.options.from_prompts:
            return one_mention_per_word(plan_sample(self.prompt_spec, index))
        prompt, mentions = "", []
        for k, (cid, phrase, _) in enumerate(self.objects(index)):
            if k:
                prompt += self.options.joiner
            cls = self.spec.classes[cid - 1]
            word = cls.prompt_words[0]
            before, after = phrase.split("{class}", 1)
            start = len(prompt) + len(before)
            mentions.append(ClassMention(cls.name, cid, ((start, start + len(word)),)))
            prompt += before + word + after
        return SamplePlan(index, sample_seed(self.spec.seed, index), prompt, self.spec.prompts.negative, tuple(mentions))

    def _targets(self, plans: list[SamplePlan]) -> list[list[ObjectTarget]]:
        enc = tokenize(self.model.tokenizer, [p.prompt for p in plans])
        out = []
        for p, row in zip(plans, enc["offset_mapping"].tolist()):
            groups = token_groups([tuple(o) for o in row], p.mentions)
            out.append([ObjectTarget(tuple(g), box) for g, (_, _, box) in zip(groups, self.objects(p.index)) if g])
        return out

    def _regions(self, index: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """Sample `index`'s object regions (value k = its k-th object, later objects on top): its
        boxes, or with `shapes` a shape of each object's class scaled into its box; and the
        source masks those shapes came from."""
        gen = self.spec.generation
        regions = np.zeros((gen.height, gen.width), np.int64)
        names = []
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, index, _STREAM_SHAPES]))
        for k, (cid, x0, y0, x1, y1) in enumerate(self._pixel_boxes(index), start=1):
            if self.bank is None:
                regions[y0:y1, x0:x1] = k
                continue
            shape = self.bank.fitted(cid, rng, y1 - y0, x1 - x0)
            regions[y0:y1, x0:x1][shape.mask] = k
            names.append(shape.source)
        return regions, tuple(names)

    def _box_mask(self, plans: list[SamplePlan]) -> RectifiedCrossAttention:
        regions = np.stack([self.regions(p.index)[0] for p in plans])
        return region_mask(self.model, plans, regions, tuple(self.options.box_mask_window))

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        targets = self._targets(plans)
        guidance = self.guidance
        controls = [self._box_mask(plans)] if self.options.box_mask else []

        def run(model, prompts, seeds, gen, negative_prompt="", capture=None, on_step=None, **_unused):
            return layout_images(model, prompts, seeds, gen, targets, guidance, negative_prompt, capture, on_step,
                                 controls=controls)

        if guidance.scale == 0:  # no energies: a plain denoise with the box mask (no gradients)
            return [BatchInputs(list(range(len(plans))), controls=controls)]
        return [BatchInputs(list(range(len(plans))), runner=run)]

    def _pixel_boxes(self, index: int) -> list[tuple[int, int, int, int, int]]:
        """(category id, x0, y0, x1, y1) in pixels (x1, y1 exclusive) of the asked boxes."""
        gen = self.spec.generation
        out = []
        for cid, _, (x0, y0, x1, y1) in self.objects(index):
            px0, py0 = int(round(x0 * gen.width)), int(round(y0 * gen.height))
            px1, py1 = max(px0 + 1, int(round(x1 * gen.width))), max(py0 + 1, int(round(y1 * gen.height)))
            out.append((cid, px0, py0, px1, py1))
        return out

    def given_labels(self, plan: SamplePlan) -> LabelMaps | None:
        if not self.labels_from_inputs:
            return None
        regions, _ = self.regions(plan.index)  # later objects on top, as drawn in the prompt's order
        ids = np.array([0] + [cid for cid, *_ in self._pixel_boxes(plan.index)], np.uint8)
        return LabelMaps(ids[regions], regions.astype(np.uint16))

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        names = {i: n for n, i in self.spec.category_ids.items()}
        return {
            "layout": {
                "objects": [
                    {"class": names[cid], "box": [x0, y0, x1 - x0, y1 - y0]}
                    for cid, x0, y0, x1, y1 in self._pixel_boxes(plan.index)
                ],
                "labels": ("attention" if not self.labels_from_inputs else
                           "layout (masks are the asked boxes)" if self.bank is None else
                           "layout (masks are the shapes fitted into the asked boxes)"),
                "shapes": list(self.regions(plan.index)[1]) if self.bank is not None else None,
                "from_prompts": self.options.from_prompts,
                "scale": self.guidance.scale,
                "weights": self.guidance.weights,
                "step_window": list(self.guidance.step_window),
                "resolutions": None if self.guidance.resolutions is None else list(self.guidance.resolutions),
                "box_mask": list(self.options.box_mask_window) if self.options.box_mask else None,
            }
        }


def box_mask(model, plans: list[SamplePlan], boxes: list[list[tuple[int, int, int, int]]],
             hw: tuple[int, int], step_window: tuple[float, float] = (0.0, 1.0)) -> RectifiedCrossAttention:
    """`region_mask` with each object's region its box (pixels x0, y0, x1, y1; later objects on top)."""
    regions = np.zeros((len(plans), *hw), np.int64)
    for b in range(len(plans)):
        for k, (x0, y0, x1, y1) in enumerate(boxes[b], start=1):
            regions[b, y0:y1, x0:x1] = k
    return region_mask(model, plans, regions, step_window)


def region_mask(model, plans: list[SamplePlan], regions: np.ndarray,
                step_window: tuple[float, float] = (0.0, 1.0)) -> RectifiedCrossAttention:
    """Rectified cross-attention keeping each object's words (its mention, with the words before
    the class word in its phrase) inside its region: `regions` [B, H, W] holds k where object k
    is, so two objects of one class keep their own regions."""
    per_object = []
    for p in plans:
        mentions = tuple(ClassMention(m.name, k, m.spans) for k, m in enumerate(p.mentions, start=1))
        per_object.append(replace(p, mentions=mentions))
    return rectified_control(model, per_object, regions, step_window=step_window)


def one_mention_per_word(plan: SamplePlan) -> SamplePlan:
    """The plan with each class word its own mention, in prompt order: "a red circle and a blue
    circle" is two circles, each with its own region."""
    words = sorted(((span, m) for m in plan.mentions for span in m.spans), key=lambda w: w[0])
    return replace(plan, mentions=tuple(ClassMention(m.name, m.category_id, (span,)) for span, m in words))


def _random_boxes(rng: np.random.Generator, count: int, size: tuple[float, float], separate: bool,
                  keep_all: bool) -> list[tuple[float, float, float, float]]:
    """`count` square boxes (x0, y0, x1, y1 in 0..1) of side in `size`; with `separate` a box that
    overlaps an earlier one is redrawn up to 50 times, then dropped, or with `keep_all` (the
    prompt names the object) kept where its last draw fell."""
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        box = None
        for _attempt in range(50):
            side = float(rng.uniform(*size))
            x0, y0 = float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side))
            box = (x0, y0, x0 + side, y0 + side)
            if not separate or not any(_overlap(box, b) for b in boxes):
                boxes.append(box)
                box = None
                break
        if box is not None and keep_all:
            boxes.append(box)
    return boxes


def _square(centroid: tuple[float, float], side: float) -> tuple[float, float, float, float]:
    cx, cy = centroid
    h = side / 2
    return max(0.0, cx - h), max(0.0, cy - h), min(1.0, cx + h), min(1.0, cy + h)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
