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

METHODS_AVAILABLE = ("text2image", "image2image", "mask2image", "augment")
METHODS_PLANNED = ("layout",)
SOURCE_FORMATS = ("auto", "masks", "coco", "voc", "dsgen")
UPLOAD_ID = r"^[0-9a-f]{32}$"
EXPORT_FORMATS = ("coco", "yolo", "voc", "hf", "masks")
SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpm++", "pndm", "ddpm", "lcm")
SLOT_PATTERN = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
CLASS_SLOT = re.compile(r"^class(_[1-9])?$")


class StrictModel(BaseModel):
    # Unknown keys are almost always typos ("step" for "steps"): refuse them by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(StrictModel):
    """Which diffusion model: `builtin:<name>`, a local diffusers folder, or a hub id."""

    id: str = Field(min_length=1, description="builtin:<name>, a local diffusers folder, or a hub id")
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
        default=None, description="a text file, one caption per line (source: captions_file)"
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
                if not any(CLASS_SLOT.match(n) for n in names):
                    raise ValueError(
                        f"templates: {t!r} has no {{class}} slot; every template names a class"
                    )
                missing = [n for n in names if not CLASS_SLOT.match(n) and n not in self.slots]
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
        "its mean loss for c on real data",
    )
    tolerance: float = Field(default=1.25, gt=0.0, le=100.0, description="FreeMask's loss tolerance")
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
            if any(r < 1 or r & (r - 1) for r in v):
                raise ValueError("resolutions are powers of two, e.g. [16, 32]")
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


class Image2ImageSpec(StrictModel):
    """method image2image: each sample starts from a real image noised to strength s (DiffusionEngine)."""

    images: str = Field(min_length=1, description="folder of the source images (with coco: the COCO file's image folder)")
    coco: str | None = Field(default=None, description="COCO JSON listing the images to use (and their captions)")
    strength: tuple[float, float] = Field(
        default=(0.4, 0.8), description="range s is drawn from per sample (0 keeps the image, 1 is pure noise)"
    )
    prompt: Literal["source", "spec"] = Field(
        default="source",
        description="source: the image's caption (COCO 'caption' field or dsgen record), else the spec's prompt; "
        "spec: always the spec's prompts",
    )

    @model_validator(mode="after")
    def _strength(self) -> "Image2ImageSpec":
        lo, hi = self.strength
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"strength: need 0 < low <= high <= 1, e.g. [0.4, 0.8] (got [{lo}, {hi}])")
        return self


class SourceSpec(StrictModel):
    """Real data a method reads: a folder on the machine that runs the job (CLI), or an uploaded archive.

    Over the API only `upload` is accepted (POST /v1/sources returns the id).
    """

    path: str | None = Field(default=None, description="folder on this machine (CLI only)")
    upload: str | None = Field(default=None, pattern=UPLOAD_ID, description="id of an archive uploaded with POST /v1/sources")
    format: Literal[SOURCE_FORMATS] = Field(  # type: ignore[valid-type]
        default="auto",
        description="masks: PNG label maps (values = category ids; optional instances/ and images/ beside); "
        "coco: a COCO JSON (+ its images); voc: a VOC folder (SegmentationClass, SegmentationObject, JPEGImages); "
        "dsgen: a dataset folder written by `dsgen run` or `dsgen shapes render`; auto: detect",
    )
    coco: str | None = Field(default=None, description="format coco: the JSON file (relative to the folder); default: the only *.json")

    @model_validator(mode="after")
    def _one_place(self) -> "SourceSpec":
        if (self.path is None) == (self.upload is None):
            raise ValueError("source: give exactly one of path (a folder) or upload (an uploaded archive's id)")
        if self.path is not None and not self.path.strip():
            raise ValueError("path: give a folder")
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
    controlnet: str | None = Field(default=None, description="backend controlnet: a ControlNet folder (diffusers layout)")
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
    prompt: Literal["classes", "template"] = Field(
        default="template", description="classes: the class words present; template: `template` with {classes}"
    )
    template: str = Field(default="a photo of a {classes}", description="{classes}: the words of the classes present")
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
        default_factory=lambda: list(EXPORT_FORMATS)
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
        default="text2image", description="text2image, image2image, mask2image, augment (layout: planned)"
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
                per_image = len({n for n in SLOT_PATTERN.findall(t) if CLASS_SLOT.match(n)})
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


def describe_validation_error(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs, e.g. ("generation.steps", "Input should be ... (got 5000)")."""
    out: list[tuple[str, str]] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see examples/ for the allowed fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in {"model_type", "dict_type"} and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        # Cross-field checks raise "field: reason"; fold the field into the path.
        named = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", msg, flags=re.S)
        if named and e["type"] == "value_error":
            loc = f"{loc}.{named.group(1)}" if loc else named.group(1)
            msg = named.group(2)
        out.append((loc or "spec", msg))
    return out


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


def load_spec(path: str | Path) -> JobSpec:
    """Read a job spec from a YAML or JSON file. Relative paths inside resolve against its folder."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: {err}".splitlines()[0]) from None
    spec = parse_spec(data)
    captions = spec.prompts.captions_file
    if captions and not Path(captions).is_absolute():
        spec = spec.model_copy(
            update={"prompts": spec.prompts.model_copy(update={"captions_file": str((p.parent / captions).resolve())})}
        )
    if spec.image2image is not None:
        paths = {k: v for k in ("images", "coco") if (v := getattr(spec.image2image, k)) and not Path(v).is_absolute()}
        if paths:
            fixed = {k: str((p.parent / v).resolve()) for k, v in paths.items()}
            spec = spec.model_copy(update={"image2image": spec.image2image.model_copy(update=fixed)})
    m2i = spec.mask2image
    if m2i is not None:
        update: dict[str, Any] = {}
        if m2i.source.path and not Path(m2i.source.path).is_absolute():
            update["source"] = m2i.source.model_copy(update={"path": str((p.parent / m2i.source.path).resolve())})
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
    aug = spec.augment
    if aug is not None and aug.source.path and not Path(aug.source.path).is_absolute():
        src = aug.source.model_copy(update={"path": str((p.parent / aug.source.path).resolve())})
        spec = spec.model_copy(update={"augment": aug.model_copy(update={"source": src})})
    seg = spec.labels.filter.segmenter
    if seg and not Path(seg).is_absolute() and (p.parent / seg).exists():
        filt = spec.labels.filter.model_copy(update={"segmenter": str((p.parent / seg).resolve())})
        spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"filter": filt})})
    adaptor = spec.labels.adaptor
    if adaptor and not adaptor.startswith("builtin:") and not Path(adaptor).is_absolute() and (p.parent / adaptor).exists():
        spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"adaptor": str((p.parent / adaptor).resolve())})})
    return spec
