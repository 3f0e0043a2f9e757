"""Inpainting on a normal UNet by masked blending of latents (as diffusers' inpaint pipelines do
for UNets without mask channels): after every denoising step the region to keep is replaced by
the source, noised to the next step's timestep; after the last step, by the source itself.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from worker.engine.generate import InitImages, encode_images, initial_noise, latent_size


def keep_at_latents(keep: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] keep-mask (1 = source) at the latent size: a latent is kept only when none of
    its pixels is to be re-drawn (the re-drawn region is grown, never cut)."""
    redraw = 1.0 - keep.float()
    if tuple(redraw.shape[-2:]) != tuple(latent_hw):
        redraw = F.adaptive_max_pool2d(redraw, latent_hw)
    return 1.0 - redraw


def masked_blend(model, scheduler, init: InitImages, seeds: list[int], gen, timesteps: torch.Tensor
                 ) -> Callable[[int, torch.Tensor], torch.Tensor]:
    hw = latent_size(model, gen)
    keep = keep_at_latents(init.keep, hw).to(model.device, model.dtype)
    x0 = encode_images(model, init.images)
    noise = initial_noise(seeds, (model.unet.config.in_channels, *hw)).to(model.device, model.dtype)

    def blend(i: int, latents: torch.Tensor) -> torch.Tensor:
        if i + 1 < len(timesteps):
            known = scheduler.add_noise(x0, noise, timesteps[i + 1:i + 2].repeat(len(seeds)))
        else:
            known = x0
        return keep * known + (1.0 - keep) * latents

    return blend
