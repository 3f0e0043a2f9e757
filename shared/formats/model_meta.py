"""What a model folder says about itself, read without torch: the builtin models and
adaptors, their safe names, and the metadata a spec is checked against before any weights
load (at submit in the API, and in `dsgen run`).

A model folder is diffusers-layout: `model_index.json`, `unet/config.json`, optionally
`vae/config.json`, and dsgen's own `dsgen.json` (vocabulary of word-level models, default
generation settings, recommended label resolutions). The attention resolutions a UNet has at
a given image size follow from its block layout (`unet/config.json`), the same way
`worker.engine.attention` finds them on the loaded module.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.formats.prompts import CONCEPT_TOKEN

BUILTIN_PREFIX = "builtin:"
EXTRAS_FILE = "dsgen.json"
ADAPTOR_CONFIG = "adaptor.json"
# A builtin name is one folder name inside the package: no separators, no "..", no dot first.
_BUILTIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*")
AUTO_MAX_RESOLUTION = 32  # as worker.labels.from_attention resolves "auto"
MAX_SELF_CELLS = 48 * 48  # as worker.engine.attention.MAX_SELF_TOKENS
_WORD = re.compile(rf"{CONCEPT_TOKEN}|[^\W_]+|[^\w\s]", re.UNICODE)  # a concept token is one word
_CONCEPT_WORD = re.compile(rf"^{CONCEPT_TOKEN}$")


class BuiltinNameError(ValueError):
    """A `builtin:` reference that is not the plain name of a folder in the package."""


def builtin_root() -> Path | None:
    """The package folder of the builtin models (worker/engine/builtin), located without
    importing the worker package (the API must not import it)."""
    spec = importlib.util.find_spec("worker")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "engine" / "builtin"
    return root if root.is_dir() else None


def builtin_name(ref: str) -> str:
    """`builtin:<name>` -> name, refusing anything that could leave the package folder."""
    if not ref.startswith(BUILTIN_PREFIX):
        raise BuiltinNameError(f"{ref!r} is not a builtin:<name> reference")
    name = ref[len(BUILTIN_PREFIX):]
    if not _BUILTIN_NAME.fullmatch(name) or ".." in name:
        raise BuiltinNameError(
            f"{ref!r}: a builtin name is one plain name (letters, digits, '-', '_', '.'), not a path")
    return name


def builtin_path(ref: str) -> Path | None:
    """The package folder of `builtin:<name>` (None when there is no builtin folder at all).
    The folder may not exist; callers say what is available."""
    name = builtin_name(ref)
    root = builtin_root()
    if root is None:
        return None
    path = (root / name).resolve()
    if path.parent != root.resolve():  # belt and braces: a symlink or a name the regex let through
        raise BuiltinNameError(f"{ref!r} does not name a folder of the package")
    return path


def _builtin_folders(marker: str) -> list[str]:
    root = builtin_root()
    if root is None:
        return []
    return sorted(BUILTIN_PREFIX + p.name for p in root.iterdir() if (p / marker).is_file())


def builtin_model_ids() -> list[str]:
    """Every builtin model shipped in this installation (e.g. builtin:shapes-v1, builtin:tiny-random)."""
    return _builtin_folders("model_index.json")


def builtin_adaptor_ids() -> list[str]:
    return _builtin_folders(ADAPTOR_CONFIG)


# ----------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class AttentionBlock:
    factor: int  # downsampling relative to the latent
    kinds: tuple[str, ...]  # "self" and/or "cross"


@dataclass(frozen=True)
class ModelMeta:
    id: str
    extras: dict[str, Any] = field(default_factory=dict)
    vae_scale: int = 8
    blocks: tuple[AttentionBlock, ...] = ()

    @property
    def vocabulary(self) -> list[str] | None:
        vocab = self.extras.get("vocabulary")
        return [str(w) for w in vocab] if vocab else None

    @property
    def default_size(self) -> tuple[int, int] | None:
        gen = self.extras.get("default_generation") or {}
        if "width" in gen and "height" in gen:
            return int(gen["width"]), int(gen["height"])
        return None

    @property
    def allowed_sizes(self) -> list[tuple[int, int]] | None:
        sizes = self.extras.get("allowed_sizes")
        return [(int(w), int(h)) for w, h in sizes] if sizes else None

    def attention_resolutions(self, width: int, height: int) -> dict[str, list[int]]:
        """{"cross": [...], "self": [...]}: map sides (shorter side, in cells) at this image size."""
        latent = (height // self.vae_scale, width // self.vae_scale)
        found: dict[str, set[int]] = {"cross": set(), "self": set()}
        for block in self.blocks:
            side = min(_map_hw(latent, block.factor))
            for kind in block.kinds:
                found[kind].add(side)
        return {k: sorted(v) for k, v in found.items()}

    def self_cells(self, width: int, height: int, resolution: int) -> int | None:
        latent = (height // self.vae_scale, width // self.vae_scale)
        for block in self.blocks:
            hw = _map_hw(latent, block.factor)
            if min(hw) == resolution and "self" in block.kinds:
                return hw[0] * hw[1]
        return None


def _map_hw(latent_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    h, w = latent_hw
    for _ in range(int(math.log2(factor))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _attention_blocks(unet: dict[str, Any]) -> tuple[AttentionBlock, ...]:
    down = list(unet.get("down_block_types") or [])
    up = list(unet.get("up_block_types") or [])
    n = len(down)
    if not n:
        return ()
    only_cross = unet.get("only_cross_attention") or False
    # a bool for every block, or one per down block (the up blocks take it reversed; the mid
    # block always has self-attention), as diffusers builds the UNet
    per_down = list(only_cross) if isinstance(only_cross, (list, tuple)) else [bool(only_cross)] * n

    def kinds(only: bool) -> tuple[str, ...]:
        return ("cross",) if only else ("self", "cross")

    blocks = [AttentionBlock(2**i, kinds(per_down[i])) for i, t in enumerate(down) if "CrossAttn" in str(t)]
    mid = str(unet.get("mid_block_type") or "UNetMidBlock2DCrossAttn")
    if "CrossAttn" in mid:
        blocks.append(AttentionBlock(2 ** (n - 1), kinds(False)))
    per_up = per_down[::-1]
    blocks += [AttentionBlock(2 ** (n - 1 - i), kinds(per_up[i])) for i, t in enumerate(up) if "CrossAttn" in str(t)]
    return tuple(blocks)


@functools.lru_cache(maxsize=32)
def _read_meta(model_id: str, folder: str) -> ModelMeta | None:
    path = Path(folder)
    if not (path / "model_index.json").is_file():
        return None
    index = _read_json(path / "model_index.json")
    vae = index.get("vae")
    if vae and vae[0] is not None and (path / "vae" / "config.json").is_file():
        channels = _read_json(path / "vae" / "config.json").get("block_out_channels") or [0, 0, 0, 0]
        vae_scale = 2 ** (len(channels) - 1)
    else:
        vae_scale = 1 if vae is not None and (not vae or vae[0] is None) else 8
    unet = _read_json(path / "unet" / "config.json")
    return ModelMeta(id=model_id, extras=_read_json(path / EXTRAS_FILE), vae_scale=vae_scale,
                     blocks=_attention_blocks(unet))


def model_meta(model_id: str) -> ModelMeta | None:
    """Metadata of a builtin model or a local model folder; None for a hub id (nothing local
    to read: the worker checks it after download) or a model that does not exist."""
    if model_id.startswith(BUILTIN_PREFIX):
        try:
            path = builtin_path(model_id)
        except BuiltinNameError:
            return None
    else:
        path = Path(model_id).expanduser()
        if not path.is_dir():
            return None
    return None if path is None else _read_meta(model_id, str(path))


# ------------------------------------------------------------------------ spec vs model
def prompt_words(text: str) -> list[str]:
    return _WORD.findall(text)


def spec_texts(spec: Any) -> list[tuple[str, str]]:
    """(field, text) of everything a spec puts in prompts, slots replaced by their values."""
    from shared.formats.spec import SLOT_PATTERN

    p = spec.prompts
    out: list[tuple[str, str]] = []
    for i, c in enumerate(spec.classes):
        for w in c.prompt_words:
            out.append((f"classes.{i}.words" if c.words else f"classes.{i}.name", w))
    # `prompts` makes the prompts of text2image, image2image and layout-first (layout.from_prompts)
    # only; the other methods build theirs from their own fields (a caption, a template, a
    # phrase), checked here instead.
    layout_first = spec.method == "layout" and spec.layout is not None and spec.layout.from_prompts
    if spec.method in ("text2image", "image2image") or layout_first:
        if p.source == "templates":
            out += [("prompts.templates", SLOT_PATTERN.sub(" ", t)) for t in p.templates]
            for name, values in p.slots.items():
                out += [(f"prompts.slots.{name}", v) for v in values]
        elif p.source == "list":
            out += [("prompts.prompts", t) for t in p.prompts]
    out += _method_texts(spec, SLOT_PATTERN)
    if p.negative:
        out.append(("prompts.negative", p.negative))
    return out


def _method_texts(spec: Any, slots) -> list[tuple[str, str]]:
    """(field, text) of the prompt texts a method's own options carry."""
    method = spec.method
    opts = getattr(spec, method, None) if method not in ("text2image", "image2image") else None
    if opts is None:
        return []
    out: list[tuple[str, str]] = []
    if method in ("mask2image", "augment") and opts.prompt == "template":
        out.append((f"{method}.template", slots.sub(" ", opts.template)))
    elif method == "edit":
        out += [("edit.inside", slots.sub(" ", t)) for t in opts.inside]
        out += [("edit.outside", opts.outside), ("edit.inversion", slots.sub(" ", opts.inversion))]
    elif method == "layout" and not opts.from_prompts:
        out += [("layout.phrase", slots.sub(" ", opts.phrase)), ("layout.joiner", opts.joiner)]
        out += [(f"layout.objects.{i}.phrase", slots.sub(" ", o.phrase)) for i, o in enumerate(opts.objects or []) if o.phrase]
    return [(f, t) for f, t in out if t and t.strip()]


