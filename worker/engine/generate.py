"""The denoising loop: a batch of prompts + seeds -> images (+ captured attention).

Written on diffusers' components (scheduler, UNet, text encoders, VAE) rather than on a
pipeline class, because the same loop must drive latent models (SD 1.x/2.x/SDXL) and the
pixel-space builtin models (which have no VAE and no pipeline class). It reads as diffusers'
pipelines do: `encode_prompt`, `prepare_latents`, `denoise`, `decode`. Attention is recorded
and steered through attention controls (`worker.engine.attention`, installed with
`set_attn_processor`), block features for the detection adaptor through `capture_features`
(forward hooks), a ControlNet through the UNet's additional residuals; never by patching
diffusers.

Image-to-image (`init`): the loop starts from the real images noised to the timestep that
`strength` selects (as diffusers' img2img pipelines do) and runs the remaining steps.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import diffusers
import numpy as np
import torch
from PIL import Image

from shared.formats.spec import GenerationSpec, SpecError
from worker.engine.attention import (
    AttentionControl,
    AttentionStore,
    CaptureConfig,
    begin_step,
    capture_controls,
    control_attention,
)
from worker.engine.features import FeatureConfig, capture_features
from worker.engine.loading import LoadedModel
from worker.engine.text import EncodedPrompts, encode_prompts

SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "lcm": "LCMScheduler",
}
StepCallback = Callable[[int, int], None]


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    store: AttentionStore | None
    encoded: EncodedPrompts
    latent_hw: tuple[int, int]
    features: dict[int, torch.Tensor] | None = None  # stride -> [B, C, h, w] (FeatureConfig)
    detections: list | None = None  # per image, filled by the session's adaptor (worker.adaptor)


@dataclass
class InitImages:
    """Image-to-image start: images [B, 3, H, W] in [-1, 1] at the generation size."""

    images: torch.Tensor
    strength: float  # fraction of the schedule re-run: 1.0 = from pure noise
    # inpainting: [B, 1, H, W], 1 = keep the source there (`worker.engine.inpaint`); None = re-draw all
    keep: torch.Tensor | None = None

    def start_step(self, steps: int) -> int:
        """Index of the first denoising step run (at least one step is always run)."""
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        return steps - max(1, min(steps, int(round(steps * self.strength))))


def make_scheduler(model: LoadedModel, name: str):
    """A fresh scheduler per batch: schedulers keep per-run state (step index, history)."""
    if name == "default":
        return model.scheduler.__class__.from_config(model.scheduler.config)
    return getattr(diffusers, SCHEDULER_CLASSES[name]).from_config(model.scheduler.config)


def size_multiple(model: LoadedModel) -> int:
    """Image sides must be multiples of this: VAE factor x the UNet's downsampling."""
    return model.vae_scale * 2 ** (len(model.unet.config.block_out_channels) - 1)


def check_size(model: LoadedModel, gen: GenerationSpec) -> None:
    m = size_multiple(model)
    for field in ("width", "height"):
        if getattr(gen, field) % m:
            raise SpecError(f"generation.{field}: must be a multiple of {m} for {model.info.id}", field=f"generation.{field}")


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One CPU generator per sample: a sample's noise never depends on its batch-mates."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def _added_cond(model: LoadedModel, pooled: torch.Tensor, gen: GenerationSpec) -> dict[str, torch.Tensor]:
    # SDXL micro-conditioning: original size, crop top-left, target size.
    time_ids = torch.tensor([[gen.height, gen.width, 0, 0, gen.height, gen.width]], dtype=pooled.dtype)
    return {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device).repeat(pooled.shape[0], 1)}


def _uncond(model: LoadedModel, negative: str, batch: int, cond: EncodedPrompts) -> EncodedPrompts:
    zeros = model.extras.get("force_zeros_for_empty_prompt", model.kind == "sdxl")
    if not negative and zeros:
        return EncodedPrompts(
            torch.zeros_like(cond.embeds),
            None if cond.attention_mask is None else torch.ones_like(cond.attention_mask),
            None if cond.pooled is None else torch.zeros_like(cond.pooled),
            cond.offsets,
            cond.input_ids,
        )
    return encode_prompts(model, [negative] * batch)


