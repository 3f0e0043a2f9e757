"""The adaptor folder: `adaptor.json` (config) + `adaptor.safetensors` (weights).

An adaptor reads one UNet's features: it is only used with the base model (id and revision)
it was trained for, and the check names both when they differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shared.formats.model_meta import BuiltinNameError, builtin_name
from shared.formats.records import ModelInfo
from shared.formats.spec import SpecError
from worker.adaptor.model import AdaptorConfig, DetectionAdaptor
from worker.engine.features import feature_layout

CONFIG_FILE = "adaptor.json"
WEIGHTS_FILE = "adaptor.safetensors"
BUILTIN_PREFIX = "builtin:"


class AdaptorError(SpecError):
    """The adaptor cannot be used for this job; the message says why and what to do."""

    def __init__(self, message: str):
        super().__init__(message, field="labels.adaptor")


def builtin_adaptors() -> list[str]:
    from worker.engine.loading import builtin_root

    return sorted(BUILTIN_PREFIX + p.name for p in builtin_root().iterdir() if (p / CONFIG_FILE).is_file())


def resolve_adaptor_path(ref: str) -> Path:
    """`builtin:<name>` -> the package folder; otherwise a local folder holding adaptor.json."""
    from worker.engine.loading import builtin_root

    if ref.startswith(BUILTIN_PREFIX):
        try:
            name = builtin_name(ref)  # never a path: `builtin:../x` stays inside the package
        except BuiltinNameError as err:
            raise AdaptorError(f"{err}; builtin adaptors: {', '.join(builtin_adaptors()) or 'none'}") from None
        path = builtin_root() / name
        if not (path / CONFIG_FILE).is_file():
            raise AdaptorError(f"unknown builtin adaptor {ref!r}; builtin adaptors: {', '.join(builtin_adaptors()) or 'none'}")
        return path
    path = Path(ref).expanduser()
    if not (path / CONFIG_FILE).is_file():
        raise AdaptorError(f"{ref!r} is not an adaptor folder (no {CONFIG_FILE}); train one with `dsgen adaptor train`")
    return path


def default_adaptor_for(model_id: str) -> str | None:
    """The shipped adaptor of a builtin model (`builtin:<name>-adaptor`), if there is one."""
    if not model_id.startswith(BUILTIN_PREFIX):
        return None
    ref = f"{model_id}-adaptor"
    return ref if ref in builtin_adaptors() else None


def save_adaptor(adaptor: DetectionAdaptor, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in adaptor.state_dict().items()}
    tmp_w, tmp_c = out / f".{WEIGHTS_FILE}.tmp", out / f".{CONFIG_FILE}.tmp"
    save_file(state, str(tmp_w), metadata={"format": adaptor.config.format})
    tmp_c.write_text(json.dumps(adaptor.config.to_json(), indent=1) + "\n")
    tmp_w.replace(out / WEIGHTS_FILE)
    tmp_c.replace(out / CONFIG_FILE)
    return out


def load_adaptor(ref: str | Path, device: torch.device | str = "cpu") -> DetectionAdaptor:
    path = resolve_adaptor_path(str(ref))
    try:
        config = AdaptorConfig.from_json(json.loads((path / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as err:
        raise AdaptorError(f"{path / CONFIG_FILE}: {err}") from None
    adaptor = DetectionAdaptor(config)
    adaptor.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return adaptor.to(device).eval().requires_grad_(False)


def check_adaptor_fits(adaptor: DetectionAdaptor, info: ModelInfo, unet: torch.nn.Module, where: str = "") -> None:
    """Refuse an adaptor trained for another base model (id or revision) or UNet layout."""
    base = adaptor.config.base_model
    if base.get("id") != info.id or base.get("revision") != info.revision:
        raise AdaptorError(
            f"adaptor{' ' + where if where else ''} was trained for model {base.get('id')!r} "
            f"(revision {base.get('revision')!r}) but the job uses {info.id!r} (revision {info.revision!r}); "
            f"an adaptor reads one model's features only: train one for this model with "
            f"`dsgen adaptor train --model {info.id} ...`"
        )
    have = {(b.name, b.stride, b.channels) for b in feature_layout(unet)}
    need = [(b.name, b.stride, b.channels) for b in adaptor.config.block_features]
    if any(b not in have for b in need):
        raise AdaptorError(f"adaptor{' ' + where if where else ''} reads UNet blocks {need} that this UNet does not have")
