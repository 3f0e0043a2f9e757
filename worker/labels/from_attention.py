"""One call per generated image: captured attention -> semantic map, instances, annotations.

The generation code (1) builds a `CaptureConfig` with `capture_config(unet, spec, latent_hw,
guidance)`, (2) runs the denoising loop inside `capture_attention(unet, config)`, calling
`store.begin_step(i, n)` before each UNet call, then (3) calls `label_image` for each image of
the batch. The resolutions used are the ones the store captured (its config), so "auto" is
resolved exactly once, in `capture_config`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shared.formats.records import IGNORE, Annotation
from shared.formats.spec import LabelSpec
from worker.engine.attention import AttentionStore, CaptureConfig, available_resolutions
from worker.labels import refine
from worker.labels.instances import extract_instances

# Dataset Diffusion reads cross-attention at 16 and self-attention at 32 for SD at 512 px;
# larger maps cost N^2 memory for self-attention and add little for cross-attention.
AUTO_MAX_RESOLUTION = 32


@dataclass
class LabelResult:
    semantic: np.ndarray  # uint8 [H, W]: 0 background, category ids, 255 ignore
    instances: np.ndarray  # uint16 [H, W]: 0 none, else Annotation.instance_id
    annotations: list[Annotation]
    quality: dict[str, Any] = field(default_factory=dict)


def resolve_resolutions(
    unet: torch.nn.Module, latent_hw: tuple[int, int], spec: LabelSpec
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(cross resolutions, self resolutions) for a UNet and latent size.

    auto cross: those at latent/4 and latent/2 (shorter side) that have cross-attention and are
    <= 32; if none, the largest cross resolution <= 32 (or the smallest there is).
    auto self: the largest self-attention resolution <= 32 that is >= every cross resolution;
    if none, the largest <= 32. Self-attention is only resolved for mode "refined".
    Raises ValueError listing what exists when a requested resolution does not.
    """
    avail = available_resolutions(unet, latent_hw)
    if not avail["cross"]:
        raise ValueError("this UNet has no cross-attention layers; attention labels need them")
    short = min(latent_hw)
    if spec.cross_resolutions == "auto":
        cand = [r for r in (short // 4, short // 2) if r in avail["cross"] and r <= AUTO_MAX_RESOLUTION]
        if not cand:
            small = [r for r in avail["cross"] if r <= AUTO_MAX_RESOLUTION]
            cand = [max(small)] if small else [min(avail["cross"])]
        cross = tuple(sorted(set(cand)))
    else:
        cross = tuple(sorted(set(spec.cross_resolutions)))
        _require(cross, avail["cross"], "cross", "labels.cross_resolutions", latent_hw)

    if spec.mode != "refined":
        return cross, ()
    if not avail["self"]:
        raise ValueError("this UNet has no self-attention layers; use labels.mode: daam")
    if spec.self_resolution == "auto":
        small = [r for r in avail["self"] if r <= AUTO_MAX_RESOLUTION]
        if not small:
            raise ValueError(
                f"no self-attention resolution <= {AUTO_MAX_RESOLUTION} for latent {latent_hw}; "
                f"available: {list(avail['self'])}; set labels.self_resolution or use mode: daam"
            )
        covering = [r for r in small if r >= max(cross)]
        self_res = (max(covering) if covering else max(small),)
    else:
        self_res = (spec.self_resolution,)
        _require(self_res, avail["self"], "self", "labels.self_resolution", latent_hw)
    return cross, self_res


def _require(asked: Sequence[int], have: Sequence[int], kind: str, field_name: str, latent_hw) -> None:
    missing = [r for r in asked if r not in have]
    if missing:
        raise ValueError(
            f"{field_name}: no {kind}-attention at resolution {missing[0]} for a "
            f"{latent_hw[0]}x{latent_hw[1]} latent; available {kind} resolutions: {list(have)}"
        )


def capture_config(
    unet: torch.nn.Module, spec: LabelSpec, latent_hw: tuple[int, int], guidance: bool
) -> CaptureConfig | None:
    """The CaptureConfig for a label spec, or None for mode "none" (nothing to capture)."""
    if spec.mode == "none":
        return None
    cross, self_res = resolve_resolutions(unet, latent_hw, spec)
    return CaptureConfig(
        latent_hw=tuple(latent_hw),
        cross_resolutions=cross,
        self_resolutions=self_res,
        step_window=tuple(spec.step_window),
        guidance=guidance,
    )


def _snap_to_edges(scores: torch.Tensor, image: np.ndarray | None, spec: LabelSpec) -> torch.Tensor:
    if spec.edges != "guided" or image is None:
        return scores
    hw = tuple(scores.shape[-2:])
    radius = refine.auto_radius(hw) if spec.edge_radius == "auto" else int(spec.edge_radius)
    return refine.guided_filter(scores.cpu(), image, radius).to(scores.device)


def label_image(
    store: AttentionStore,
    batch_index: int,
    token_groups: list[list[int]],
    category_ids: list[int],
    category_names: list[str],
    spec: LabelSpec,
    image_hw: tuple[int, int],
    image: np.ndarray | None = None,
) -> LabelResult:
    """Labels for image `batch_index` of the batch the store captured.

    `token_groups[k]`: token indexes of class k in the prompt, already offset for the start
    token; classes listed here are the ones the prompt names. `image` (H x W x 3) is the
    guide of `labels.edges: guided`; without it the score maps are used as they are.
    """
    if spec.mode == "none":
        raise ValueError("labels.mode is 'none': there is nothing to label")
    if not len(token_groups) == len(category_ids) == len(category_names):
        raise ValueError("token_groups, category_ids and category_names must have the same length")
    cfg = store.config
    if spec.mode == "refined" and not cfg.self_resolutions:
        raise ValueError("mode 'refined' needs self-attention; the store captured none")

    if spec.mode == "refined":
        grid_res = cfg.self_resolutions[0]
    else:
        grid_res = max(cfg.cross_resolutions)  # DAAM: the finest captured cross map
    grid_hw = store.map_hw(grid_res)

    cross = [(store.cross(r)[batch_index], store.map_hw(r)) for r in cfg.cross_resolutions]
    class_maps = refine.class_cross_maps(cross, token_groups, grid_hw)  # [C, h, w]
    peaks = refine.peak_attention(class_maps)

    if not category_ids:
        semantic_t = torch.zeros(image_hw, dtype=torch.uint8)
        best_t = torch.zeros(image_hw)
    elif spec.mode == "refined":
        s = store.self_attention(grid_res)[batch_index]
        scores = _snap_to_edges(refine.refined_scores(class_maps, s, spec.tau, image_hw), image, spec)
        semantic_t, best_t = refine.label_with_ignore_band(
            scores, category_ids, spec.class_threshold, spec.uncertain_threshold
        )
    else:
        scores = _snap_to_edges(refine.daam_scores(class_maps, image_hw), image, spec)
        semantic_t, best_t = refine.label_by_threshold(scores, category_ids, spec.daam_threshold)

    inst = extract_instances(
        semantic_t.cpu().numpy(),
        category_ids,
        category_names,
        min_component_area=spec.min_component_area,
        scores=best_t.float().cpu().numpy(),
    )
    total = float(inst.semantic.size)
    quality = {
        "uncertain_fraction": float((inst.semantic == IGNORE).sum()) / total,
        "peak_attention": {n: float(p) for n, p in zip(category_names, peaks)},
        "class_pixel_fraction": {
            n: float((inst.semantic == c).sum()) / total for n, c in zip(category_names, category_ids)
        },
    }
    return LabelResult(inst.semantic, inst.instances, inst.annotations, quality)
