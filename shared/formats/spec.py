"""The job spec: what a user asks dsgen to make.

One pydantic model validated the same way by the CLI (`dsgen run`), the API and the
scheduler. Every constraint carries a message that says what is allowed, because the
message is what a user sees (see `describe_validation_error`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

METHODS_AVAILABLE = ("text2image", "image2image", "mask2image", "edit", "layout", "augment")
METHODS_PLANNED: tuple[str, ...] = ()
SOURCE_FORMATS = ("auto", "masks", "coco", "voc", "dsgen")
UPLOAD_ID = r"^[0-9a-f]{32}$"
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")  # fullmatch; the rule of shared.datasets.versions.check_name
EXPORT_FORMATS = ("coco", "yolo", "voc", "hf", "masks", "webdataset")
DEFAULT_EXPORT_FORMATS = ("coco", "yolo", "voc", "hf", "masks")  # webdataset on request
# real-loss quantiles a segmenter stores per class (`dsgen segmenter train`); labels.filter.quantile picks one
FILTER_QUANTILE_LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpm++", "pndm", "ddpm", "lcm")
SLOT_PATTERN = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
CLASS_SLOT = re.compile(r"class(_[1-9])?")
# Fields that may name a file or folder on the machine that runs the job. Over the API such a
# field may only name what the server offers or the tenant owns: see `shared.formats.spec_paths`.
SERVER_PATH = {"x-server-path": True}


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: no database or UTF-8 holds them


MAX_DEPTH = 32  # a spec is a few levels deep; deeper is an attack on the recursion limit


def check_plain_data(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuse what JSON columns, UTF-8 and the database cannot hold, naming where it is:
    NUL characters and lone surrogates in strings (keys too), NaN and infinite numbers, and
    nesting deeper than MAX_DEPTH."""
    where = path or "spec"
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, str):
        if m := _UNSTORABLE.search(value):
            what = "a NUL character" if m.group() == "\x00" else "a lone surrogate (not valid Unicode)"
            raise ValueError(f"{where}: text contains {what} at position {m.start()}; remove it")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: numbers must be finite (got {value})")
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            check_plain_data(key, where)
            check_plain_data(v, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain_data(v, f"{path}.{i}" if path else str(i), depth + 1)


class StrictModel(BaseModel):
    # Unknown keys are almost always typos ("step" for "steps"): refuse them by name.
    # NaN/Infinity are refused: JSON columns cannot store them and no setting means them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelRef(StrictModel):
    """Which diffusion model: `builtin:<name>`, a local diffusers folder, or a hub id."""

    id: str = Field(min_length=1, description="builtin:<name>, a local diffusers folder, or a hub id",
                    json_schema_extra=SERVER_PATH)
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class ClassSpec(StrictModel):
    name: str = Field(min_length=1, max_length=64, description="class name used in labels")
    words: list[str] | None = Field(
        default=None,
        description="words written in prompts for this class (default: the name); "
        "one is picked per prompt",
    )

    @field_validator("name")
    @classmethod
    def _name_is_label_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _\-]*", v):
            raise ValueError("class names use letters, digits, spaces, '_' or '-'")
        return v

    @field_validator("words")
    @classmethod
    def _words_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not w.strip() for w in v)):
            raise ValueError("words must be a non-empty list of non-empty strings")
        return v

    @property
    def prompt_words(self) -> list[str]:
        return list(self.words) if self.words else [self.name]


class LLMPromptSpec(StrictModel):
    """prompts.source llm: prompts written by a language model once per job (Dataset Diffusion's caption stage)."""

    backend: Literal["endpoint", "local"] = Field(
        default="endpoint",
        description="endpoint: the OpenAI-compatible chat endpoint this server is configured with (DSGEN_LLM_URL; "
        "vLLM, llama.cpp's server, Ollama); local: a transformers causal-LM folder (CLI only)",
    )
    model: str | None = Field(default=None, max_length=500,
                              description="endpoint: the served model's name (default DSGEN_LLM_MODEL); local: the folder")
    count: int = Field(default=20, ge=1, le=10_000, description="how many prompts to write (sample i uses prompt i mod count)")
    instruction: str = Field(
        default="Write one short caption of a photo that shows a {classes}. Answer with the caption only.",
        max_length=2000, description="the request per prompt; {classes}: the class words that prompt must name",
    )
    classes_per_prompt: int = Field(default=1, ge=1, le=8, description="classes each prompt must name")
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(default=48, ge=4, le=1000)
    max_attempts: int = Field(default=4, ge=1, le=20, description="tries per prompt to get one that names its classes")
    generated: list[str] | None = Field(default=None, description="set by dsgen: the prompts written for this job")
    generated_by: dict[str, Any] | None = Field(default=None, description="set by dsgen: which model wrote them")

    @model_validator(mode="after")
    def _check(self) -> "LLMPromptSpec":
        if "{classes}" not in self.instruction:
            raise ValueError("instruction: needs a {classes} slot (the classes each prompt must name)")
        if self.backend == "local" and not self.model:
            raise ValueError("model: backend 'local' needs a causal-LM folder")
        if self.generated is not None and (not self.generated or any(not p.strip() for p in self.generated)):
            raise ValueError("generated: non-empty prompts (dsgen writes this field)")
        return self


