"""Model loading: `builtin:<name>`, a local diffusers folder, or a hub id — one code path.

Every source ends up as a local diffusers-layout folder (model_index.json + one subfolder per
component) that is loaded component by component, so the shipped builtin models exercise
exactly the code that loads SD 1.x / 2.x / SDXL checkpoints on users' machines.
Models are cached per process (a Celery worker child loads each model once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from shared.formats.model_meta import BuiltinNameError, builtin_name
from shared.formats.records import ModelInfo
from shared.formats.spec import ModelRef, SpecError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
EXTRAS_FILE = "dsgen.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(SpecError):
    """The model reference cannot be resolved or loaded; the message says what to do."""

    def __init__(self, message: str):
        super().__init__(message, field="model.id")


@dataclass
class LoadedModel:
    """The components the engine drives, on one device, in one dtype."""

    info: ModelInfo
    path: Path
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any | None
    text_encoder_2: Any | None
    tokenizer_2: Any | None
    device: torch.device
    dtype: torch.dtype
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.text_encoder_2 is not None or self.unet.config.get("addition_embed_type") == "text_time":
            return "sdxl"
        return "pixel" if self.vae is None else "sd"

    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_side(self) -> int:
        """The image side the UNet was configured for (its sample size in pixels): 512 for SD 1.x,
        768 for SD 2.x, 1024 for SDXL, as diffusers' pipelines default to."""
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else min(size)) * self.vae_scale


def builtin_root() -> Path:
    return Path(str(resources.files("worker.engine") / "builtin"))


def builtin_names() -> list[str]:
    root = builtin_root()
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def resolve_model_path(ref: ModelRef) -> Path:
    """builtin:<name> -> package folder; an existing folder -> itself; else a hub snapshot."""
    mid = ref.id
    if mid.startswith(BUILTIN_PREFIX):
        try:
            name = builtin_name(mid)  # never a path: `builtin:../x` stays inside the package
        except BuiltinNameError as err:
            raise ModelLoadError(f"{err}; builtin models: {', '.join(BUILTIN_PREFIX + n for n in builtin_names())}") from None
        path = builtin_root() / name
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"unknown builtin model {mid!r}; builtin models: {', '.join(BUILTIN_PREFIX + n for n in builtin_names())}")
        return path
    local = Path(mid).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(f"{mid!r} is a folder but not a diffusers model (no model_index.json)")
        return local
    if mid.count("/") != 1 or mid.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model {mid!r} is neither a builtin model ({', '.join(BUILTIN_PREFIX + n for n in builtin_names())}), "
            "an existing local folder, nor a hub id of the form 'org/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(mid, revision=ref.revision, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all mean "cannot get it here"
        raise ModelLoadError(f"could not fetch {mid!r} from the hub ({type(err).__name__}); "
                             "download it where you are online and pass the local folder") from None


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("model.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("model.device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32  # half precision on CPU is slow and lossy


def content_revision(path: Path) -> str:
    """A short content hash of the configs and weights (first MiB + size of each file).

    Recorded with every sample so that a dataset says which weights made it, also for
    builtin and local models that have no hub revision.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".txt", ".bin"}):
        h.update(str(f.relative_to(path)).encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _component_class(index: dict[str, Any], name: str) -> tuple[str, str] | None:
    entry = index.get(name)
    if not entry or entry[0] is None or entry[1] is None:
        return None
    return entry[0], entry[1]


def _load_component(path: Path, name: str, library_cls: tuple[str, str], dtype: torch.dtype) -> Any:
    library, cls_name = library_cls
    module = __import__(library)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ModelLoadError(f"{path}: component {name!r} needs {library}.{cls_name}, which this {library} lacks")
    if name.startswith("tokenizer"):
        from transformers import AutoTokenizer

        # The fast tokenizer gives character offsets, which map class words to token indexes.
        return AutoTokenizer.from_pretrained(path / name, use_fast=True)
    if name == "scheduler":
        return cls.from_pretrained(path / name)
    kwargs: dict[str, Any] = {"torch_dtype": dtype} if library == "diffusers" else {"dtype": dtype}
    return cls.from_pretrained(path / name, **kwargs)


_cache: dict[tuple[str, str | None, str, str], LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model(ref: ModelRef | str) -> LoadedModel:
    """Load (or return the cached) model for `ref`, ready for inference."""
    if isinstance(ref, str):
        ref = ModelRef(id=ref)
    device = pick_device(ref.device)
    dtype = pick_dtype(ref.dtype, device)
    key = (ref.id, ref.revision, str(device), str(dtype))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        model = _load_uncached(ref, device, dtype)
        _cache.clear()  # one model per process at a time: GPU memory is the scarce resource
        _cache[key] = model
        return model


def _quiet_library_progress() -> None:
    # Their per-file "Loading weights" bars would interleave with dsgen's own progress bar.
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _load_uncached(ref: ModelRef, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    _quiet_library_progress()
    path = resolve_model_path(ref)
    index = json.loads((path / "model_index.json").read_text())
    extras = json.loads((path / EXTRAS_FILE).read_text()) if (path / EXTRAS_FILE).is_file() else {}
    required = ("unet", "text_encoder", "tokenizer", "scheduler")
    missing = [n for n in required if _component_class(index, n) is None]
    if missing:
        raise ModelLoadError(f"{ref.id}: model_index.json lacks {', '.join(missing)}; dsgen needs a UNet text-to-image model")
    parts: dict[str, Any] = {}
    for name in ("unet", "text_encoder", "tokenizer", "scheduler", "vae", "text_encoder_2", "tokenizer_2"):
        spec = _component_class(index, name)
        if spec is not None:
            parts[name] = _load_component(path, name, spec, dtype)
    for name in ("unet", "text_encoder", "vae", "text_encoder_2"):
        if name in parts:
            parts[name].to(device).eval().requires_grad_(False)
    revision = ref.revision or content_revision(path)
    log.info("loaded %s (%s) on %s as %s", ref.id, revision, device, dtype)
    return LoadedModel(
        info=ModelInfo(id=ref.id, revision=revision),
        path=path,
        unet=parts["unet"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler=parts["scheduler"],
        vae=parts.get("vae"),
        text_encoder_2=parts.get("text_encoder_2"),
        tokenizer_2=parts.get("tokenizer_2"),
        device=device,
        dtype=dtype,
        extras=extras,
    )
