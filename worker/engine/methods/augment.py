"""augment (DA-Fusion): M variants of each real, labelled source image, re-drawn by SDEdit.

Sample i is variant i mod M of source (i // M) mod N; its strength is drawn from
`augment.strengths` (equally likely) on its own random stream keyed by (job seed, index).
The prompt names the classes present in the source (a template; the class words may be
learned concept tokens, `concepts:`).

Modes:
- sdedit: the whole image is re-drawn from the source noised to the strength;
- inpaint_inside / inpaint_outside: only inside (outside) the objects' masks, grown by `grow`
  pixels; elsewhere the latents are the source's at every step (`worker.engine.inpaint`).

Labels: where the geometry is kept they are the source's, carried over (inpaint modes; sdedit
at strength <= keep_labels_below); elsewhere they are re-derived from the sample's own
attention like a text2image sample's. The record says which (`augment.labels`: carried /
attention) and of which source image the sample is a variant (lineage for mixing).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.engine import LabelMaps
from shared.formats.prompts import ClassMention, SamplePlan, sample_seed
from shared.formats.records import IGNORE
from worker.engine.generate import InitImages
from worker.engine.mask_sources import MaskSource, MaskSourceError, load_mask_sources
from worker.engine.methods import BatchInputs
from worker.engine.methods.mask2image import _caption_with_classes, _resize_nearest, rectified_control

_STREAM_STRENGTH = 0xDAF0  # distinct from the seed/prompt streams (shared.formats.prompts) and image2image's


class Augment:
    name = "augment"
    labels_from_inputs = False  # per sample: carried (given_labels) or from attention

    def __init__(self, session):
        self.spec = session.spec
        self.options = session.spec.augment
        self.model = session.model
        names = tuple(c.name for c in self.spec.classes)
        from worker.engine.mask_sources import source_root

        root = session.source_root(self.options.source)
        try:
            found = load_mask_sources(self.options.source, names, root)
        except MaskSourceError as err:  # the loaders speak of mask2image's field; this job's is augment's
            field = (err.field or "mask2image.source").replace("mask2image.", "augment.", 1)
            raise MaskSourceError(str(err).replace("mask2image.", "augment."), field=field) from None
        self.root = source_root(root)
        self.sources: tuple[MaskSource, ...] = tuple(s for s in found if s.image is not None)
        if not self.sources:
            raise MaskSourceError("augment.source: no source has its real image (augment re-draws real images); "
                                  "give a dataset with images", field="augment.source")
        self._maps = functools.lru_cache(maxsize=512)(self._load_maps)

    # --- which source, which variant, which strength -----------------------------------------
    def entry(self, index: int) -> tuple[int, int]:
        m = self.options.variants
        return (index // m) % len(self.sources), index % m

    def strength(self, index: int) -> float:
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, index, _STREAM_STRENGTH]))
        return float(self.options.strengths[int(rng.integers(len(self.options.strengths)))])

    def carries_labels(self, index: int) -> bool:
        return self.options.mode != "sdedit" or self.strength(index) <= self.options.keep_labels_below

    def _load_maps(self, source_index: int) -> LabelMaps:
        gen = self.spec.generation
        maps = self.sources[source_index].load()
        hw = (gen.height, gen.width)
        inst = None if maps.instances is None else _resize_nearest(maps.instances, hw)
        return LabelMaps(_resize_nearest(maps.semantic, hw), inst)

    def _image(self, source_index: int) -> torch.Tensor:
        gen = self.spec.generation
        with Image.open(self.sources[source_index].image) as im:
            im = im.convert("RGB")
            if im.size != (gen.width, gen.height):
                im = im.resize((gen.width, gen.height), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0

    def _keep(self, source_index: int) -> torch.Tensor:
        """[1, H, W]: 1 where the source stays (inpaint modes)."""
        objects = self._maps(source_index).semantic
        objects = (objects > 0) & (objects != IGNORE) | (objects == IGNORE)  # ignore pixels count as object
        region = torch.from_numpy(objects.astype(np.float32))[None, None]
        if self.options.grow:
            k = 2 * self.options.grow + 1
            region = torch.nn.functional.max_pool2d(region, k, stride=1, padding=self.options.grow)
        region = region[0]
        return 1.0 - region if self.options.mode == "inpaint_inside" else region

    # --- Method protocol ---------------------------------------------------------------------
    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.spec.num_images:
            raise IndexError(f"sample index {index} outside 0..{self.spec.num_images - 1}")
        source_index, _ = self.entry(index)
        present = [int(c) for c in np.unique(self._maps(source_index).semantic) if 0 < c <= len(self.spec.classes)]
        words = [(self.spec.classes[c - 1].name, c, self.spec.classes[c - 1].prompt_words[0]) for c in present]
        caption = self.sources[source_index].caption
        if self.options.prompt == "source" and caption:
            prompt, mentions = _caption_with_classes(caption, words)
            return SamplePlan(index, sample_seed(self.spec.seed, index), prompt, self.spec.prompts.negative, tuple(mentions))
        prefix, suffix = ("", "") if self.options.prompt == "classes" else self.options.template.split("{classes}", 1)
        # (prompt: source without a caption falls back to the template)
        prompt, mentions = prefix, []
        for i, (name, cid, word) in enumerate(words):
            if i:
                prompt += " and a " if self.options.prompt != "classes" else " "
            mentions.append(ClassMention(name, cid, ((len(prompt), len(prompt) + len(word)),)))
            prompt += word
        prompt += suffix
        return SamplePlan(index, sample_seed(self.spec.seed, index), prompt, self.spec.prompts.negative, tuple(mentions))

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        gen = self.spec.generation
        groups: dict[int, list[int]] = {}
        for k, plan in enumerate(plans):  # samples that share a start step are denoised together
            groups.setdefault(InitImages(torch.zeros(0), self.strength(plan.index)).start_step(gen.steps), []).append(k)
        out = []
        for _, members in sorted(groups.items()):
            sources = [self.entry(plans[k].index)[0] for k in members]
            images = torch.stack([self._image(s) for s in sources])
            keep = None if self.options.mode == "sdedit" else torch.stack([self._keep(s) for s in sources])
            controls = []
            if self.options.rectify:  # the re-drawn objects stay inside their source masks
                semantic = np.stack([self._maps(s).semantic for s in sources])
                controls.append(rectified_control(self.model, [plans[k] for k in members], semantic))
            out.append(BatchInputs(members, init=InitImages(images, self.strength(plans[members[0]].index), keep),
                                   controls=controls))
        return out

    def given_labels(self, plan: SamplePlan) -> LabelMaps | None:
        return self._maps(self.entry(plan.index)[0]) if self.carries_labels(plan.index) else None

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        source_index, variant = self.entry(plan.index)
        source = self.sources[source_index]
        return {
            "augment": {
                "source_image": _relative(source.image, self.root),
                "source_mask": source.name,
                "source_index": source_index,
                "variant": variant,
                "strength": self.strength(plan.index),
                "mode": self.options.mode,
                "labels": "carried" if self.carries_labels(plan.index) else "attention",
                "rectify": self.options.rectify,
            },
            "synthetic": True,
        }


def _relative(path, root) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