def decode(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    if model.vae is not None:
        cfg = model.vae.config
        latents = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        x = model.vae.decode(latents.to(model.vae.dtype)).sample
    else:
        x = latents
    x = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


@torch.no_grad()
def encode_images(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> what the UNet denoises (VAE latents, or the pixels)."""
    x = images.to(model.device, model.dtype)
    if model.vae is None:
        return x
    cfg = model.vae.config
    latents = model.vae.encode(x.to(model.vae.dtype)).latent_dist.mean
    return ((latents - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor).to(model.dtype)


@dataclass
class PromptStates:
    """What the UNet is conditioned on: text states (+ mask, SDXL added conditions), CFG layout."""

    encoded: EncodedPrompts  # the conditional prompts (token offsets for labels)
    states: torch.Tensor  # [B or 2B, T, D]
    mask: torch.Tensor | None
    added: dict[str, torch.Tensor] | None
    guided: bool  # batch layout [uncond, cond]


@dataclass
class ControlNetInput:
    """A ControlNet and its conditioning images [B, 3, H, W] in [0, 1] at the generation size."""

    model: torch.nn.Module
    images: torch.Tensor
    scale: float = 1.0


def encode_prompt(model: LoadedModel, prompts: list[str], gen: GenerationSpec, negative_prompt: str = "") -> PromptStates:
    cond = encode_prompts(model, prompts)
    guided = gen.guidance_scale > 1.0
    if guided:
        uncond = _uncond(model, negative_prompt, len(prompts), cond)
        states = torch.cat([uncond.embeds, cond.embeds])
        mask = None if cond.attention_mask is None else torch.cat([uncond.attention_mask, cond.attention_mask])
        pooled = None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled])
    else:
        states, mask, pooled = cond.embeds, cond.attention_mask, cond.pooled
    added = None if pooled is None else _added_cond(model, pooled.to(model.device, model.dtype), gen)
    return PromptStates(
        cond, states.to(model.device, model.dtype), None if mask is None else mask.to(model.device), added, guided
    )


def latent_size(model: LoadedModel, gen: GenerationSpec) -> tuple[int, int]:
    return gen.height // model.vae_scale, gen.width // model.vae_scale


def prepare_latents(
    model: LoadedModel, scheduler, seeds: list[int], gen: GenerationSpec, init: InitImages | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, timesteps to run): seeded noise, or real images noised to the start step."""
    scheduler.set_timesteps(gen.steps, device=model.device)
    timesteps = scheduler.timesteps
    shape = (model.unet.config.in_channels, *latent_size(model, gen))
    noise = initial_noise(seeds, shape)
    if init is None:
        return (noise * scheduler.init_noise_sigma).to(model.device, model.dtype), timesteps
    start = init.start_step(len(timesteps)) * scheduler.order
    timesteps = timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    x0 = encode_images(model, init.images)
    latents = scheduler.add_noise(x0, noise.to(model.device, model.dtype), timesteps[:1].repeat(len(seeds)))
    return latents.to(model.device, model.dtype), timesteps


def denoise(
    model: LoadedModel,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt: PromptStates,
    gen: GenerationSpec,
    generator: torch.Generator,
    stepped: Sequence[AttentionControl] = (),
    controlnet: ControlNetInput | None = None,
    on_step: StepCallback | None = None,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The sampling loop. `stepped` (attention controls, feature capture) hear `begin_step`
    before each UNet call; `after_step(i, latents)` may replace the latents after step i
    (Shape-Guided editing copies the background from its inverted trajectory there)."""
    unet = model.unet
    cond_images = None
    if controlnet is not None:
        cond_images = controlnet.images.to(model.device, model.dtype)
        cond_images = torch.cat([cond_images, cond_images]) if prompt.guided else cond_images
    accepts_generator = "generator" in scheduler.step.__code__.co_varnames
    for i, t in enumerate(timesteps):
        begin_step(stepped, i, len(timesteps))
        x = torch.cat([latents, latents]) if prompt.guided else latents
        x = scheduler.scale_model_input(x, t)
        residuals = {}
        if controlnet is not None:
            down, mid = controlnet.model(
                x, t, encoder_hidden_states=prompt.states, controlnet_cond=cond_images,
                conditioning_scale=controlnet.scale, added_cond_kwargs=prompt.added, return_dict=False,
            )
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        eps = unet(
            x, t, encoder_hidden_states=prompt.states, encoder_attention_mask=prompt.mask,
            added_cond_kwargs=prompt.added, **residuals,
        ).sample
        if prompt.guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + gen.guidance_scale * (eps_c - eps_u)
        kwargs = {"generator": generator} if accepts_generator else {}
        latents = scheduler.step(eps, t, latents, **kwargs).prev_sample
        if after_step is not None:
            latents = after_step(i, latents)
        if on_step is not None:
            on_step(i, len(timesteps))
    return latents


@torch.no_grad()
def generate(
    model: LoadedModel,
    prompts: list[str],
    seeds: list[int],
    gen: GenerationSpec,
    negative_prompt: str = "",
    capture: CaptureConfig | None = None,
    on_step: StepCallback | None = None,
    features: FeatureConfig | None = None,
    init: InitImages | None = None,
    controls: Sequence[AttentionControl] = (),
    controlnet: ControlNetInput | None = None,
) -> GenerationOutput:
    """Encode the prompts, prepare the latents, denoise (with attention controls), decode."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    check_size(model, gen)
    prompt = encode_prompt(model, prompts, gen, negative_prompt)
    scheduler = make_scheduler(model, gen.scheduler)
    latents, timesteps = prepare_latents(model, scheduler, seeds, gen, init)
    latent_hw = latent_size(model, gen)
    blend = None
    if init is not None and init.keep is not None:
        from worker.engine.inpaint import masked_blend

        blend = masked_blend(model, scheduler, init, seeds, gen, timesteps)
    # Stochastic schedulers (euler_a, ddpm) also draw noise at each step: seeded from the
    # batch's first sample, so a re-run of the same aligned batch is identical.
    step_generator = torch.Generator().manual_seed(seeds[0])

    store, chain = None, list(controls)
    if capture is not None:
        store, recorder = capture_controls(model.unet, capture)
        chain.append(recorder)  # after the steering controls: labels see the steered maps
    if features is not None and features.guidance != prompt.guided:  # the batch layout decides, not the caller
        features = dataclasses.replace(features, guidance=prompt.guided)
    hooking = capture_features(model.unet, features) if features is not None else nullcontext(None)
    controlling = control_attention(model.unet, chain, latent_hw, prompt.guided) if chain else nullcontext()
    with controlling, hooking as feats:
        stepped = [*chain, feats] if feats is not None else chain
        latents = denoise(model, scheduler, latents, timesteps, prompt, gen, step_generator, stepped, controlnet, on_step,
                          after_step=blend)
    levels = feats.levels() if feats is not None else None
    return GenerationOutput(decode(model, latents), store, prompt.encoded, latent_hw, levels)

