"""text2image: prompts from the spec, labels from attention (Dataset Diffusion) and/or the adaptor."""
from __future__ import annotations

from typing import Any

from shared.engine import LabelMaps
from shared.formats.prompts import SamplePlan, plan_sample
from worker.engine.methods import BatchInputs


class Text2Image:
    name = "text2image"
    labels_from_inputs = False

    def __init__(self, session):
        self.spec = session.spec

    def plan(self, index: int) -> SamplePlan:
        return plan_sample(self.spec, index)

    def batch_inputs(self, plans: list[SamplePlan]) -> list[BatchInputs]:
        return [BatchInputs(list(range(len(plans))))]

    def given_labels(self, plan: SamplePlan) -> LabelMaps | None:
        return None

    def parameters(self, plan: SamplePlan) -> dict[str, Any]:
        return {}
