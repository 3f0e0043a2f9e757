"""EngineSession: a job spec in, labeled samples out — the one entry point of the engine.

Used by `dsgen run` (local folder), the Celery shard task (object store) and the
benchmarks. Work is done in batches aligned to multiples of the batch size (batch b holds
indexes b*B .. b*B+B-1), so any subset of indexes — a shard, or what is left after an
interruption — is generated in exactly the batches of a full run, and gives the same bytes.

What a sample's inputs are and how a batch is conditioned is the method's business
(`worker.engine.methods`, picked by `spec.method`). Labels come from captured attention
(`labels.mode`), from a detection adaptor reading the UNet's block features of the last
denoising step (`labels.boxes: adaptor`), from both, or from the method's inputs (mask2image).
Filters (`worker.labels.filters`) run on every labelled sample before it is yielded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from shared.engine import GeneratedSample
from shared.formats.model_meta import recommended_label_resolutions
from shared.formats.prompts import SamplePlan
from shared.formats.records import IGNORE, SampleFiles, SampleRecord
from shared.formats.spec import JobSpec, LabelSpec, SourceSpec, SpecError
from worker.engine.features import FeatureConfig
from worker.engine.generate import GenerationOutput, generate
from worker.engine.loading import LoadedModel, load_model
from worker.engine.methods import method_for
from worker.engine.text import token_groups
from worker.labels.filters import build_filters
from worker.labels.from_attention import capture_config, label_image
from worker.labels.instances import extract_instances, instances_from_maps


def effective_labels(labels: LabelSpec, extras: dict, size: tuple[int, int] | None = None) -> LabelSpec:
    """Resolve "auto" resolutions with the model's own recommendation (dsgen.json), if any,
    scaled to the generation size (width, height) when it is not the model's default.

    A model may know which of its layers carry semantics (the shapes model's 8x8 maps carry
    nothing); the resolved values are what the samples record, so a re-run is exact.
    """
    if size is None:
        recommended = extras.get("recommended_labels") or {}
    else:
        recommended = recommended_label_resolutions(extras, *size)
    update = {
        name: recommended[name]
        for name in ("cross_resolutions", "self_resolution")
        if getattr(labels, name) == "auto" and name in recommended
    }
    return labels.model_validate({**labels.model_dump(), **update}) if update else labels


def aligned_batches(indexes: Sequence[int], batch_size: int, num_images: int) -> list[list[int]]:
    """The full aligned batches that cover `indexes` (each batch whole, in order)."""
    starts = sorted({i - i % batch_size for i in indexes})
    return [list(range(s, min(s + batch_size, num_images))) for s in starts]


@dataclass
class EngineSession:
    spec: JobSpec
    model: LoadedModel | None = None
    adaptor: object | None = field(default=None, repr=False)  # worker.adaptor.labeler.AdaptorLabeler
    # upload id -> local folder of the extracted source archive (the service's workers set it)
    uploads: Callable[[str], Path] | None = field(default=None, repr=False)
    concepts: list[str] = field(default_factory=list, repr=False)  # local folders of spec.concepts
    # (dataset name, version) -> local dsgen folder of that version of the job's tenant (the service sets it)
    datasets: Callable[..., Path] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = load_model(self.spec.model)
        if self.spec.concepts:  # a copy of the model whose tokenizer knows the concepts' tokens
            from worker.engine.concepts import with_concepts

            fields = [f"concepts[{i}]" for i in range(len(self.spec.concepts))]
            folders = [self.resolve_folder(c, f) for c, f in zip(self.spec.concepts, fields)]
            self.concepts = folders
            self.model = with_concepts(self.model, folders, fields)
        if self.spec.method == "mask2image" and self.spec.labels.boxes != "attention":
            raise SpecError("labels.boxes: mask2image's labels are its input masks; leave labels.boxes at 'attention'",
                            field="labels.boxes")
        if self.spec.labels.boxes != "attention" and self.adaptor is None:
            from worker.adaptor.labeler import AdaptorLabeler

            self.adaptor = AdaptorLabeler.for_job(self.spec, self.model)
        gen = self.spec.generation
        self.labels = effective_labels(self.spec.labels, self.model.extras, (gen.width, gen.height))
        self.method = method_for(self)
        if self.method.labels_from_inputs and self.spec.labels.boxes != "attention":
            raise SpecError(f"labels.boxes: {self.spec.method}'s labels are its input masks; leave labels.boxes at 'attention'",
                            field="labels.boxes")
        self.filters = build_filters(self.spec, self)

    def source_root(self, source: SourceSpec, field: str | None = None) -> Path:
        """The local folder of a method's source data (a path, or an upload or a dataset version fetched by the service).

        `field`: the spec field that names the source (default `<method>.source`)."""
        field = field or f"{self.spec.method}.source"
        if source.path is not None:
            return Path(source.path)
        if source.dataset is not None:
            return self.dataset_root(source.dataset, source.version, f"{field}.dataset")
        if self.uploads is None:
            raise SpecError(
                f"{field}.upload: uploads are read by the service's workers; "
                "on this machine give a folder (path)", field=f"{field}.upload",
            )
        return self.uploads(source.upload)

    def dataset_root(self, name: str, version: int | str | None, field: str) -> Path:
        """The local dsgen folder of a version of one of the job's tenant's datasets (fetched by the service)."""
        if self.datasets is None:
            raise SpecError(f"{field}: dataset versions are read by the service's workers; on this machine give "
                            "a folder (source.path, image2image.images), e.g. one written by `dsgen run`", field=field)
        return self.datasets(name, None if version in (None, "latest") else int(version), field=field)

    def resolve_folder(self, ref: str, field: str) -> str:
        """A folder reference: a local path, or `upload:<id>` (an uploaded archive, e.g. a segmenter)."""
        if not ref.startswith("upload:"):
            return ref
        if self.uploads is None:
            raise SpecError(f"{field}: uploads are read by the service's workers; on this machine give a folder", field=field)
        from worker.engine.mask_sources import source_root

        return str(source_root(self.uploads(ref.removeprefix("upload:"))))

    @property
    def labels_enabled(self) -> bool:
        return self.spec.labels.mode != "none" or self.spec.labels.boxes != "attention"

    @property
    def attention_enabled(self) -> bool:
        if self.method.labels_from_inputs:
            return False
        return self.spec.labels.mode != "none" and self.spec.labels.boxes != "adaptor"

    def method_parameters(self) -> dict:
        """What a sample records of how it was made (beside model, seed and prompt)."""
        out = {
            "generation": self.spec.generation.model_dump(mode="json"),
            "labels": self.labels.model_dump(mode="json"),
        }
        if self.spec.concepts:
            from worker.engine.concepts import concept_lineage

            out["concepts"] = concept_lineage(self.concepts)
        return out

    def capture_config(self):
        """What attention to capture for this job's labels (None when attention labels are off)."""
        if not self.attention_enabled:
            return None
        gen = self.spec.generation
        latent_hw = (gen.height // self.model.vae_scale, gen.width // self.model.vae_scale)
        try:
            return capture_config(self.model.unet, self.labels, latent_hw, guidance=gen.guidance_scale > 1.0)
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
            plans = [self.plan(i) for i in batch]
            samples = [self._label(j, plan, out) for plan, (out, j) in zip(plans, self._run(plans, on_step))]
            samples = self.filters(samples)
            share = (time.perf_counter() - started) / len(batch)
            for s in samples:
                if s.record.index in wanted:
                    s.seconds = share
                    yield s

    def plan(self, index: int) -> SamplePlan:
        """Seed, prompt and classes of a sample (the method decides)."""
        return self.method.plan(index)

    def _run(self, plans: list[SamplePlan], on_step) -> list[tuple[GenerationOutput, int]]:
        """(output, position in it) per plan: one generate call per group of the method's batch inputs."""
        gen = self.spec.generation
        features = FeatureConfig(step=self.adaptor.feature_step) if self.adaptor is not None else None
        placed: dict[int, tuple[GenerationOutput, int]] = {}
        for inputs in self.method.batch_inputs(plans):
            members = inputs.members
            out = (inputs.runner or generate)(
                self.model,
                [plans[k].prompt for k in members],
                [plans[k].seed for k in members],
                gen,
                negative_prompt=self.spec.prompts.negative,
                capture=self.capture_config(),
                on_step=on_step,
                features=features,
                init=inputs.init,
                controls=inputs.controls,
                controlnet=inputs.controlnet,
            )
            if self.adaptor is not None:
                out.detections = self.adaptor.detect(out.features, (gen.height, gen.width))
            for j, k in enumerate(members):
                placed[k] = (out, j)
        return [placed[k] for k in range(len(plans))]

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
            parameters={**self.method_parameters(), **self.method.parameters(plan)},
            width=gen.width,
            height=gen.height,
        )
        if not self.labels_enabled:
            files = SampleFiles(semantic=None, instances=None)
            return GeneratedSample(SampleRecord(files=files, **record_kwargs), image)
        if self.method.labels_from_inputs or self.method.given_labels(plan) is not None:  # augment: per sample
            return self._given_labels(plan, image, record_kwargs)
        if not self.attention_enabled:  # boxes from the adaptor only
            annotations, quality = self.adaptor.annotate(out.detections[j], attention=None)
            files = SampleFiles(semantic=None, instances=None)
            record = SampleRecord(files=files, annotations=annotations, quality=quality, **record_kwargs)
            return GeneratedSample(record, image)
        groups = token_groups(out.encoded.offsets[j], plan.mentions)
        result = label_image(
            out.store,
            j,
            groups,
            [m.category_id for m in plan.mentions],
            [m.name for m in plan.mentions],
            self.labels,
            (gen.height, gen.width),
            image=np.asarray(image.convert("RGB")),
        )
        annotations, quality = result.annotations, result.quality
        if self.adaptor is not None:
            annotations, extra = self.adaptor.annotate(out.detections[j], attention=annotations)
            quality = {**quality, **extra}
        record = SampleRecord(annotations=annotations, quality=quality, **record_kwargs)
        return GeneratedSample(record, image, result.semantic, result.instances)

    def _given_labels(self, plan: SamplePlan, image: Image.Image, record_kwargs: dict) -> GeneratedSample:
        """The method's input masks are the labels (mask2image)."""
        maps = self.method.given_labels(plan)
        ids = list(self.spec.category_ids.values())
        names = list(self.spec.category_ids)
        if maps.instances is not None:
            inst = instances_from_maps(maps.semantic, maps.instances, ids, names)
        else:
            inst = extract_instances(maps.semantic, ids, names, min_component_area=0)
        total = float(inst.semantic.size)
        quality = {
            "uncertain_fraction": float((inst.semantic == IGNORE).sum()) / total,
            "class_pixel_fraction": {n: float((inst.semantic == c).sum()) / total for n, c in zip(names, ids) if n in plan.classes},
        }
        record = SampleRecord(annotations=inst.annotations, quality=quality, **record_kwargs)
        return GeneratedSample(record, image, inst.semantic, inst.instances)
