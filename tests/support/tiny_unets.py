"""Tiny random UNet2DConditionModels shaped like SD 1.x, SD 2.x and SDXL (for fast CPU tests).

Each builder returns (unet, make_inputs) where make_inputs(batch, seed) gives the keyword
arguments of one UNet call (sample, timestep, encoder_hidden_states, added_cond_kwargs).
Latents are 16x16, so the maps are 16x16 (factor 1), 8x8 (factor 2) and 4x4 (factor 4).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import UNet2DConditionModel

LATENT_HW = (16, 16)
TOKENS = 7
KINDS = ("sd1", "sd2", "sdxl")


def _inputs(cross_dim: int, sdxl: bool) -> Callable[..., dict[str, Any]]:
    def make(batch: int, seed: int = 0, latent_hw: tuple[int, int] = LATENT_HW) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        kw: dict[str, Any] = {
            "sample": torch.randn(batch, 4, *latent_hw, generator=g),
            "timestep": torch.tensor(10),
            "encoder_hidden_states": torch.randn(batch, TOKENS, cross_dim, generator=g),
        }
        if sdxl:
            kw["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch, 8, generator=g),
                "time_ids": torch.randn(batch, 6, generator=g),
            }
        return kw

    return make


def tiny_sd1() -> tuple[UNet2DConditionModel, Callable[..., dict[str, Any]]]:
    # Conv proj_in, attention_head_dim as an int (which diffusers reads as the head count).
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    return unet.eval(), _inputs(16, sdxl=False)


def tiny_sd2() -> tuple[UNet2DConditionModel, Callable[..., dict[str, Any]]]:
    # Linear projections, per-block head dims, upcast attention like SD 2.x.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=8,
    )
    return unet.eval(), _inputs(24, sdxl=False)


def tiny_sdxl() -> tuple[UNet2DConditionModel, Callable[..., dict[str, Any]]]:
    # text_time added embedding, no attention in the first block, 2 transformer layers deeper.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 4 + 8,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    return unet.eval(), _inputs(32, sdxl=True)


BUILDERS = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl}


def build(kind: str):
    return BUILDERS[kind]()
