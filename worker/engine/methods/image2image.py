"""image2image (DiffusionEngine): each sample starts from a real image noised to strength s.

Sample i uses source i mod N and a strength from its own random stream (`worker.engine.image_sources`);
the samples of a batch that share a start step are denoised together.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.engine import LabelMaps
from shared.formats.prompts import SamplePlan, plan_free_text, plan_sample
from worker.engine import image_sources as src
from worker.engine.generate import InitImages
from worker.engine.methods import BatchInputs


class Image2Image:
    name = "image2image"
    labels_from_inputs = False

    def __init__(self, session):
        self.spec = session.spec
        self.options = session.spec.image2image
        base = None
        if self.options.upload is not None:  # an uploaded archive: images / coco are paths inside it
            base = Path(session.resolve_folder(f"upload:{self.options.upload}", "image2image.upload"))
        elif self.options.dataset is not None:  # a dataset version: a dsgen folder, its samples' images
            base = session.dataset_root(self.options.dataset, self.options.version, "image2image.dataset")
        self.sources = src.load_sources(self.options, base)

    def plan(self, index: int) -> SamplePlan:
        """The source's caption as the prompt if it has one (prompt: source), else the spec's prompts."""
        if self.options.prompt == "source":
            caption = src.source_of(self.sources, index).caption
            if caption:
                return plan_free_text(self.spec, caption, index)
        return plan_sample(self.spec, index)

    def _strength(self, plan: SamplePlan) -> float:
        return src.sample_strength(self.options, self.spec.seed, plan.index)

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        gen = self.spec.generation
        groups: dict[int, list[int]] = {}
        for k, plan in enumerate(plans):
            groups.setdefault(InitImages(torch.zeros(0), self._strength(plan)).start_step(gen.steps), []).append(k)
        out = []
        for _, members in sorted(groups.items()):
            images = torch.stack([
                src.load_source_image(src.source_of(self.sources, plans[k].index), gen.width, gen.height) for k in members
            ])
            out.append(BatchInputs(members, init=InitImages(images, self._strength(plans[members[0]]))))
        return out

    def given_labels(self, plan: SamplePlan) -> LabelMaps | None:
        return None

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        strength = self._strength(plan)
        source = src.source_of(self.sources, plan.index)
        return {
            "image2image": {
                "source": source.name or source.path.name,
                "strength": strength,
                "start_step": InitImages(torch.zeros(0), strength).start_step(self.spec.generation.steps),
            }
        }