class PromptSpec(StrictModel):
    """How each sample's prompt is made, deterministically from (job seed, sample index)."""

    source: Literal["templates", "list", "captions_file", "llm"] = "templates"
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {class}"],
        description="templates with {class} (or {class_1}, {class_2}, ...) and other {slots}",
    )
    slots: dict[str, list[str]] = Field(
        default_factory=dict, description="values for the other {slot}s of the templates"
    )
    prompts: list[str] = Field(default_factory=list, description="explicit prompts (source: list)")
    captions_file: str | None = Field(
        default=None, description="a text file, one caption per line (source: captions_file; not over the API)",
        json_schema_extra=SERVER_PATH,
    )
    append_class_names: bool | None = Field(
        default=None,
        description="append '; <class words>' to the prompt (Dataset Diffusion); "
        "default: on for captions and lists, off for templates",
    )
    negative: str = Field(default="", max_length=1000)
    llm: LLMPromptSpec | None = Field(default=None, description="source llm: how the prompts are written")

    @model_validator(mode="after")
    def _check_source(self) -> "PromptSpec":
        if self.source == "llm" and self.llm is None:
            raise ValueError("llm: source 'llm' needs prompts.llm (e.g. {count: 20})")
        if self.source != "llm" and self.llm is not None:
            raise ValueError("llm: only used with source 'llm'")
        if self.source == "templates":
            if not self.templates:
                raise ValueError("templates: give at least one template")
            for t in self.templates:
                names = SLOT_PATTERN.findall(t)
                if not any(CLASS_SLOT.fullmatch(n) for n in names):
                    raise ValueError(
                        f"templates: {t!r} has no {{class}} slot; every template names a class"
                    )
                missing = [n for n in names if not CLASS_SLOT.fullmatch(n) and n not in self.slots]
                if missing:
                    raise ValueError(
                        f"templates: slot {{{missing[0]}}} in {t!r} has no values; "
                        f"add slots.{missing[0]}: [...]"
                    )
        elif self.source == "list" and not self.prompts:
            raise ValueError("prompts: source 'list' needs a non-empty prompts list")
        elif self.source == "captions_file" and not self.captions_file:
            raise ValueError("captions_file: source 'captions_file' needs a path")
        for name, values in self.slots.items():
            if not values:
                raise ValueError(f"slots.{name}: give at least one value")
        return self


class GenerationSpec(StrictModel):
    width: int = Field(default=512, ge=8, le=4096, multiple_of=8, description="image width in pixels")
    height: int = Field(default=512, ge=8, le=4096, multiple_of=8, description="image height in pixels")
    steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(default=7.5, ge=0.0, le=50.0)
    scheduler: Literal[SCHEDULERS] = "default"  # type: ignore[valid-type]
    batch_size: int = Field(default=4, ge=1, le=256)


