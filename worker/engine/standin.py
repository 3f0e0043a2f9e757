"""`builtin:fleet-standin`: an engine that makes valid samples without a model.

It has the interface of `EngineSession` (`generate(indexes)` yields `GeneratedSample`s in
index order) and the same planning (seed, prompt, class mentions from the spec), but instead
of denoising it draws one to three filled rectangles or ellipses per sample, each of a class
the prompt mentions, on a flat background. Labels come from the drawn class map through the
same `extract_instances` as attention labels, so records, masks and annotations have the
real shapes and costs of the data plane. Everything is a pure function of the sample seed.

It exists so the service's data plane (database, object store, broker, exports) can be
measured and tested at fleet rates on CPUs: a simulated fleet of N workers running it
produces samples as fast as the data plane takes them.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from shared.engine import GeneratedSample
from shared.formats.prompts import SamplePlan, plan_sample
from shared.formats.records import ModelInfo, SampleRecord
from shared.formats.spec import JobSpec
from worker.labels.instances import extract_instances

MODEL_ID = "builtin:fleet-standin"
REVISION = "standin-v1"  # bump when the drawing changes: records name what made them


def is_standin(spec: JobSpec) -> bool:
    return spec.model.id == MODEL_ID


class StandinEngine:
    """Drop-in for `EngineSession` in the service and the benchmarks."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.info = ModelInfo(id=MODEL_ID, revision=REVISION)

    def generate(self, indexes: Sequence[int], on_step=None) -> Iterator:  # noqa: ANN001 - same signature as EngineSession
        for index in sorted(set(indexes)):
            yield self.sample(plan_sample(self.spec, index))

    def sample(self, plan: SamplePlan) -> GeneratedSample:
        gen = self.spec.generation
        width, height = gen.width, gen.height
        rng = np.random.default_rng(np.random.SeedSequence([0xF1EE7, plan.seed]))
        background = tuple(int(v) for v in rng.integers(40, 90, 3))
        image = Image.new("RGB", (width, height), background)
        classes = Image.new("L", (width, height), 0)
        draw, draw_classes = ImageDraw.Draw(image), ImageDraw.Draw(classes)
        mentions = plan.mentions or ()
        for k in range(int(rng.integers(1, 4)) if mentions else 0):
            mention = mentions[k % len(mentions)]
            w = int(rng.integers(max(2, width // 6), max(3, width // 2)))
            h = int(rng.integers(max(2, height // 6), max(3, height // 2)))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape_classes = draw_classes.rectangle if shape == draw.rectangle else draw_classes.ellipse
            shape([x, y, x + w - 1, y + h - 1], fill=colour)
            shape_classes([x, y, x + w - 1, y + h - 1], fill=mention.category_id)
        semantic = np.array(classes, dtype=np.uint8)
        found = extract_instances(semantic, [m.category_id for m in mentions], [m.name for m in mentions],
                                  min_component_area=self.spec.labels.min_component_area)
        record = SampleRecord(
            index=plan.index, seed=plan.seed, prompt=plan.prompt, negative_prompt=plan.negative_prompt,
            classes=plan.classes, model=self.info, method=self.spec.method,
            parameters={"generation": gen.model_dump(mode="json"), "standin": REVISION},
            width=width, height=height, annotations=found.annotations,
        )
        return GeneratedSample(record, image, found.semantic, found.instances)
