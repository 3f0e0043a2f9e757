"""EngineSession: a job spec in, labeled samples out — the one entry point of the engine.

Used by `dsgen run` (local folder), the Celery shard task (object store) and the
benchmarks. Work is done in batches aligned to multiples of the batch size (batch b holds
indexes b*B .. b*B+B-1), so any subset of indexes — a shard, or what is left after an
interruption — is generated in exactly the batches of a full run, and gives the same bytes.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from shared.prompts import SamplePlan, plan_sample
from shared.records import SampleFiles, SampleRecord
from shared.spec import JobSpec, SpecError
from worker.engine.generate import generate
from worker.engine.labeling import capture_config, label_image
from worker.engine.models import LoadedModel, load_model
from worker.engine.text import token_groups


@dataclass
class GeneratedSample:
    record: SampleRecord
    image: Image.Image
    semantic: np.ndarray | None = None  # uint8 [H, W]: 0 background, category ids, 255 ignore
    instances: np.ndarray | None = None  # uint16 [H, W]: 0 none, else instance id
    seconds: float = 0.0  # share of its batch's wall time (not part of the record: see SampleRecord)

    def files(self) -> dict[str, bytes]:
        """File name -> bytes, record last (writers of these files must keep that order)."""
        out = {self.record.files.image: encode_png(self.image)}
        if self.semantic is not None and self.record.files.semantic:
            out[self.record.files.semantic] = encode_png(Image.fromarray(self.semantic, mode="L"))
        if self.instances is not None and self.record.files.instances:
            out[self.record.files.instances] = encode_png(Image.fromarray(self.instances.astype(np.uint16)))
        out["record.json"] = self.record.model_dump_json(indent=1).encode() + b"\n"
        return out


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def aligned_batches(indexes: Sequence[int], batch_size: int, num_images: int) -> list[list[int]]:
    """The full aligned batches that cover `indexes` (each batch whole, in order)."""
    starts = sorted({i - i % batch_size for i in indexes})
    return [list(range(s, min(s + batch_size, num_images))) for s in starts]


@dataclass
class EngineSession:
    spec: JobSpec
    model: LoadedModel | None = None
    _plans: dict[int, SamplePlan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = load_model(self.spec.model)

    @property
    def labels_enabled(self) -> bool:
        return self.spec.labels.mode != "none"

    def method_parameters(self) -> dict:
        """What a sample records of how it was made (beside model, seed and prompt)."""
        return {
            "generation": self.spec.generation.model_dump(mode="json"),
            "labels": self.spec.labels.model_dump(mode="json"),
        }

    def capture_config(self):
        """What to capture for this job's labels (None when labels are off)."""
        gen = self.spec.generation
        latent_hw = (gen.height // self.model.vae_scale, gen.width // self.model.vae_scale)
        try:
            return capture_config(self.model.unet, self.spec.labels, latent_hw, guidance=gen.guidance_scale > 1.0)
        except SpecError:
            raise
        except ValueError as err:  # a resolution this model does not have: the user's to fix
            raise SpecError(str(err), field="labels") from None

    def generate(
        self,
        indexes: Sequence[int],
        on_step: Callable[[int, int], None] | None = None,
    ) -> Iterator[GeneratedSample]:
        """Yield the requested samples, in index order, batch by batch."""
        wanted = set(indexes)
        gen = self.spec.generation
        for batch in aligned_batches(indexes, gen.batch_size, self.spec.num_images):
            started = time.perf_counter()
            plans = [plan_sample(self.spec, i) for i in batch]
            capture = self.capture_config()
            out = generate(
                self.model,
                [p.prompt for p in plans],
                [p.seed for p in plans],
                gen,
                negative_prompt=self.spec.prompts.negative,
                capture=capture,
                on_step=on_step,
            )
            samples = [self._label(j, plan, out) for j, plan in enumerate(plans)]
            share = (time.perf_counter() - started) / len(batch)
            for s in samples:
                if s.record.index in wanted:
                    s.seconds = share
                    yield s

    def _label(self, j: int, plan: SamplePlan, out) -> GeneratedSample:
        gen = self.spec.generation
        image = out.images[j]
        record_kwargs = dict(
            index=plan.index,
            seed=plan.seed,
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            classes=plan.classes,
            model=self.model.info,
            method=self.spec.method,
            parameters=self.method_parameters(),
            width=gen.width,
            height=gen.height,
        )
        if not self.labels_enabled:
            files = SampleFiles(semantic=None, instances=None)
            return GeneratedSample(SampleRecord(files=files, **record_kwargs), image)
        groups = token_groups(out.encoded.offsets[j], plan.mentions)
        result = label_image(
            out.store,
            j,
            groups,
            [m.category_id for m in plan.mentions],
            [m.name for m in plan.mentions],
            self.spec.labels,
            (gen.height, gen.width),
        )
        record = SampleRecord(annotations=result.annotations, quality=result.quality, **record_kwargs)
        return GeneratedSample(record, image, result.semantic, result.instances)

