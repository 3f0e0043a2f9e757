"""The frozen UNet as the adaptor's backbone for real images (training, evaluation, benches).

A real image is encoded (VAE latents, or the pixels for pixel-space models), noised to the
adaptor's timestep, and passed once through the UNet with its caption; the block outputs of
that pass are the features — the same blocks, read the same way, as during generation.
"""
from __future__ import annotations

import torch

from worker.engine.features import FeatureConfig, capture_features
from worker.engine.generate import encode_images, make_scheduler
from worker.engine.loading import LoadedModel
from worker.engine.text import encode_prompts


def default_generation(model: LoadedModel) -> dict:
    return dict(model.extras.get("default_generation") or {})


def last_timestep(model: LoadedModel, steps: int | None = None, scheduler: str | None = None) -> int:
    """Timestep of the last denoising step of the model's default generation (or the given one)."""
    gen = default_generation(model)
    sched = make_scheduler(model, scheduler or gen.get("scheduler", "default"))
    sched.set_timesteps(steps or int(gen.get("steps", 30)))
    return int(sched.timesteps[-1])


def noise_seed(seed: int, image_id: int, epoch: int = 0) -> int:
    return (seed * 1_000_003 + image_id * 7_919 + epoch * 104_729) % (2**63 - 1)


@torch.no_grad()
def real_features(
    model: LoadedModel,
    images: torch.Tensor,
    captions: list[str],
    timestep: int,
    noise_seeds: list[int],
    blocks: tuple[str, ...] | None = None,
) -> dict[int, torch.Tensor]:
    """Images [B, 3, H, W] in [-1, 1] -> stride -> [B, C, h, w] block features (one UNet pass)."""
    x0 = encode_images(model, images)
    noise = torch.stack([
        torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in noise_seeds
    ]).to(x0.device, x0.dtype)
    a = model.scheduler.alphas_cumprod[timestep].to(x0.device, torch.float32)
    xt = (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(model.dtype)
    enc = encode_prompts(model, captions)
    states = enc.embeds.to(model.device, model.dtype)
    mask = None if enc.attention_mask is None else enc.attention_mask.to(model.device)
    added = None
    if enc.pooled is not None:
        h, w = images.shape[-2:]
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=model.dtype, device=model.device).repeat(len(captions), 1)
        added = {"text_embeds": enc.pooled.to(model.device, model.dtype), "time_ids": time_ids}
    t = torch.full((len(captions),), timestep, device=model.device, dtype=torch.long)
    with capture_features(model.unet, FeatureConfig(blocks=blocks)) as store:
        store.capture_next_call()
        model.unet(xt, t, encoder_hidden_states=states, encoder_attention_mask=mask, added_cond_kwargs=added)
    return store.levels()
