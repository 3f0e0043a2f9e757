"""edit (Shape-Guided Diffusion): a labelled real image, one object re-rendered inside its mask.

The schedule lists (source, object, inside prompt) for every object of every source (or the
largest one per source) and every inside prompt; sample i is entry i mod E. The pipeline is
`worker.engine.shape_guided.edit_images` (DDIM inversion, inside-outside attention, background
from the inverted trajectory). Labels are the source's masks, unchanged; the record names the
source, the object and the three prompts.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.engine import LabelMaps
from shared.formats.prompts import ClassMention, SamplePlan, sample_seed
from shared.formats.spec import SpecError
from worker.engine.mask_sources import MaskSource, load_mask_sources
from worker.engine.methods import BatchInputs
from worker.engine.methods.mask2image import _resize_nearest
from worker.engine.shape_guided import EditOptions, edit_images
from worker.labels.instances import extract_instances

FIELD = "edit.source"


class Edit:
    name = "edit"
    labels_from_inputs = True

    def __init__(self, session):
        self.spec = session.spec
        self.model = session.model
        self.options = session.spec.edit
        names = tuple(c.name for c in self.spec.classes)
        try:
            self.sources: tuple[MaskSource, ...] = load_mask_sources(
                self.options.source, names, session.source_root(self.options.source))
        except SpecError as err:  # the loaders name mask2image's field: name this method's
            raise SpecError(str(err).replace("mask2image.source", FIELD), field=FIELD) from None
        missing = [s.name for s in self.sources if s.image is None]
        if missing:
            raise SpecError(f"{FIELD}: {missing[0]} has no image beside it; edit needs the real images "
                            "(images/<stem>.* for masks, JPEGImages/ for VOC, the COCO images)", field=FIELD)
        self._maps = functools.lru_cache(maxsize=512)(self._load_maps)
        self.schedule = self._schedule()
        if not self.schedule:
            raise SpecError(f"{FIELD}: no object of the job's classes with at least {self.options.min_area} pixels "
                            "in any source", field=FIELD)

    # --- sources and objects -------------------------------------------------------------------
    def _load_maps(self, m: int) -> LabelMaps:
        gen = self.spec.generation
        maps = self.sources[m].load()
        hw = (gen.height, gen.width)
        inst = maps.instances
        if inst is None:  # no instance map: connected components of each class are the objects
            ids = list(range(1, len(self.spec.classes) + 1))
            inst = extract_instances(maps.semantic, ids, [c.name for c in self.spec.classes], min_component_area=0).instances
        return LabelMaps(_resize_nearest(maps.semantic, hw), _resize_nearest(np.asarray(inst).astype(np.uint16), hw))

    def _objects(self, m: int) -> list[tuple[int, int]]:
        """(instance id, category id) of the editable objects of source m, largest first."""
        maps = self._maps(m)
        found = []
        for k in np.unique(maps.instances):
            if k == 0:
                continue
            region = maps.instances == k
            cats = maps.semantic[region]
            cats = cats[(cats > 0) & (cats <= len(self.spec.classes))]
            if region.sum() >= self.options.min_area and cats.size:
                found.append((int(region.sum()), int(k), int(np.bincount(cats).argmax())))
        found.sort(key=lambda f: (-f[0], f[1]))
        if self.options.objects == "largest":
            found = found[:1]
        return [(k, c) for _, k, c in found]

    def _schedule(self) -> list[tuple[int, int, int, int]]:
        """(source, instance id, category id, inside prompt index) entries."""
        return [(m, k, c, a) for m in range(len(self.sources)) for k, c in self._objects(m)
                for a in range(len(self.options.inside))]

    def entry(self, index: int) -> tuple[int, int, int, int]:
        return self.schedule[index % len(self.schedule)]

    def _prompts(self, index: int) -> tuple[str, str, str]:
        """(inversion, inside, outside) prompts of sample `index`."""
        m, _, c, a = self.entry(index)
        word = self.spec.classes[c - 1].prompt_words[0]
        caption = self.sources[m].caption or f"a {word}"
        inversion = self.options.inversion.replace("{caption}", caption).replace("{class}", word)
        return inversion, self.options.inside[a].replace("{class}", word), self.options.outside

    # --- Method protocol -------------------------------------------------------------------------
    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.spec.num_images:
            raise IndexError(f"sample index {index} outside 0..{self.spec.num_images - 1}")
        m, _, _, a = self.entry(index)
        _, inside, _ = self._prompts(index)
        present = [int(c) for c in np.unique(self._maps(m).semantic) if 0 < c <= len(self.spec.classes)]
        mentions = []
        for c in present:
            word = self.spec.classes[c - 1].prompt_words[0]
            start = inside.find(word)
            spans = ((start, start + len(word)),) if start >= 0 else ()
            mentions.append(ClassMention(self.spec.classes[c - 1].name, c, spans))
        return SamplePlan(index, sample_seed(self.spec.seed, index), inside, self.spec.prompts.negative, tuple(mentions))

    def _image(self, m: int) -> torch.Tensor:
        gen = self.spec.generation
        with Image.open(self.sources[m].image) as im:
            im = im.convert("RGB")
            if im.size != (gen.width, gen.height):
                im = im.resize((gen.width, gen.height), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        entries = [self.entry(p.index) for p in plans]
        images = torch.stack([self._image(m) for m, _, _, _ in entries])
        masks = torch.from_numpy(np.stack([self._maps(m).instances == k for m, k, _, _ in entries]))
        prompts = [self._prompts(p.index) for p in plans]
        options = EditOptions(cross_scale=self.options.cross_scale, self_strength=self.options.self_strength,
                              masked_logits=self.options.masked_logits, inside_noise=self.options.inside_noise)

        def run(model, _prompts, seeds, gen, negative_prompt="", capture=None, on_step=None, **_unused):
            out, _ = edit_images(model, images, masks, [p[0] for p in prompts], [p[1] for p in prompts],
                                 [p[2] for p in prompts], gen, options, negative_prompt, capture, on_step, seeds)
            return out

        return [BatchInputs(list(range(len(plans))), runner=run)]

    def given_labels(self, plan: SamplePlan) -> LabelMaps:
        return self._maps(self.entry(plan.index)[0])

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        m, k, c, _ = self.entry(plan.index)
        inversion, inside, outside = self._prompts(plan.index)
        source = self.sources[m]
        return {
            "edit": {
                "source_mask": source.name,
                "source_image": source.image.name,
                "object": k,
                "class": self.spec.classes[c - 1].name,
                "inversion_prompt": inversion,
                "inside_prompt": inside,
                "outside_prompt": outside,
                "cross_scale": self.options.cross_scale,
                "self_strength": self.options.self_strength,
                "masked_logits": self.options.masked_logits,
                "inside_noise": self.options.inside_noise,
                "scheduler": "ddim",
            }
        }
