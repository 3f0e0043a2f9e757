"""Self-guidance (Epstein et al., 2023): place objects by energies on their words' attention maps.

For every object k of a sample (its word tokens and the box it is asked to fill), the
cross-attention maps of those tokens in the running UNet call (recorded with their graph by a
`StepMapRecorder`, conditional branch, on `resolutions`) are averaged over tokens and layers
into A_k (layers resized to the largest map), and scored:

- centroid: `sum(xy * A) / sum(A)` vs the box centre (L1, in fractions of the side);
- size: mean of the soft-thresholded map `sigmoid(s * (normalize(A) - 0.5))` vs the box's area;
- box (the paper's shape term with the box as the target shape): mean |soft map - box mask|.

The energy is their weighted sum; its gradient w.r.t. the latent shifts the noise prediction,
`eps += w * sigma_t * grad` (for v- or x0-predicting models the same shift of eps, converted),
inside a step window. This needs gradients through the UNet, so it is its own loop
(`guided_denoise`), not an option of the plain one: UNet weights are frozen during it (only
activations needed for d/d latent are kept), attention outside `resolutions` stays on SDPA,
and `checkpointing` trades time for memory. Steps outside the window run without a graph.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from shared.formats.spec import GenerationSpec
from worker.engine.attention import (
    AttentionControl,
    CaptureConfig,
    StepMapRecorder,
    begin_step,
    capture_controls,
    control_attention,
)
from worker.engine.generate import (
    GenerationOutput,
    StepCallback,
    check_size,
    decode,
    encode_prompt,
    latent_size,
    make_scheduler,
    prepare_latents,
)
from worker.engine.loading import LoadedModel

SOFT_SHARPNESS = 10.0


@dataclass(frozen=True)
class ObjectTarget:
    tokens: tuple[int, ...]  # the object's word tokens in its sample's prompt
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in 0..1

    @property
    def centroid(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class GuidanceOptions:
    weights: dict[str, float] = field(default_factory=lambda: {"centroid": 1.0, "size": 1.0, "box": 1.0})
    scale: float = 1.0
    step_window: tuple[float, float] = (0.0, 0.6)
    resolutions: tuple[int, ...] | None = None  # None: every cross-attention resolution
    checkpointing: bool = False


class WindowedMapRecorder(StepMapRecorder):
    """`StepMapRecorder` that only records (forcing explicit softmax) inside the guided window."""

    def __init__(self, resolutions: Sequence[int] | None, window: tuple[float, float]):
        super().__init__(resolutions)
        self.window = window
        self.on = True

    def begin_step(self, step: int, num_steps: int) -> None:
        super().begin_step(step, num_steps)
        self.on = in_window(step, num_steps, self.window)

    def active(self) -> bool:
        return self.on


def in_window(step: int, num_steps: int, window: tuple[float, float]) -> bool:
    return window[0] <= step / num_steps < window[1]


def object_maps(maps: list, targets: Sequence[Sequence[ObjectTarget]]) -> list[list[torch.Tensor]]:
    """Per sample, per object: A_k [h, w], the mean over its tokens and over the recorded layers."""
    if not maps:
        raise RuntimeError("self-guidance: no cross-attention map was recorded in this UNet call")
    size = max((site.hw for site, _ in maps), key=lambda hw: hw[0] * hw[1])
    out: list[list[torch.Tensor]] = [[None] * len(objs) for objs in targets]  # type: ignore[list-item]
    for site, probs in maps:  # probs [B, Q, T]
        for b, objs in enumerate(targets):
            for k, obj in enumerate(objs):
                a = probs[b, :, list(obj.tokens)].mean(-1).reshape(1, 1, *site.hw).float()
                if site.hw != size:
                    a = torch.nn.functional.interpolate(a, size=size, mode="bilinear", align_corners=False)
                out[b][k] = a[0, 0] if out[b][k] is None else out[b][k] + a[0, 0]
    return [[a / len(maps) for a in row] for row in out]


def centroid(a: torch.Tensor) -> torch.Tensor:
    """(x, y) in 0..1 of a map [h, w] (cell centres)."""
    h, w = a.shape
    p = a / a.sum().clamp_min(1e-12)
    ys = (torch.arange(h, dtype=a.dtype, device=a.device) + 0.5) / h
    xs = (torch.arange(w, dtype=a.dtype, device=a.device) + 0.5) / w
    return torch.stack([(p.sum(0) * xs).sum(), (p.sum(1) * ys).sum()])


def soft_shape(a: torch.Tensor, sharpness: float = SOFT_SHARPNESS) -> torch.Tensor:
    n = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
    return torch.sigmoid(sharpness * (n - 0.5))


def box_mask(box: tuple[float, float, float, float], hw: tuple[int, int], device=None) -> torch.Tensor:
    h, w = hw
    ys = (torch.arange(h, device=device) + 0.5) / h
    xs = (torch.arange(w, device=device) + 0.5) / w
    return (((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]).float()


def energy_terms(a: torch.Tensor, target: ObjectTarget) -> dict[str, torch.Tensor]:
    shape = soft_shape(a)
    c = centroid(a)
    goal = torch.tensor(target.centroid, dtype=a.dtype, device=a.device)
    return {
        "centroid": (c - goal).abs().sum(),
        "size": (shape.mean() - target.area).abs(),
        "box": (shape - box_mask(target.box, tuple(a.shape), a.device)).abs().mean(),
    }


def layout_energy(maps: list, targets: Sequence[Sequence[ObjectTarget]], weights: dict[str, float]) -> torch.Tensor:
    """The summed weighted energy of every object of every sample (a scalar with the maps' graph)."""
    total = None
    for row, objs in zip(object_maps(maps, targets), targets):
        for a, obj in zip(row, objs):
            terms = energy_terms(a, obj)
            e = sum(weights.get(k, 0.0) * v for k, v in terms.items())
            total = e if total is None else total + e
    return total


def _shift(output: torch.Tensor, delta_eps: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The model output that corresponds to eps + delta_eps at the same latent."""
    if prediction_type == "epsilon":
        return output + delta_eps
    if prediction_type == "v_prediction":
        return output + delta_eps / alpha.sqrt()
    if prediction_type == "sample":
        return output - (1 - alpha).sqrt() / alpha.sqrt() * delta_eps
    raise ValueError(f"self-guidance: unsupported prediction_type {prediction_type!r}")


@contextmanager
def _frozen(unet: torch.nn.Module, checkpointing: bool):
    """Weights without grad (only d/d latent is built); optional gradient checkpointing; restored."""
    flags = [p.requires_grad for p in unet.parameters()]
    was_ckpt = getattr(unet, "is_gradient_checkpointing", False)
    unet.requires_grad_(False)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        for p, f in zip(unet.parameters(), flags):
            p.requires_grad_(f)
        if checkpointing and not was_ckpt:
            unet.disable_gradient_checkpointing()


def guided_denoise(model: LoadedModel, scheduler, latents, timesteps, prompt, gen: GenerationSpec,
                   recorder: WindowedMapRecorder, targets, options: GuidanceOptions,
                   stepped: Sequence[AttentionControl] = (), on_step: StepCallback | None = None,
                   energies: list | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sampling loop with self-guidance inside the window. `energies` (if given) gets
    (step, energy) of every guided step."""
    unet = model.unet
    alphas = scheduler.alphas_cumprod.to(latents.device)
    ptype = scheduler.config.prediction_type
    n = len(timesteps)
    accepts_generator = "generator" in scheduler.step.__code__.co_varnames
    step_kwargs = {"generator": generator} if accepts_generator and generator is not None else {}
    for i, t in enumerate(timesteps):
        begin_step(stepped, i, n)
        guided = in_window(i, n, options.step_window) and options.scale > 0
        x = latents.detach().requires_grad_(guided)
        with torch.set_grad_enabled(guided):
            xin = torch.cat([x, x]) if prompt.guided else x
            xin = scheduler.scale_model_input(xin, t)
            out = unet(xin, t, encoder_hidden_states=prompt.states, encoder_attention_mask=prompt.mask,
                       added_cond_kwargs=prompt.added).sample
            grad = None
            if guided:
                energy = layout_energy(recorder.maps, targets, options.weights)
                grad = torch.autograd.grad(energy, x)[0]
                if energies is not None:
                    energies.append((i, float(energy.detach())))
        recorder.maps.clear()  # drop the graph
        with torch.no_grad():
            out = out.detach()
            if prompt.guided:
                u, c = out.chunk(2)
                out = u + gen.guidance_scale * (c - u)
            if grad is not None:
                a = alphas[t]
                out = _shift(out, options.scale * (1 - a).sqrt() * grad, a, ptype)
            latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
        if on_step is not None:
            on_step(i, n)
    return latents


def layout_images(model: LoadedModel, prompts: list[str], seeds: list[int], gen: GenerationSpec,
                  targets: Sequence[Sequence[ObjectTarget]], options: GuidanceOptions = GuidanceOptions(),
                  negative_prompt: str = "", capture: CaptureConfig | None = None,
                  on_step: StepCallback | None = None, energies: list | None = None,
                  controls: Sequence[AttentionControl] = ()) -> GenerationOutput:
    """generate() with self-guidance: encode the prompts, prepare the latents, guided denoise, decode.
    `controls`: more attention controls for every step (e.g. a box mask), composed before the recorder."""
    if len(prompts) != len(seeds) or len(prompts) != len(targets):
        raise ValueError("one seed and one list of object targets per prompt")
    check_size(model, gen)
    with torch.no_grad():
        prompt = encode_prompt(model, prompts, gen, negative_prompt)
    scheduler = make_scheduler(model, gen.scheduler)
    latents, timesteps = prepare_latents(model, scheduler, seeds, gen, None)
    latent_hw = latent_size(model, gen)
    recorder = WindowedMapRecorder(options.resolutions, options.step_window)
    chain: list[AttentionControl] = [*controls, recorder]
    store = None
    if capture is not None:
        store, rec = capture_controls(model.unet, capture)
        chain.append(rec)
    with _frozen(model.unet, options.checkpointing), control_attention(model.unet, chain, latent_hw, prompt.guided):
        latents = guided_denoise(model, scheduler, latents, timesteps, prompt, gen, recorder, targets, options,
                                 chain, on_step, energies, torch.Generator().manual_seed(seeds[0]))
    with torch.no_grad():
        images = decode(model, latents)
    return GenerationOutput(images, store, prompt.encoded, latent_hw)