class FilterSpec(StrictModel):
    """Filters run after labelling, for every method (FreeMask's segmenter filter, the attention gate)."""

    segmenter: str | None = Field(
        default=None,
        description="segmenter folder from `dsgen segmenter train` (or upload:<id>, its zipped folder uploaded to "
        "/v1/sources): a pixel of class c becomes 255 (ignore) when the segmenter's loss there exceeds tolerance x "
        "the reference loss for c on real data",
    )
    reference: Literal["class_mean", "real_quantile"] = Field(
        default="class_mean",
        description="the real loss a pixel's loss is compared with: class_mean (FreeMask: the class's mean loss on "
        "real data) or real_quantile (the loss that `quantile` of the class's real pixels stay under, so about "
        "1 - quantile of correctly labelled pixels are ignored)",
    )
    quantile: Literal[FILTER_QUANTILE_LEVELS] = Field(  # type: ignore[valid-type]
        default=0.99, description="reference real_quantile: the level (one of those the segmenter stores)")
    tolerance: float | None = Field(
        default=None, gt=0.0, le=100.0,
        description="threshold = tolerance x reference; default 1.25 with class_mean (FreeMask's), 1.0 with real_quantile")
    scope: Literal["pixels", "samples"] = Field(
        default="pixels",
        description="pixels (FreeMask): high-loss pixels become 255 (ignore); samples: no pixel is changed, a sample is "
        "dropped when less than min_kept of its labelled pixels are within tolerance (for data whose few errors are "
        "whole samples, where ignoring hard pixels would also remove correct edges)",
    )
    min_kept: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="drop a sample when less than this fraction of its labelled (non-background) pixels survives",
    )
    attention_gate: Literal["off", "flag", "drop"] = Field(
        default="flag",
        description="attention labels: a prompted class with no confident region, a peak far below the job's median, "
        "or more fragments than mentions is flagged in record.quality (flag), and its sample left out (drop)",
    )
    min_peak_ratio: float = Field(default=0.25, ge=0.0, le=1.0, description="attention gate: peak below this x the median")

    @field_validator("segmenter")
    @classmethod
    def _segmenter(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("segmenter: give a folder from `dsgen segmenter train`, or leave it out")
        return v


class LabelSpec(StrictModel):
    mode: Literal["refined", "daam", "none"] = Field(
        default="refined",
        description="refined: self-attention refinement (Dataset Diffusion); "
        "daam: thresholded cross-attention; none: images only",
    )
    cross_resolutions: list[int] | Literal["auto"] = Field(
        default="auto", description="sides of the cross-attention maps to aggregate, e.g. [16, 32]"
    )
    self_resolution: int | Literal["auto"] = Field(
        default="auto", description="side of the self-attention map used for refinement"
    )
    step_window: tuple[float, float] = Field(
        default=(0.0, 1.0), description="fraction of the denoising steps to aggregate, [start, end]"
    )
    tau: int = Field(default=4, ge=0, le=16, description="power of the self-attention matrix")
    class_threshold: float = Field(default=0.6, gt=0.0, le=1.0)
    uncertain_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    daam_threshold: float = Field(default=0.4, gt=0.0, le=1.0)
    min_component_area: int = Field(default=16, ge=0, description="drop instances smaller than this (pixels)")
    edges: Literal["none", "guided"] = Field(
        default="none",
        description="guided: snap the upsampled score maps to the image's edges (colour guided filter) "
        "before thresholding; none: attention maps only",
    )
    edge_radius: int | Literal["auto"] = Field(
        default="auto", description="guided filter window radius in pixels (auto: 1/16 of the shorter side)"
    )
    boxes: Literal["attention", "adaptor", "both"] = Field(
        default="attention",
        description="where boxes come from: attention (instances of the attention masks); adaptor (a detection "
        "adaptor reading the UNet's features, DiffusionEngine; no masks); both (attention masks, boxes matched "
        "to adaptor boxes)",
    )
    adaptor: str | None = Field(
        default=None,
        description="adaptor folder (from `dsgen adaptor train`) or builtin:<name>; default: the model's "
        "shipped adaptor (builtin:<model>-adaptor)",
        json_schema_extra=SERVER_PATH,
    )
    adaptor_score_threshold: float = Field(default=0.3, gt=0.0, lt=1.0, description="keep adaptor boxes scoring above this")
    adaptor_nms_iou: float = Field(default=0.5, gt=0.0, le=1.0, description="IoU above which NMS drops the weaker box")
    match_iou: float = Field(default=0.5, gt=0.0, le=1.0, description="boxes 'both': IoU for an adaptor box to match an attention instance")
    keep_empty: bool = Field(
        default=False, description="keep images in which the adaptor finds no box (default: drop them from the exports)"
    )
    filter: FilterSpec = Field(default_factory=FilterSpec, description="filters after labelling")

    @field_validator("cross_resolutions")
    @classmethod
    def _resolutions(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one resolution or 'auto'")
            # Any side the model's attention layers have (a 768-px SD job has 96/48/24, a 48-px
            # model 48/24); the engine checks them against the loaded model, naming this field.
            if any(r < 1 for r in v):
                raise ValueError("resolutions are attention map sides in cells (>= 1), e.g. [16, 32]")
        return v

    @model_validator(mode="after")
    def _window_and_thresholds(self) -> "LabelSpec":
        start, end = self.step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError("step_window: need 0 <= start < end <= 1, e.g. [0.0, 1.0]")
        if self.uncertain_threshold > self.class_threshold:
            raise ValueError(
                "uncertain_threshold: must be <= class_threshold "
                f"({self.uncertain_threshold} > {self.class_threshold})"
            )
        if self.boxes == "both" and self.mode == "none":
            raise ValueError("boxes: 'both' keeps attention masks, so it needs labels.mode 'refined' or 'daam'")
        if self.adaptor is not None and self.boxes == "attention":
            raise ValueError("adaptor: set labels.boxes to 'adaptor' or 'both' to use an adaptor")
        if self.adaptor is not None and not self.adaptor.strip():
            raise ValueError("adaptor: give a folder or builtin:<name>, or leave it out for the model's own")
        return self


def _version_ref(value: Any) -> Any:
    """A dataset version: 'latest', N or 'vN' (N >= 1); 'v3' and '3' become 3."""
    if value is None:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "latest":
            return "latest"
        text = text[1:] if text.startswith("v") else text
        value = int(text) if re.fullmatch(r"[0-9]{1,9}", text) else None  # ASCII digits only
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 10**9:
        raise ValueError("give 'latest', N or 'vN' with N >= 1 (e.g. version: latest, version: 3)")
    return value


class Image2ImageSpec(StrictModel):
    """method image2image: each sample starts from a real image noised to strength s (DiffusionEngine)."""

    images: str | None = Field(
        default=None, min_length=1,
        description="folder of the source images (with coco: the COCO file's image folder); with upload: a folder "
        "inside the archive (default: its top)", json_schema_extra=SERVER_PATH,
    )
    coco: str | None = Field(default=None, description="COCO JSON listing the images to use (and their captions)",
                             json_schema_extra=SERVER_PATH)
    upload: str | None = Field(default=None, pattern=UPLOAD_ID,
                               description="id of an archive of the images uploaded with POST /v1/sources (API)")
    dataset: str | None = Field(default=None, description="name of one of this tenant's datasets: the images of "
                                "one of its versions' samples are the sources (service only)")
    version: int | Literal["latest"] | None = Field(
        default=None, description="with dataset: 'latest' (the default), N or 'vN'; stored as the number it "
        "resolved to at submit")
    strength: tuple[float, float] = Field(
        default=(0.4, 0.8), description="range s is drawn from per sample (0 keeps the image, 1 is pure noise)"
    )
    prompt: Literal["source", "spec"] = Field(
        default="source",
        description="source: the image's caption (COCO 'caption' field or dsgen record), else the spec's prompt; "
        "spec: always the spec's prompts",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_ref(cls, value: Any) -> Any:
        return _version_ref(value)

    @model_validator(mode="after")
    def _strength(self) -> "Image2ImageSpec":
        if self.dataset is not None:
            if self.upload is not None or self.images is not None or self.coco is not None:
                raise ValueError("dataset: the images of a dataset version are its samples' images; give dataset "
                                 "alone (not with images, coco or upload)")
            if not DATASET_NAME.fullmatch(self.dataset):
                raise ValueError(f"dataset: 1 to 100 characters: letters, digits, '.', '_' or '-', starting with a "
                                 f"letter or digit (got {self.dataset[:100]!r})")
        elif self.version is not None:
            raise ValueError("version: only used with dataset (image2image: {dataset: NAME, version: latest | N})")
        if self.images is None and self.upload is None and self.dataset is None:
            raise ValueError("images: give a folder of source images, upload: an uploaded archive's id, or "
                             "dataset: one of your datasets")
        lo, hi = self.strength
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"strength: need 0 < low <= high <= 1, e.g. [0.4, 0.8] (got [{lo}, {hi}])")
        return self


class SourceSpec(StrictModel):
    """Real data a method reads: a folder on the machine that runs the job (CLI), an uploaded archive,
    or a version of one of the tenant's datasets (service).

    Over the API `upload` (POST /v1/sources returns the id) or `dataset` (+ `version`) is accepted.
    """

    path: str | None = Field(default=None, description="folder on this machine (CLI only)")
    upload: str | None = Field(default=None, pattern=UPLOAD_ID, description="id of an archive uploaded with POST /v1/sources")
    dataset: str | None = Field(
        default=None, description="name of one of this tenant's datasets (GET /v1/datasets): the samples of one of "
        "its versions are the source (service only)")
    version: int | Literal["latest"] | None = Field(
        default=None, description="with dataset: 'latest' (the default), N or 'vN'; the server stores the number "
        "'latest' resolved to when the job was submitted, so re-run shards read the same data")
    format: Literal[SOURCE_FORMATS] = Field(  # type: ignore[valid-type]
        default="auto",
        description="masks: PNG label maps (values = category ids; optional instances/ and images/ beside); "
        "coco: a COCO JSON (+ its images); voc: a VOC folder (SegmentationClass, SegmentationObject, JPEGImages); "
        "dsgen: a dataset folder written by `dsgen run` or `dsgen shapes render`; auto: detect",
    )
    coco: str | None = Field(default=None, description="format coco: the JSON file (relative to the folder); default: the only *.json")

    @field_validator("version", mode="before")
    @classmethod
    def _version_ref(cls, value: Any) -> Any:
        return _version_ref(value)

    @model_validator(mode="after")
    def _one_place(self) -> "SourceSpec":
        if sum(v is not None for v in (self.path, self.upload, self.dataset)) != 1:
            raise ValueError("source: give exactly one of path (a folder), upload (an uploaded archive's id) or "
                             "dataset (one of your datasets, with version: latest | N)")
        if self.path is not None and not self.path.strip():
            raise ValueError("path: give a folder")
        if self.version is not None and self.dataset is None:
            raise ValueError("version: only used with dataset (source: {dataset: NAME, version: latest | N})")
        if self.dataset is not None:
            if not DATASET_NAME.fullmatch(self.dataset):
                raise ValueError(f"dataset: 1 to 100 characters: letters, digits, '.', '_' or '-', starting with a "
                                 f"letter or digit (got {self.dataset[:100]!r})")
            if self.format not in ("auto", "dsgen") or self.coco is not None:
                raise ValueError("format: a dataset version is a dsgen dataset; leave format at auto (and coco unset)")
        return self




class ResampleSpec(StrictModel):
    """FreeMask's hardness-aware resampling: harder masks get more variants."""

    segmenter: str = Field(min_length=1, description="segmenter folder whose class-wise real loss defines hardness")
    max_variants: int = Field(default=20, ge=1, le=1000, description="K: the hardest mask gets K variants")


class Mask2ImageSpec(StrictModel):
    """method mask2image: an image per (source mask, variant), labelled by the mask (FreestyleNet / FreeMask)."""

    source: SourceSpec
    variants: int = Field(default=1, ge=1, le=1000, description="images per mask (uniform; see resample)")
    resample: ResampleSpec | None = Field(default=None, description="hardness-aware variants per mask instead of `variants`")
    prompt: Literal["classes", "template", "source"] = Field(
        default="classes",
        description="classes: the class words present, space-separated (FreestyleNet); template: `template` with "
        "{classes}; source: the source's caption (its missing classes appended after '; ')",
    )
    template: str = Field(default="a photo of {classes}", description="prompt: template; {classes} = the class words")
    backend: Literal["rectified", "controlnet"] = Field(
        default="rectified",
        description="rectified: class tokens attend only inside their regions (any SD-family UNet, training-free); "
        "controlnet: a segmentation ControlNet reads the mask drawn in `palette`",
    )
    resolutions: list[int] | Literal["all"] = Field(default="all", description="rectified: cross-attention resolutions to rectify")
    bind_modifiers: bool = Field(
        default=True,
        description="rectified: the words just before a class word in its phrase ('red' in 'a red circle') stay inside "
        "the class's region too, so attributes land on their object (off: only the class words, FreestyleNet)",
    )
    controlnet: str | None = Field(
        default=None, description="backend controlnet: a ControlNet folder (diffusers layout: config.json + "
        "diffusion_pytorch_model.safetensors); over the API 'upload:<id>' of the zipped folder (safetensors only)")
    palette: Literal["ade20k", "voc"] | dict[str, tuple[int, int, int]] = Field(
        default="ade20k",
        description="backend controlnet: colours of the classes in the conditioning image: ade20k / voc (by class "
        "name; unknown names get distinct colours), or {class: [r, g, b]}",
    )
    conditioning_scale: float = Field(default=1.0, ge=0.0, le=5.0)

    @model_validator(mode="after")
    def _backend(self) -> "Mask2ImageSpec":
        if self.backend == "controlnet" and not self.controlnet:
            raise ValueError("controlnet: backend 'controlnet' needs a ControlNet folder")
        if self.backend != "controlnet" and self.controlnet:
            raise ValueError("controlnet: only used with backend 'controlnet'")
        if self.prompt == "template" and "{classes}" not in self.template:
            raise ValueError("template: needs a {classes} slot")
        if isinstance(self.resolutions, list) and (not self.resolutions or any(r < 1 for r in self.resolutions)):
            raise ValueError("resolutions: give positive sides, e.g. [16, 32], or 'all'")
        return self


class EditSpec(StrictModel):
    """method edit (Shape-Guided Diffusion): each object of a labelled source image gets a new appearance
    inside its mask; the labels are the source's masks."""

    source: SourceSpec
    inside: list[str] = Field(
        min_length=1, description="inside prompts (the new appearance), {class} = the object's class word, "
        "e.g. 'a blue {class}'; each object is edited once with each")
    outside: str = Field(default="", description="outside prompt (the background), '' for none")
    inversion: str = Field(
        default="a {class}", description="inversion prompt (what is inside the mask now): {class} = the class word, "
        "{caption} = the source's caption")
    objects: Literal["each", "largest"] = Field(default="each", description="which objects of a source are edited")
    min_area: int = Field(default=16, ge=1, description="objects smaller than this (pixels at the generation size) are skipped")
    cross_scale: float = Field(default=2.5, ge=0.0, le=10.0, description="inside/outside word tokens' attention x this (authors: 2.5)")
    self_strength: float = Field(default=1.0, ge=0.0, le=1.0, description="self-attention across the mask boundary x (1 - this)")
    masked_logits: bool = Field(
        default=True, description="also split inside/outside prompts with a logit mask (each pixel's attention "
        "renormalised over its own prompt); false: the authors' probability mask only")
    inside_noise: float = Field(
        default=0.0, ge=0.0, le=1.0, description="fraction of fresh noise (from the sample's seed) mixed into the "
        "inverted start inside the mask; 0 = the authors' pure inversion, higher frees the new appearance from the old")

    @field_validator("inside")
    @classmethod
    def _inside(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("inside: give non-empty prompts, e.g. ['a blue {class}']")
            bad = [n for n in SLOT_PATTERN.findall(p) if n != "class"]
            if bad:
                raise ValueError(f"inside: {p!r} uses {{{bad[0]}}}; the only slot is {{class}}")
        return v

    @field_validator("inversion")
    @classmethod
    def _inversion(cls, v: str) -> str:
        bad = [n for n in SLOT_PATTERN.findall(v) if n not in ("class", "caption")]
        if bad:
            raise ValueError(f"inversion: unknown slot {{{bad[0]}}}; use {{class}} or {{caption}}")
        return v


class LayoutObjectSpec(StrictModel):
    """One object of a layout: its phrase and where it goes (fractions of the image side, origin top-left)."""

    class_name: str = Field(alias="class", min_length=1, description="the job class this object is")
    phrase: str | None = Field(default=None, description="its words in the prompt, {class} = the class word "
                               "(default: the layout's phrase template)")
    box: tuple[float, float, float, float] | None = Field(default=None, description="[x0, y0, x1, y1] in 0..1")
    centroid: tuple[float, float] | None = Field(default=None, description="[x, y] in 0..1 (with size)")
    size: float | None = Field(default=None, gt=0.0, le=1.0, description="side of its square box in 0..1 (with centroid)")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _where(self) -> "LayoutObjectSpec":
        if (self.box is None) == (self.centroid is None):
            raise ValueError("give either box [x0, y0, x1, y1] or centroid [x, y] with size")
        if self.centroid is not None and self.size is None:
            raise ValueError("size: centroid needs a size (the side of the object's box, 0..1)")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"box: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (got {list(self.box)})")
        if self.centroid is not None and not all(0.0 <= c <= 1.0 for c in self.centroid):
            raise ValueError("centroid: x and y in 0..1")
        return self


class LayoutRandomSpec(StrictModel):
    """Layouts drawn per sample: `count` objects of random classes, square boxes of side in `size`."""

    count: tuple[int, int] = Field(default=(1, 2), description="[min, max] objects per image (not used with "
                                   "layout.from_prompts: the prompt's class words are the objects)")
    size: tuple[float, float] = Field(default=(0.35, 0.5), description="[min, max] box side, fraction of the image")
    separate: bool = Field(default=True, description="boxes of one image do not overlap (redrawn up to 50 times)")

    @model_validator(mode="after")
    def _ranges(self) -> "LayoutRandomSpec":
        if not 1 <= self.count[0] <= self.count[1] <= 8:
            raise ValueError("count: need 1 <= min <= max <= 8")
        if not 0.0 < self.size[0] <= self.size[1] <= 1.0:
            raise ValueError("size: need 0 < min <= max <= 1")
        return self


class LayoutSpec(StrictModel):
    """method layout (self-guidance): objects placed by energies on their words' cross-attention maps."""

    objects: list[LayoutObjectSpec] | None = Field(default=None, description="the same layout for every sample")
    random: LayoutRandomSpec | None = Field(default=None, description="a layout drawn per sample")
    phrase: str = Field(default="a {class}", description="an object's words when it gives no phrase; {class} = class word")
    joiner: str = Field(default=" and ", description="between object phrases in the prompt")
    weights: dict[Literal["centroid", "size", "box"], float] = Field(
        default_factory=lambda: {"centroid": 1.0, "size": 1.0, "box": 1.0},
        description="energy weights (the gradient of their sum steers the noise prediction)")
    scale: float = Field(default=1.0, ge=0.0, le=1000.0, description="w: eps += w * sigma_t * grad(energy)")
    step_window: tuple[float, float] = Field(default=(0.0, 0.6), description="fractions of the steps that are guided")
    resolutions: list[int] | Literal["auto"] = Field(default="auto", description="cross-attention resolutions read by the energies")
    checkpointing: bool = Field(default=False, description="gradient checkpointing in the guided UNet calls (less memory, more time)")
    box_mask: bool = Field(
        default=False, description="also keep each object's words (class word and the words before it in its phrase) "
        "inside its asked box with rectified cross-attention, as mask2image does: for models trained with it (the "
        "shapes models); on other models a hard mask can leave box-shaped edges")
    box_mask_window: tuple[float, float] = Field(
        default=(0.0, 1.0), description="box_mask: the fractions of the steps it acts in; an early window "
        "([0, 0.5]) places the object and leaves its shape free (measured in docs/methods.md)")
    shapes: SourceSpec | None = Field(
        default=None, description="a labelled dataset (folder, upload or dataset version) whose instance masks give "
        "each object a shape of its class: a mask of that class is drawn per object (from the sample's seed), "
        "scaled into its box and used as the region of box_mask (in its window) in place of the whole box, so "
        "a model trained with rectified attention draws the class's shape filling the box; labels: layout then "
        "gives those masks. Without it a box-shaped region makes box-shaped objects (docs/methods.md)")
    from_prompts: bool = Field(
        default=False, description="layout-first text2image: each sample's prompt comes from the job's `prompts` "
        "(templates, list, captions, llm) as in text2image, and every class word in it is one object, placed at a "
        "box drawn as `random` draws them (its size and separate; the prompt gives the count). With box_mask and "
        "shapes the objects' words are kept inside a shape of their class, and labels: layout labels each sample by "
        "those shapes: exact by construction (docs/methods.md)")
    labels: Literal["layout", "attention"] = Field(
        default="layout", description="layout: boxes are the asked boxes, masks from attention inside them; "
        "attention: masks and boxes from attention as text2image")

    @model_validator(mode="after")
    def _one(self) -> "LayoutSpec":
        if (self.objects is None) == (self.random is None):
            raise ValueError("give either objects (a fixed layout) or random (a layout drawn per sample)")
        if self.objects is not None and not self.objects:
            raise ValueError("objects: give at least one object")
        lo, hi = self.step_window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("step_window: need 0 <= start < end <= 1")
        lo, hi = self.box_mask_window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("box_mask_window: need 0 <= start < end <= 1, e.g. [0.0, 0.5]")
        if "{class}" not in self.phrase:
            raise ValueError("phrase: needs a {class} slot")
        if self.from_prompts and self.random is None:
            raise ValueError("from_prompts: the prompts give the objects; give random (their box sizes, "
                             "e.g. random: {size: [0.35, 0.5]}) in place of objects")
        if self.shapes is not None and not self.box_mask:
            raise ValueError("shapes: the shapes are the regions of box_mask; set box_mask: true (and box_mask_window)")
        return self


class AugmentSpec(StrictModel):
    """method augment (DA-Fusion): M variants of each real source image, re-drawn at a strength from a set."""

    source: SourceSpec
    variants: int = Field(default=10, ge=1, le=1000, description="M: variants per source image")
    strengths: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
        description="strengths a variant is drawn at, each equally likely (from the job seed and the index)",
    )
    mode: Literal["sdedit", "inpaint_inside", "inpaint_outside"] = Field(
        default="sdedit",
        description="sdedit: re-draw the whole image; inpaint_inside: only inside the objects' masks; "
        "inpaint_outside: only the background (latents outside the region are the source's, noised, at every step)",
    )
    grow: int = Field(default=0, ge=0, le=256, description="inpaint: grow the objects' masks by this many pixels")
    prompt: Literal["classes", "template", "source"] = Field(
        default="template", description="classes: the class words present; template: `template` with {classes}; "
        "source: the source image's caption (classes it does not name appended after '; '), the template where it has none"
    )
    template: str = Field(default="a photo of a {classes}", description="{classes}: the words of the classes present")
    rectify: bool = Field(
        default=False, description="rectified cross-attention from the source's masks (as mask2image): each class's "
        "words (and the words before them) stay inside its objects, so re-drawn objects keep their labels' shape")
    keep_labels_below: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="sdedit: at strength <= this the source's labels are carried over (geometry kept); above it "
        "they are re-derived from attention. Inpaint modes always carry them.",
    )

    @model_validator(mode="after")
    def _check(self) -> "AugmentSpec":
        if not self.strengths or any(not 0.0 < s <= 1.0 for s in self.strengths):
            raise ValueError("strengths: give strengths in (0, 1], e.g. [0.25, 0.5, 0.75, 1.0]")
        if self.prompt == "template" and "{classes}" not in self.template:
            raise ValueError("template: needs a {classes} slot")
        return self