def recommended_label_resolutions(extras: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """The model's recommended `cross_resolutions` / `self_resolution` (its dsgen.json), for an
    image of width x height.

    The recommendation is written for the model's default size; its layers sit at fixed
    fractions of the image, so at another size the same layers are at scaled resolutions
    (shapes-v2 at 48 px reads 24+48; asked for 32 px, the same layers are 16+32). A resolution
    that does not scale to a whole number is left as written (the fit check names it).
    """
    rec = {k: v for k, v in (extras.get("recommended_labels") or {}).items()
           if k in ("cross_resolutions", "self_resolution")}
    gen = extras.get("default_generation") or {}
    if not rec or "width" not in gen or "height" not in gen:
        return rec
    num, den = min(width, height), min(int(gen["width"]), int(gen["height"]))
    if num == den:
        return rec

    def scaled(r: int) -> int:
        return r * num // den if (r * num) % den == 0 and r * num >= den else r

    out = dict(rec)
    if "cross_resolutions" in rec:
        out["cross_resolutions"] = [scaled(int(r)) for r in rec["cross_resolutions"]]
    if "self_resolution" in rec:
        out["self_resolution"] = scaled(int(rec["self_resolution"]))
    return out


def check_spec_fits_model(spec: Any, meta: ModelMeta) -> list[tuple[str, str]]:
    """(field, message) for each thing of `spec` the model cannot do: words outside a
    word-level vocabulary, a size it does not make, attention resolutions it does not have."""
    errors: list[tuple[str, str]] = []
    vocab = meta.vocabulary
    if vocab:
        known = {w.lower() for w in vocab}
        concepts = bool(getattr(spec, "concepts", None))
        for fld, text in spec_texts(spec):
            words = prompt_words(text)
            # a concept's token: the tokenizer learns it from the spec's concepts (checked where they load)
            unknown = [w for w in words if w.lower() not in known and not (concepts and _CONCEPT_WORD.match(w))]
            if not concepts and any(_CONCEPT_WORD.match(w) for w in unknown):
                token = next(w for w in unknown if _CONCEPT_WORD.match(w))
                errors.append((fld, f"{token!r} in {text.strip()!r} is a concept token, and the spec lists no concepts: "
                                    "add the concept that defines it to `concepts:` (made by `dsgen concepts learn`)"))
                break
            if unknown:
                errors.append((fld, f"{', '.join(repr(w) for w in dict.fromkeys(unknown))} in {text.strip()!r} "
                                    f"is not in the vocabulary of {meta.id}; known words: {' '.join(vocab)}"))
                break
    gen = spec.generation
    size = (gen.width, gen.height)
    default = meta.default_size
    explicit = {"width", "height"} & set(gen.model_fields_set) if "generation" in spec.model_fields_set else set()
    allowed = meta.allowed_sizes
    if allowed and size not in allowed:
        sizes = ", ".join(f"{w}x{h}" for w, h in allowed)
        errors.append(("generation.width", f"{meta.id} makes images of {sizes} pixels (got {gen.width}x{gen.height})"))
    elif default and size != default and not explicit:
        errors.append(("generation", f"{meta.id} makes {default[0]}x{default[1]} images; without generation.width/"
                                     f"height the size is {gen.width}x{gen.height}: set generation: "
                                     f"{{width: {default[0]}, height: {default[1]}}}"))
    if errors:
        return errors
    labels = spec.labels
    if labels.mode != "none" and labels.boxes != "adaptor" and meta.blocks:
        recommended = recommended_label_resolutions(meta.extras, gen.width, gen.height)
        cross = labels.cross_resolutions if labels.cross_resolutions != "auto" else recommended.get("cross_resolutions")
        self_ = labels.self_resolution if labels.self_resolution != "auto" else recommended.get("self_resolution")
        have = meta.attention_resolutions(gen.width, gen.height)
        hint = f" (at {gen.width}x{gen.height} px)"
        if default and size != default:
            hint += f"; {meta.id} makes {default[0]}x{default[1]} images by default"
        for r in cross or []:
            if r not in have["cross"]:
                errors.append(("labels.cross_resolutions",
                               f"{meta.id} has no cross-attention at resolution {r}{hint}; available: {have['cross']}"))
                break
        if not have["cross"]:
            errors.append(("labels.mode", f"{meta.id} has no cross-attention layers; attention labels need them "
                                          "(use labels.mode: none)"))
        if labels.mode == "refined" and not errors:
            if self_ is None:  # auto, no recommendation: the engine takes the largest <= 32
                small = [r for r in have["self"] if r <= AUTO_MAX_RESOLUTION]
                if not small:
                    errors.append(("labels.self_resolution",
                                   f"{meta.id} has no self-attention resolution <= {AUTO_MAX_RESOLUTION}{hint}; "
                                   f"available: {have['self']}; set labels.self_resolution or use mode: daam"))
            elif self_ not in have["self"]:
                errors.append(("labels.self_resolution",
                               f"{meta.id} has no self-attention at resolution {self_}{hint}; available: {have['self']}"))
            elif (cells := meta.self_cells(gen.width, gen.height, self_)) and cells > MAX_SELF_CELLS:
                errors.append(("labels.self_resolution",
                               f"self-attention at resolution {self_} has {cells} cells{hint}; the limit is "
                               f"{MAX_SELF_CELLS}: use a smaller self resolution"))
    return errors


def model_side(extras: dict[str, Any], default: int = 32) -> int:
    """The image side a model makes by default (its dsgen.json `default_generation.width`): what
    benchmarks render and generate at, so a model is measured at its own size."""
    return int((extras.get("default_generation") or {}).get("width", default))
