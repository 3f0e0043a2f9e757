"""Methods: what a sample's inputs are, what a batch is conditioned on, where labels come from.

A method is a small class behind `Method`; `EngineSession` builds the one `spec.method`
names (`method_for`) and drives every method through the same loop:

    plans = [method.plan(i) for i in batch]           # seed, prompt, classes of each sample
    for inputs in method.batch_inputs(plans):          # samples denoised together, and with what:
        generate(..., init=inputs.init,                #   start images (image-to-image)
                 controls=inputs.controls,             #   attention controls (rectified masks, ...)
                 controlnet=inputs.controlnet)         #   a ControlNet and its conditioning images
    method.given_labels(plan)                          # labels from the inputs (mask2image), or None:
                                                       #   attention / adaptor labels as configured
    method.parameters(plan)                            # what the record notes of the inputs

Methods never write attention processors or denoising loops of their own: they compose
controls (`worker.engine.attention`, `worker.engine.controls`) and conditioning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from shared.engine import LabelMaps
from shared.formats.prompts import SamplePlan
from worker.engine.attention import AttentionControl
from worker.engine.generate import ControlNetInput, GenerationOutput, InitImages


@dataclass
class BatchInputs:
    """Samples (positions in the batch's plans) that are denoised together, and their conditioning."""

    members: list[int]
    init: InitImages | None = None
    controls: list[AttentionControl] = field(default_factory=list)
    controlnet: ControlNetInput | None = None
    # A method with its own generation path (edit: inversion first; layout: gradients through
    # the UNet) gives it here; it is called with generate()'s arguments and returns its output.
    runner: Callable[..., GenerationOutput] | None = None


class Method(Protocol):
    name: str
    #: labels come from the inputs: attention is captured only if a filter needs it
    labels_from_inputs: bool

    def plan(self, index: int) -> SamplePlan: ...

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]: ...

    def given_labels(self, plan: SamplePlan) -> LabelMaps | None: ...

    def parameters(self, plan: SamplePlan) -> dict[str, Any]: ...


def method_for(session) -> Method:
    """The method module `session.spec.method` names, bound to the session's spec and model."""
    name = session.spec.method
    if name == "text2image":
        from worker.engine.methods.text2image import Text2Image

        return Text2Image(session)
    if name == "image2image":
        from worker.engine.methods.image2image import Image2Image

        return Image2Image(session)
    if name == "mask2image":
        from worker.engine.methods.mask2image import Mask2Image

        return Mask2Image(session)
    if name == "edit":
        from worker.engine.methods.edit import Edit

        return Edit(session)
    if name == "layout":
        from worker.engine.methods.layout import Layout

        return Layout(session)
    if name == "augment":
        from worker.engine.methods.augment import Augment

        return Augment(session)
    raise ValueError(f"no method module for {name!r}")