class ExportSpec(StrictModel):
    formats: list[Literal[EXPORT_FORMATS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_EXPORT_FORMATS)
    )
    splits: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="split ratios; they must add up to 1",
    )

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("formats: list each format once")
        return v

    @field_validator("splits")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if any(r < 0 for r in v.values()):
            raise ValueError("split ratios must be >= 0")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must add up to 1 (they add up to {sum(v.values()):g})")
        if v.get("train", 0) <= 0:
            raise ValueError("train ratio must be > 0")
        return v


class JobSpec(StrictModel):
    """A dataset job: everything needed to reproduce it bit for bit."""

    name: str = Field(default="dataset", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
    model: ModelRef
    method: str = Field(
        default="text2image", description="text2image, image2image, mask2image, edit, layout, augment"
    )
    classes: list[ClassSpec] = Field(min_length=1, max_length=1000)
    prompts: PromptSpec = Field(default_factory=PromptSpec)
    num_images: int = Field(ge=1, le=10_000_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    labels: LabelSpec = Field(default_factory=LabelSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    image2image: Image2ImageSpec | None = Field(default=None, description="source images (method image2image)")
    mask2image: Mask2ImageSpec | None = Field(default=None, description="source masks (method mask2image)")
    edit: EditSpec | None = Field(default=None, description="source images, masks and prompts (method edit)")
    layout: LayoutSpec | None = Field(default=None, description="the objects' places (method layout)")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_plain_data(data)
        return data
    augment: AugmentSpec | None = Field(default=None, description="real images to augment (method augment)")
    concepts: list[str] = Field(
        default_factory=list, max_length=32,
        description="learned concepts (`dsgen concepts learn` folders; over the API 'upload:<id>' of a zipped one) "
        "whose tokens the prompts may use, e.g. classes: [{name: part, words: ['<my-part>']}]",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"id": v} if isinstance(v, str) else v

    @field_validator("classes", mode="before")
    @classmethod
    def _class_shorthand(cls, v: Any) -> Any:
        # `classes: [cat, dog]` is the same as `classes: [{name: cat}, {name: dog}]`
        return [{"name": c} if isinstance(c, str) else c for c in v] if isinstance(v, list) else v
    @field_validator("concepts")
    @classmethod
    def _concepts(cls, v: list[str]) -> list[str]:
        if any(not c.strip() for c in v):
            raise ValueError("concepts: give concept folders (made by `dsgen concepts learn`) or 'upload:<id>'")
        if len(set(v)) != len(v):
            raise ValueError("concepts: list each concept once")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v in METHODS_PLANNED:
            raise ValueError(f"method {v!r} is planned but not available yet; use one of {list(METHODS_AVAILABLE)}")
        if v not in METHODS_AVAILABLE:
            raise ValueError(f"unknown method {v!r}; use one of {list(METHODS_AVAILABLE)}")
        return v

    @model_validator(mode="after")
    def _classes_fit_prompts(self) -> "JobSpec":
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"classes: {dupes[0]!r} is listed twice; class names must be unique")
        if self.prompts.source == "templates":
            for t in self.prompts.templates:
                per_image = len({n for n in SLOT_PATTERN.findall(t) if CLASS_SLOT.fullmatch(n)})
                if per_image > len(self.classes):
                    raise ValueError(
                        f"prompts.templates: {t!r} names {per_image} classes but the job has "
                        f"{len(self.classes)}"
                    )
        if self.method == "image2image" and self.image2image is None:
            raise ValueError("image2image: method 'image2image' needs image2image.images (a folder of source images)")
        if self.method != "image2image" and self.image2image is not None:
            raise ValueError(f"image2image: only used with method 'image2image' (method is {self.method!r})")
        if self.method == "mask2image" and self.mask2image is None:
            raise ValueError("mask2image: method 'mask2image' needs mask2image.source (a folder or an uploaded archive)")
        if self.method != "mask2image" and self.mask2image is not None:
            raise ValueError(f"mask2image: only used with method 'mask2image' (method is {self.method!r})")
        for name, hint in (("edit", "edit.source and edit.inside"), ("layout", "layout.objects or layout.random")):
            if self.method == name and getattr(self, name) is None:
                raise ValueError(f"{name}: method {name!r} needs {hint}")
            if self.method != name and getattr(self, name) is not None:
                raise ValueError(f"{name}: only used with method {name!r} (method is {self.method!r})")
        if self.layout is not None and self.layout.objects is not None:
            known = {c.name for c in self.classes}
            for o in self.layout.objects:
                if o.class_name not in known:
                    raise ValueError(f"layout: object class {o.class_name!r} is not one of the job's classes {sorted(known)}")
        if self.layout is not None and self.layout.from_prompts and self.prompts.append_class_names:
            raise ValueError("prompts.append_class_names: layout.from_prompts makes every class word of a prompt an "
                             "object, so appended class names would add objects; set append_class_names: false")
        if self.method == "augment" and self.augment is None:
            raise ValueError("augment: method 'augment' needs augment.source (a folder or an uploaded archive)")
        if self.method != "augment" and self.augment is not None:
            raise ValueError(f"augment: only used with method 'augment' (method is {self.method!r})")
        return self

    @property
    def category_ids(self) -> dict[str, int]:
        """Class name -> category id (1-based; 0 is background, 255 is ignore)."""
        return {c.name: i + 1 for i, c in enumerate(self.classes)}


class SpecError(ValueError):
    """A spec that cannot be used, with a message meant for the user."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _fields_at(loc: tuple, model: type[BaseModel] = None) -> list[str]:  # type: ignore[assignment]
    """Field names allowed at the parent of `loc` (a pydantic error location) in the spec."""
    import typing

    current: Any = model or JobSpec
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        ann = info.annotation
        for _ in range(3):  # unwrap list[X], X | None
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                break
            ann = args[0] if args else ann
        current = ann
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _typo_hint(loc: tuple) -> str:
    import difflib

    name = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(name, _fields_at(loc), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


TRANSPORT_PARTS = ("body", "query", "path", "header")


def describe_errors(errors: list[dict], *, root: str = "spec", transport: bool = False,
                    typo_hints: bool = True) -> list[tuple[str, str]]:
    """(field path, message) pairs from pydantic error dicts, e.g. ("generation.steps", "Input should
    be ... (got 5000)"): the one wording of validation errors, for specs and for request bodies.

    Unknown fields come first: a typo ("num_image") also makes the real field "missing", and the typo
    is the thing to fix. `transport`: locations start with FastAPI's "body"/"query"/... (dropped);
    `typo_hints`: suggest the closest spec field for an unknown one (locations relative to a spec)."""
    out: list[tuple[str, str]] = []
    for e in sorted(errors, key=lambda e: e.get("type") != "extra_forbidden"):
        parts = tuple(p for p in e.get("loc", ()) if not str(p).startswith("function-"))
        if transport and parts and parts[0] in TRANSPORT_PARTS:
            parts = parts[1:]
        loc = ".".join(str(p) for p in parts)
        msg, kind = str(e.get("msg", "invalid")), e.get("type")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if kind == "extra_forbidden":
            hint = _typo_hint(parts) if typo_hints else ""
            msg = f"unknown field `{parts[-1]}`{hint}" if hint else \
                "unknown field (check the spelling; see examples/ for the allowed fields)"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "json_invalid":
            msg = "the body is not valid JSON"
        elif "input" in e and kind not in {"model_type", "dict_type"} and not isinstance(e["input"], (dict, list)) \
                and not (transport and e["input"] is None):
            msg = f"{msg} (got {e['input']!r})"[:300]
        # Cross-field checks raise "field: reason"; fold the field into the path.
        named = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", msg, flags=re.S)
        if named and kind == "value_error":
            loc = f"{loc}.{named.group(1)}" if loc else named.group(1)
            msg = named.group(2)
        out.append((loc or root, msg))
    return out or [(root, "invalid")]


def describe_validation_error(err: ValidationError) -> list[tuple[str, str]]:
    """`describe_errors` of a spec's ValidationError."""
    return describe_errors(err.errors())


def parse_spec(data: Any) -> JobSpec:
    """Validate a decoded spec; raise SpecError naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping of fields (YAML or JSON object)")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        field, msg = describe_validation_error(err)[0]
        more = len(err.errors()) - 1
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        raise SpecError(f"{field}: {msg}{suffix}", field=field) from None


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` would let a few hundred bytes expand to gigabytes
    (a "billion laughs" document). A spec never needs them; anchors alone are harmless."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML API
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a spec; "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """YAML (or JSON, which is YAML) -> Python data, refusing aliases. Raises yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:  # PyYAML composes nested collections recursively
        raise yaml.YAMLError("the document is nested too deeply (a spec is a few levels deep)") from None


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """'<problem> at line L, column C', the way an editor points at it."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0] or "invalid YAML/JSON"
    return f"{problem}{where}"


def describe_json_error(err: json.JSONDecodeError) -> str:
    return f"{err.msg} at line {err.lineno}, column {err.colno}"


def json_data(value: Any, path: str = "", depth: int = 0) -> Any:
    """Parsed YAML -> plain JSON data: dates become ISO text; keys must be text; binary,
    sets, NaN/Infinity, NUL characters and lone surrogates are refused (ValueError naming where)."""
    import datetime as dt

    where = path or "spec"
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                kind = ("a date" if isinstance(k, (dt.date, dt.datetime)) else "true/false" if isinstance(k, bool)
                        else "a number" if isinstance(k, (int, float)) else "null" if k is None
                        else f"a {type(k).__name__}")
                raise ValueError(f"{where}: key {str(k)[:40]!r} is {kind}; keys are text (quote it: \"{str(k)[:40]}\")")
            out[k] = json_data(v, f"{path}.{k}" if path else k, depth + 1)
        check_plain_data(list(out), where)
        return out
    if isinstance(value, list):
        return [json_data(v, f"{path}.{i}" if path else str(i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{where}: binary values (!!binary) are not allowed in a spec")
    if value is None or isinstance(value, (str, bool, int, float)):
        check_plain_data(value, path)
        return value
    raise ValueError(f"{where}: {type(value).__name__} values are not allowed in a spec")


def _with_local_source(spec: JobSpec, method: str, attr: str, base: Path) -> JobSpec:
    """`spec` with `<method>.<attr>` (a SourceSpec) read relative to the spec file's folder."""
    options = getattr(spec, method)
    source = getattr(options, attr, None) if options is not None else None
    if source is None or not source.path or Path(source.path).is_absolute():
        return spec
    fixed = source.model_copy(update={"path": str((base / source.path).resolve())})
    return spec.model_copy(update={method: options.model_copy(update={attr: fixed})})


def load_spec(path: str | Path) -> JobSpec:
    """Read a job spec from a YAML or JSON file. Relative paths inside resolve against its folder."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{p} is a folder; give the spec file (YAML or JSON) inside it")
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text file (a spec is YAML or JSON in UTF-8)") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else load_yaml(text)
    except RecursionError:
        raise SpecError(f"{p}: nested too deeply (a spec is a few levels deep)") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{p}: not valid JSON: {describe_json_error(err)}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {describe_yaml_error(err)}") from None
    spec = parse_spec(data)
    captions = spec.prompts.captions_file
    if captions and not Path(captions).is_absolute():
        spec = spec.model_copy(
            update={"prompts": spec.prompts.model_copy(update={"captions_file": str((p.parent / captions).resolve())})}
        )
    if spec.image2image is not None and spec.image2image.upload is None:
        paths = {k: v for k in ("images", "coco") if (v := getattr(spec.image2image, k)) and not Path(v).is_absolute()}
        if paths:
            fixed = {k: str((p.parent / v).resolve()) for k, v in paths.items()}
            spec = spec.model_copy(update={"image2image": spec.image2image.model_copy(update=fixed)})
    for method, attr in (("mask2image", "source"), ("edit", "source"), ("augment", "source"), ("layout", "shapes")):
        spec = _with_local_source(spec, method, attr, p.parent)
    m2i = spec.mask2image
    if m2i is not None:
        update: dict[str, Any] = {}
        if m2i.controlnet and not Path(m2i.controlnet).is_absolute() and (p.parent / m2i.controlnet).exists():
            update["controlnet"] = str((p.parent / m2i.controlnet).resolve())
        if m2i.resample and not Path(m2i.resample.segmenter).is_absolute() and (p.parent / m2i.resample.segmenter).exists():
            update["resample"] = m2i.resample.model_copy(update={"segmenter": str((p.parent / m2i.resample.segmenter).resolve())})
        if update:
            spec = spec.model_copy(update={"mask2image": m2i.model_copy(update=update)})
    if spec.concepts:
        fixed = [c if c.startswith("upload:") or Path(c).is_absolute() or not (p.parent / c).exists()
                 else str((p.parent / c).resolve()) for c in spec.concepts]
        spec = spec.model_copy(update={"concepts": fixed})
    seg = spec.labels.filter.segmenter
    if seg and not Path(seg).is_absolute() and (p.parent / seg).exists():
        filt = spec.labels.filter.model_copy(update={"segmenter": str((p.parent / seg).resolve())})
        spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"filter": filt})})
    adaptor = spec.labels.adaptor
    if adaptor and not adaptor.startswith("builtin:") and not Path(adaptor).is_absolute() and (p.parent / adaptor).exists():
        spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"adaptor": str((p.parent / adaptor).resolve())})})
    return spec
