"""mask2image (FreestyleNet / FreeMask): one image per (source mask, variant), labelled by the mask.

Backends:
- rectified: `RectifiedCrossAttention` on every cross-attention layer (or `resolutions`):
  each class token attends only inside its class's region. Any SD-family UNet, training-free
  (and the shapes model, trained with it on a share of batches).
- controlnet: a ControlNet (a folder in diffusers layout) reads the mask drawn in a palette.

Sample i is entry i mod E of the schedule [(mask 0, variant 0), (mask 0, variant 1), ...,
(mask 1, variant 0), ...]: `variants` per mask, or FreeMask's hardness-aware counts (`resample`).
The prompt names the classes present in the mask (FreestyleNet), through a template, or is
the source's caption with its missing classes appended after "; ".
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.engine import LabelMaps
from shared.formats.prompts import ClassMention, SamplePlan, sample_seed
from shared.formats.spec import SpecError
from worker.engine import palettes
from worker.engine.concepts import TOKEN, TOKEN_PATTERN
from worker.engine.controls import RectifiedCrossAttention
from worker.engine.generate import ControlNetInput
from worker.engine.mask_sources import MaskSource, load_mask_sources
from worker.engine.methods import BatchInputs
from worker.engine.text import token_groups, tokenize


@functools.lru_cache(maxsize=2)
def load_controlnet(path: str, device: str, dtype: torch.dtype, safetensors_only: bool = False):
    """A ControlNet folder; `safetensors_only` (a tenant's upload): never unpickle a .bin."""
    from diffusers import ControlNetModel

    if safetensors_only and not any(Path(path).glob("diffusion_pytorch_model*.safetensors")):
        raise SpecError("mask2image.controlnet: the uploaded ControlNet has no diffusion_pytorch_model.safetensors; "
                        "pickled .bin weights are never loaded from uploads (save it with safe_serialization=True)",
                        field="mask2image.controlnet")
    try:
        extra = {"use_safetensors": True} if safetensors_only else {}
        model = ControlNetModel.from_pretrained(path, torch_dtype=dtype, **extra)
    except (OSError, ValueError) as err:
        raise SpecError(f"mask2image.controlnet: cannot load a ControlNet from {path}: {err}".splitlines()[0],
                        field="mask2image.controlnet") from None
    return model.to(device).eval()


def _resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape == hw:
        return a
    mode = "I;16" if a.dtype == np.uint16 else "L"
    im = Image.fromarray(a, mode=mode).resize((hw[1], hw[0]), Image.NEAREST)
    return np.asarray(im).astype(a.dtype)


class Mask2Image:
    name = "mask2image"
    labels_from_inputs = True

    def __init__(self, session):
        self.spec = session.spec
        self.model = session.model
        self.options = session.spec.mask2image
        self.session = session
        names = tuple(c.name for c in self.spec.classes)
        self.sources: tuple[MaskSource, ...] = load_mask_sources(self.options.source, names, session.source_root(self.options.source))
        self.schedule = self._schedule()
        self._maps = functools.lru_cache(maxsize=512)(self._load_maps)

    # --- which mask, which variant -----------------------------------------------------------
    def _schedule(self) -> list[tuple[int, int]]:
        if self.options.resample is None:
            counts = [self.options.variants] * len(self.sources)
        else:
            from worker.engine.resample import mask_hardness, variants_by_hardness
            from shared.sources.archives import UPLOAD_REF
            from worker.labels.segmenter import load_segmenter

            field = "mask2image.resample.segmenter"
            ref = self.options.resample.segmenter
            seg = load_segmenter(self.session.resolve_folder(ref, field), field=field, trusted=not ref.startswith(UPLOAD_REF))
            loss = seg.class_loss_by_id([c.name for c in self.spec.classes])
            hardness = [mask_hardness(self._load_maps(m).semantic, loss) for m in range(len(self.sources))]
            counts = variants_by_hardness(hardness, self.options.resample.max_variants, self.spec.seed)
        return [(m, v) for m, n in enumerate(counts) for v in range(n)]

    def entry(self, index: int) -> tuple[int, int]:
        return self.schedule[index % len(self.schedule)]

    def _load_maps(self, mask_index: int) -> LabelMaps:
        gen = self.spec.generation
        maps = self.sources[mask_index].load()
        hw = (gen.height, gen.width)
        inst = None if maps.instances is None else _resize_nearest(maps.instances, hw)
        return LabelMaps(_resize_nearest(maps.semantic, hw), inst)

    # --- Method protocol ---------------------------------------------------------------------
    def plan(self, index: int) -> SamplePlan:
        if not 0 <= index < self.spec.num_images:
            raise IndexError(f"sample index {index} outside 0..{self.spec.num_images - 1}")
        mask_index, _ = self.entry(index)
        present = [int(c) for c in np.unique(self._maps(mask_index).semantic) if 0 < c <= len(self.spec.classes)]
        words = [(self.spec.classes[c - 1].name, c, self.spec.classes[c - 1].prompt_words[0]) for c in present]
        kind = self.options.prompt
        caption = self.sources[mask_index].caption
        if kind == "source" and caption:
            prompt, mentions = _caption_with_classes(caption, words)
        else:
            prefix, suffix = ("", "") if kind == "classes" else self.options.template.split("{classes}", 1)
            prompt, mentions = prefix, []
            for i, (name, cid, word) in enumerate(words):
                if i:
                    prompt += " "
                mentions.append(ClassMention(name, cid, ((len(prompt), len(prompt) + len(word)),)))
                prompt += word
            prompt += suffix
        return SamplePlan(index, sample_seed(self.spec.seed, index), prompt, self.spec.prompts.negative, tuple(mentions))

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        members = list(range(len(plans)))
        semantic = np.stack([self._maps(self.entry(p.index)[0]).semantic for p in plans])
        if self.options.backend == "controlnet":
            colours = palettes.class_colours(self.options.palette, [c.name for c in self.spec.classes])
            images = np.stack([palettes.draw(s, colours) for s in semantic])
            cond = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            ref = self.options.controlnet
            net = load_controlnet(self.session.resolve_folder(ref, "mask2image.controlnet"), str(self.model.device),
                                  self.model.dtype, ref.startswith("upload:"))
            return [BatchInputs(members, controlnet=ControlNetInput(net, cond, self.options.conditioning_scale))]
        resolutions = None if self.options.resolutions == "all" else self.options.resolutions
        control = rectified_control(self.model, plans, semantic, self.options.bind_modifiers, resolutions)
        return [BatchInputs(members, controls=[control])]

    def given_labels(self, plan: SamplePlan) -> LabelMaps:
        return self._maps(self.entry(plan.index)[0])

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        mask_index, variant = self.entry(plan.index)
        source = self.sources[mask_index]
        return {
            "mask2image": {
                "source_mask": source.name,
                "source_image": None if source.image is None else source.image.name,
                "variant": variant,
                "backend": self.options.backend,
            }
        }


def rectified_control(model, plans: list[SamplePlan], semantic: np.ndarray, bind_modifiers: bool = True,
                      resolutions=None, step_window: tuple[float, float] = (0.0, 1.0)) -> RectifiedCrossAttention:
    """Each plan's class tokens (with their modifiers) kept inside the region of `semantic`
    [B, H, W] whose value is their mention's category id (FreestyleNet's rectified cross-attention)."""
    enc = tokenize(model.tokenizer, [p.prompt for p in plans])
    offsets = [[tuple(o) for o in row] for row in enc["offset_mapping"].tolist()]
    rectified = [with_modifiers(p.prompt, p.mentions) if bind_modifiers else p.mentions for p in plans]
    class_tokens = [
        [(t, m.category_id) for m, group in zip(mentions, token_groups(off, mentions)) for t in group]
        for mentions, off in zip(rectified, offsets)
    ]
    labels = torch.from_numpy(semantic.astype(np.int64)).to(model.device)
    return RectifiedCrossAttention(labels, class_tokens, enc["input_ids"].shape[1], resolutions, step_window)


# Words that end a class word's phrase when walking back from it: what comes before them is
# another phrase ("a red circle and a blue square": "blue" binds to square, "red" to circle).
_PHRASE_BREAKS = frozenset(
    "a an the and or of with without in on at near next to beside behind under over above below by from for "
    "this that these those some two three several many is are photo picture image".split()
)


# Words of a prompt: concept tokens ("<cyan>") whole, then words, then single punctuation marks.
_WORDS = re.compile(rf"{TOKEN}|[\w'-]+|[^\w\s]")


def with_modifiers(prompt: str, mentions: tuple[ClassMention, ...]) -> tuple[ClassMention, ...]:
    """Each mention's spans extended back over the words of its phrase before the class word
    ("red" in "a red circle"): the attributes a rectified job keeps inside the class's region.
    Stops at punctuation, a phrase-break word or another mention."""
    taken = sorted(span for m in mentions for span in m.spans)
    out = []
    for m in mentions:
        spans = []
        for start, end in m.spans:
            new_start = start
            for word in reversed(list(_WORDS.finditer(prompt[:start]))):
                concept = TOKEN_PATTERN.match(word.group()) is not None  # a learned token: a modifier like any word
                if not (concept or word.group()[0].isalnum()) or word.group().lower() in _PHRASE_BREAKS:
                    break
                if any(a < word.end() and word.start() < b for a, b in taken):
                    break
                if prompt[word.end():new_start].strip():  # only whitespace may lie between
                    break
                new_start = word.start()
            spans.append((new_start, end))
        out.append(ClassMention(m.name, m.category_id, tuple(spans)))
    return tuple(out)


def _caption_with_classes(caption: str, words: list[tuple[str, int, str]]) -> tuple[str, list[ClassMention]]:
    """The caption; each present class's word found in it (all occurrences), the others appended."""
    mentions, missing = [], []
    for name, cid, word in words:
        spans = tuple(m.span() for m in re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", caption, flags=re.IGNORECASE))
        if spans:
            mentions.append(ClassMention(name, cid, spans))
        else:
            missing.append((name, cid, word))
    text = caption
    for i, (name, cid, word) in enumerate(missing):
        text += "; " if i == 0 else " "
        mentions.append(ClassMention(name, cid, ((len(text), len(text) + len(word)),)))
        text += word
    return text, mentions
