"""A concept's second step: the UNet's cross-attention key/value projections fine-tuned on the
concept's images (Custom Diffusion, Kumari et al. 2023), after its tokens were learned (pivotal
tuning, as DreamBooth on top of textual inversion).

Why: a token's embedding can only point at what the UNet already draws. A colour or a texture the
model never drew is out of reach of textual inversion (measured on shapes-v2: a learned "<cyan>"
draws teal at best); letting the projections that carry words into the picture move reaches it.
Only those (a few percent of the UNet) train by default, so a concept stays a small file;
`unet_params="all"` trains the whole UNet (DreamBooth), for small models: measured on shapes-v2
it draws the held-out colour cleanly where the projections alone leave a teal halo.

Prior preservation (DreamBooth): half of every batch is the base model's own pictures of the
tokens' init words ("a photo of a star"), generated once per run, so the words the concept grew
from keep drawing what they drew. With the concept's masks (`masked`), its tokens attend only
inside each image's object, as in the textual-inversion step.

Resumable: `<out>/unet-checkpoint.pt` (weights, optimiser, step) every `checkpoint_every` steps;
the prior pictures are kept in `<out>/prior.pt`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from worker.engine.concepts import ConceptError, unet_param_names

UNET_CHECKPOINT = "unet-checkpoint.pt"
PRIOR_FILE = "prior.pt"
# LearnConfig fields of this step: its checkpoint holds them; the textual-inversion one does not compare them
UNET_SETTINGS = ("unet_steps", "unet_lr", "unet_params", "prior_images")


def prior_images(base_model, prompts: list[str], side: int, seed: int, out: Path) -> torch.Tensor:
    """The base model's own pictures of `prompts` (one each), in the UNet's space; cached in `out`."""
    from shared.formats.spec import GenerationSpec
    from worker.engine.generate import encode_images, generate

    path = out / PRIOR_FILE
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached["prompts"] == prompts and cached["side"] == side and cached["seed"] == seed:
            return cached["x0"]
    defaults = base_model.extras.get("default_generation", {})
    gen = GenerationSpec(width=side, height=side, steps=int(defaults.get("steps", 30)),
                         guidance_scale=float(defaults.get("guidance_scale", 7.5)), batch_size=4)
    x0 = []
    for start in range(0, len(prompts), gen.batch_size):
        chunk = prompts[start:start + gen.batch_size]
        images = generate(base_model, chunk, [seed * 7919 + start + k for k in range(len(chunk))], gen).images
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
                         for im in images]) / 127.5 - 1.0
        with torch.no_grad():
            x0.append(encode_images(base_model, x).float().cpu())
    x0_all = torch.cat(x0)
    tmp = path.with_suffix(".tmp")
    torch.save({"prompts": prompts, "side": side, "seed": seed, "x0": x0_all}, tmp)
    os.replace(tmp, path)
    return x0_all


def finetune_concept_unet(
    model,
    cfg,
    x0_concept: torch.Tensor,
    masks: torch.Tensor | None,
    prompts_for: Callable[[torch.Generator, int], list[str]],
    x0_prior: torch.Tensor | None,
    prior_prompts: list[str],
    loss_fn: Callable[..., torch.Tensor],
    out: Path,
    resume: bool,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train `cfg.unet_params` of `model.unet` (the cross-attention k/v, or all), in place: the
    caller gives a model whose UNet is a private copy (`private_unet`) with its own tensors for
    them. Returns the trained weights by parameter name and the losses."""
    from diffusers import DDPMScheduler

    names = unet_param_names(model.unet, cfg.unet_params)
    if not names:
        raise ConceptError("--unet-params: this UNet has no cross-attention key/value projections; use all",
                           field="--unet-params")
    unet = model.unet
    unet.requires_grad_(False)
    params = dict(unet.named_parameters())
    trained = [params[n] for n in names]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.unet_lr, weight_decay=0.0)
    step, losses = 0, []
    ckpt_path = out / UNET_CHECKPOINT
    settings = {k: getattr(cfg, k) for k in UNET_SETTINGS}
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("settings") != settings:
            raise ConceptError(f"--out: {out} holds a UNet fine-tune with other settings ({ckpt.get('settings')}); "
                               "use another --out or delete it", field="--out")
        with torch.no_grad():
            for n in names:
                params[n].copy_(ckpt["weights"][n].to(params[n].dtype))
        opt.load_state_dict(ckpt["optimizer"])
        step, losses = ckpt["step"], ckpt["losses"]
    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    n_train = scheduler.config.num_train_timesteps
    half = cfg.batch_size if x0_prior is None else max(1, cfg.batch_size // 2)
    unet.train()
    while step < cfg.unet_steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_009 + step)
        idx = torch.randint(len(x0_concept), (half,), generator=g)
        x0, mb = x0_concept[idx], (masks[idx] if masks is not None else None)
        if cfg.flips:
            flip = torch.rand(half, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            if mb is not None:
                mb = torch.where(flip[:, None, None], mb.flip(-1), mb)
        prompts = prompts_for(g, half)
        if x0_prior is not None:  # the prior half names none of the tokens: its zero masks restrict nothing
            pidx = torch.randint(len(x0_prior), (cfg.batch_size - half,), generator=g)
            x0 = torch.cat([x0, x0_prior[pidx]])
            prompts = prompts + [prior_prompts[int(i)] for i in pidx]
            if mb is not None:
                mb = torch.cat([mb, torch.zeros((len(pidx), *mb.shape[1:]), dtype=mb.dtype)])
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(n_train, (len(x0),), generator=g)
        loss = loss_fn(model, scheduler, x0, noise, t, prompts, mb, grad_text=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, cfg.unet_steps, float(np.mean(losses[-20:])))
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"settings": settings, "step": step, "losses": losses, "optimizer": opt.state_dict(),
                        "weights": {n: params[n].detach().cpu().clone() for n in names}}, tmp)
            os.replace(tmp, ckpt_path)
    unet.requires_grad_(False).eval()
    return {n: params[n].detach().cpu().contiguous() for n in names}, losses

