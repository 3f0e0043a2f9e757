"""Tiny adaptors for tests: random heads on a model's real feature layout."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from worker.adaptor.io import save_adaptor
from worker.adaptor.model import AdaptorConfig, DetectionAdaptor
from worker.engine.features import feature_layout


def tiny_adaptor(model, classes, seed: int = 0, heat_bias: float = 0.0, class_agnostic: bool = False,
                 base: dict | None = None) -> DetectionAdaptor:
    """A random adaptor for `model`; `heat_bias` 0 gives centre scores around 0.5 (boxes found)."""
    cfg = AdaptorConfig(
        base_model=base or {"id": model.info.id, "revision": model.info.revision},
        blocks=[asdict(b) for b in feature_layout(model.unet)],
        timestep=1,
        classes=list(classes),
        class_agnostic=class_agnostic,
        pixel_stride=model.vae_scale,
        width=16,
        head_convs=1,
    )
    torch.manual_seed(seed)
    adaptor = DetectionAdaptor(cfg)
    torch.nn.init.constant_(adaptor.heat.bias, heat_bias)
    torch.nn.init.normal_(adaptor.box.weight, std=0.05)
    torch.nn.init.constant_(adaptor.box.bias, 1.0)  # boxes about e cells wide
    return adaptor.eval()


def saved_tiny_adaptor(model, classes, path: Path, **kw) -> Path:
    return save_adaptor(tiny_adaptor(model, classes, **kw), path)
