"""Textual inversion: learn the embedding rows of new tokens from a few images (DA-Fusion's
`fine_tune.py`, after the diffusers textual-inversion example).

Only the new rows train: the whole input-embedding matrix gets gradients, a hook zeroes every
other row's gradient, and Adam (no weight decay) leaves zero-gradient rows exactly where they
are. Loss: the model's own denoising objective (epsilon or v, from its scheduler config) on
the images noised at uniform timesteps, with prompts from templates that name the tokens.
With `masked` (and a mask per image) the tokens may attend only inside their image's object
mask (rectified cross-attention through `control_attention`, the engine's one attention path).

Resumable: every `checkpoint_every` steps the rows, the optimiser and the step go to
`<out>/checkpoint.pt`; a run with the same arguments continues from there. The final folder is
written by `save_concept` (`worker.engine.concepts` reads it).
"""
from __future__ import annotations

import functools
import json
import os
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.formats.concepts import CONCEPT_FILE, CONCEPT_FORMAT
from worker.engine.concepts import UNET_FILE, UNET_PARAMS, ConceptError, add_concept_tokens, check_token, \
    private_copy, token_file, word_embedding
from worker.engine.generate import encode_images
from worker.engine.text import _encode_one, tokenize

CHECKPOINT = "checkpoint.pt"
# DA-Fusion / the TI example use the imagenet "small" templates; these are a few of them.
PHOTO_TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                   "a close-up photo of a {}", "a bright photo of a {}", "a good photo of a {}", "a photo of one {}")
FALLBACK_TEMPLATES = ("a {}", "{}")


@dataclass
class LearnConfig:
    tokens: list[str]
    init_words: list[str]
    steps: int = 1000
    lr: float = 5e-4
    batch_size: int = 8
    seed: int = 0
    resolution: int | None = None  # default: the model's default generation size, else its native side
    checkpoint_every: int = 100
    templates: list[str] | None = None  # with "{}" for the tokens; default: what the tokenizer can spell
    flips: bool = True
    vectors: int = 1  # embedding vectors per token (the textual-inversion example's num_vectors)
    # Learn inside the objects' masks: the tokens' cross-attention is rectified to each image's
    # object mask (FreestyleNet's rectified attention, as mask2image and layout.shapes draw), so the
    # tokens learn what fills the object, not the whole picture. Needs one mask per image.
    masked: bool = False
    # Then fine-tune the UNet's cross-attention key/value for this many steps (Custom Diffusion;
    # worker.engine.concept_unet), for what no embedding reaches: a colour the model never drew.
    unet_steps: int = 0
    unet_lr: float = 1e-4
    unet_params: str = "cross-kv"  # worker.engine.concepts.UNET_PARAMS: the projections, or the whole UNet
    prior_images: int = 16  # the base model's own pictures of the init words, half of each fine-tune batch


@dataclass
class LearnState:
    step: int = 0
    losses: list[float] = field(default_factory=list)


def _load_images(paths: Sequence[Path], side: int) -> torch.Tensor:
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (side, side):
                im = im.resize((side, side), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)


def usable_templates(tokenizer, phrase: str, wanted: Sequence[str] | None) -> list[str]:
    """Templates whose words this tokenizer knows (a word-level vocabulary may lack 'photo')."""
    candidates = list(wanted) if wanted else list(PHOTO_TEMPLATES) + list(FALLBACK_TEMPLATES)
    good = []
    for t in candidates:
        if "{}" not in t:
            raise ConceptError(f"--template: {t!r} needs a {{}} where the tokens go", field="--template")
        try:
            tokenize(tokenizer, [t.format(phrase)])
        except ConceptError:
            raise
        except Exception:  # noqa: BLE001 - an unknown word: not a template for this model
            continue
        good.append(t)
    if wanted and len(good) < len(candidates):
        raise ConceptError("--template: some templates use words this model does not know", field="--template")
    if not wanted:  # photo templates if the model can read them, else the bare fallbacks
        photo = [t for t in good if t in PHOTO_TEMPLATES]
        good = photo or [t for t in good if t in FALLBACK_TEMPLATES][:1]
    return good


def _encode_with_grad(model, prompts: list[str]):
    """Text states as `worker.engine.text.encode_prompts` makes them, with gradients."""
    enc = tokenize(model.tokenizer, prompts)
    mask = enc["attention_mask"] if model.extras.get("text_attention_mask") else None
    if model.text_encoder_2 is None:
        states, _ = _encode_one(model.text_encoder, enc["input_ids"], mask, model.device, penultimate=False)
        return states, mask, None
    enc2 = tokenize(model.tokenizer_2, prompts)
    s1, _ = _encode_one(model.text_encoder, enc["input_ids"], None, model.device, penultimate=True)
    s2, pooled = _encode_one(model.text_encoder_2, enc2["input_ids"], None, model.device, penultimate=True)
    return torch.cat([s1, s2], dim=-1), None, pooled


def _load_masks(masks: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """Object masks -> [N, side, side] int64 (1 = the object), nearest-resized."""
    out = []
    for m in masks:
        im = Image.fromarray(np.asarray(m, dtype=bool).astype(np.uint8) * 255)
        if im.size != (side, side):
            im = im.resize((side, side), Image.NEAREST)
        out.append(torch.from_numpy((np.asarray(im) > 127).astype(np.int64)))
    return torch.stack(out)


def _rectified(model, prompts: list[str], token_ids: Sequence[int], masks: torch.Tensor):
    """The concept tokens of each prompt kept inside its image's mask (category 1)."""
    from worker.engine.controls import RectifiedCrossAttention

    input_ids = tokenize(model.tokenizer, prompts)["input_ids"]
    wanted = set(int(i) for i in token_ids)
    tokens = [[(j, 1) for j, t in enumerate(row.tolist()) if t in wanted] for row in input_ids]
    return RectifiedCrossAttention(masks.to(model.device), tokens, input_ids.shape[1])


def learn_concept(
    base_model,
    images: Sequence[Path],
    cfg: LearnConfig,
    out: Path,
    progress: Callable[[int, int, float], None] | None = None,
    resume: bool = True,
    masks: Sequence[np.ndarray] | None = None,
    unet_progress: Callable[[int, int, float], None] | None = None,
) -> LearnState:
    """Train the tokens' rows on `images` (inside `masks` with cfg.masked); write the concept folder to `out`."""
    from diffusers import DDPMScheduler


    if not images:
        raise ConceptError("--images: no images to learn from", field="--images")
    if cfg.masked and (masks is None or len(masks) != len(images)):
        raise ConceptError("--masked: needs one object mask per image (give a labelled dataset with --source and "
                           "--class)", field="--masked")
    if len(cfg.tokens) != len(cfg.init_words):
        raise ConceptError("--init-word: give one init word per --token", field="--init-word")
    for t in cfg.tokens:
        check_token(t)
    if cfg.unet_params not in UNET_PARAMS:
        raise ConceptError(f"--unet-params: one of {', '.join(UNET_PARAMS)} (got {cfg.unet_params!r})",
                           field="--unet-params")
    model = private_copy(base_model)
    pairs = [(model.tokenizer, model.text_encoder)]
    if model.text_encoder_2 is not None:
        pairs.append((model.tokenizer_2, model.text_encoder_2))
    if not 1 <= cfg.vectors <= 16:
        raise ConceptError("--vectors: give 1 to 16 embedding vectors per token", field="--vectors")
    # every vector of a token starts at its init word; their positions in the prompt set them apart
    init = {t: [word_embedding(tok, enc, w).expand(cfg.vectors, -1).clone() for tok, enc in pairs]
            for t, w in zip(cfg.tokens, cfg.init_words)}
    ids_by_token = add_concept_tokens(model, init)
    ids = [[i for t in cfg.tokens for i in per_token[t]] for per_token in ids_by_token]
    phrase = " ".join(cfg.tokens)
    templates = usable_templates(model.tokenizer, phrase, cfg.templates)
    gen_defaults = model.extras.get("default_generation", {})
    side = cfg.resolution or int(gen_defaults.get("width") or model.native_side)
    x_all = _load_images(images, side)
    m_all = _load_masks(masks, side) if cfg.masked else None

    torch.manual_seed(cfg.seed)
    weights, masks = [], []
    for (_, enc), new_ids in zip(pairs, ids):
        w = enc.get_input_embeddings().weight
        w.requires_grad_(True)
        keep = torch.ones(w.shape[0], 1, dtype=w.dtype, device=w.device)
        keep[new_ids] = 0
        trainable = 1 - keep
        w.register_hook(lambda g, m=trainable: g * m)
        weights.append(w)
        masks.append(keep.bool().squeeze(1))
    originals = [w.detach()[m].clone() for w, m in zip(weights, masks)]
    opt = torch.optim.Adam(weights, lr=cfg.lr * 1.0, weight_decay=0.0)
    state = LearnState()
    ckpt_path = out / CHECKPOINT
    out.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        # a checkpoint written before a setting existed holds that setting's default
        # the UNet step's settings are its own checkpoint's (concept_unet): a finished textual
        # inversion may go on to a fine-tune in the same folder
        defaults = {f.name: f.default for f in fields(LearnConfig) if f.default is not MISSING}
        if (_without_unet({**defaults, **ckpt["config"]}) != _without_unet(asdict(cfg))
                or ckpt["images"] != [str(p) for p in images]):
            raise ConceptError(f"--out: {out} holds a checkpoint of a different run (other tokens, images or settings); "
                               "use another --out or delete it", field="--out")
        with torch.no_grad():
            for w, new_ids, rows in zip(weights, ids, ckpt["rows"]):
                w[new_ids] = rows.to(w.dtype)
        opt.load_state_dict(ckpt["optimizer"])
        state = LearnState(ckpt["step"], ckpt["losses"])

    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    n_train = scheduler.config.num_train_timesteps
    model.unet.requires_grad_(False)
    x0_all = encode_images(model, x_all).float()
    loss_fn = functools.partial(_denoise_loss, token_ids=ids[0])
    while state.step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
        idx = torch.randint(len(x0_all), (cfg.batch_size,), generator=g)
        x0 = x0_all[idx]
        mb = m_all[idx] if m_all is not None else None
        if cfg.flips:
            flip = torch.rand(cfg.batch_size, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            if mb is not None:  # the masks follow their images
                mb = torch.where(flip[:, None, None], mb.flip(-1), mb)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(n_train, (cfg.batch_size,), generator=g)
        prompts = [templates[int(k)].format(phrase) for k in torch.randint(len(templates), (cfg.batch_size,), generator=g)]
        loss = loss_fn(model, scheduler, x0, noise, t, prompts, mb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # belt and braces: the frozen rows are exactly the originals
            for w, m, orig in zip(weights, masks, originals):
                w[m] = orig
        state.step += 1
        state.losses.append(float(loss.detach()))
        if progress is not None:
            progress(state.step, cfg.steps, float(np.mean(state.losses[-20:])))
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"config": asdict(cfg), "images": [str(p) for p in images], "step": state.step,
                        "losses": state.losses, "optimizer": opt.state_dict(),
                        "rows": [w.detach()[i].clone() for w, i in zip(weights, ids)]}, tmp)
            os.replace(tmp, ckpt_path)
    for w in weights:
        w.requires_grad_(False)
    rows = {t: [w.detach()[per_token[t]].clone() for w, per_token in zip(weights, ids_by_token)] for t in cfg.tokens}
    unet = None
    if cfg.unet_steps:
        unet = _finetune_unet(base_model, model, cfg, x0_all, m_all, templates, phrase, side, loss_fn, out, resume,
                              unet_progress)
    save_concept(out, rows, base_model.info, cfg, templates, len(images), state, unet)
    return state


def _without_unet(config: dict) -> dict:
    from worker.engine.concept_unet import UNET_SETTINGS

    return {k: v for k, v in config.items() if k not in UNET_SETTINGS}


def _finetune_unet(base_model, model, cfg: LearnConfig, x0_all, m_all, templates: list[str], phrase: str, side: int,
                   loss_fn, out: Path, resume: bool, progress) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The concept's UNet step (cfg.unet_params), on a private UNet, with the base model's own
    pictures of the init words as the prior half of each batch."""
    from worker.engine.concept_unet import finetune_concept_unet, prior_images
    from worker.engine.concepts import private_unet, unet_param_names

    init_phrase = " ".join(cfg.init_words)
    prior_prompts = [templates[k % len(templates)].format(init_phrase) for k in range(cfg.prior_images)]
    x0_prior = prior_images(base_model, prior_prompts, side, cfg.seed, out) if cfg.prior_images else None
    # the cached model's UNet is never trained: the copy has its own tensors for what trains
    trained = set(unet_param_names(model.unet, cfg.unet_params))
    own = {n: p.detach() for n, p in model.unet.named_parameters() if n in trained}
    tuned = replace(model, unet=private_unet(model.unet, own))

    def prompts_for(g: torch.Generator, n: int) -> list[str]:
        return [templates[int(k)].format(phrase) for k in torch.randint(len(templates), (n,), generator=g)]

    return finetune_concept_unet(tuned, cfg, x0_all, m_all, prompts_for, x0_prior, prior_prompts, loss_fn, out,
                                    resume, progress)


def _denoise_loss(model, scheduler, x0, noise, t, prompts: list[str], masks, token_ids: Sequence[int],
                  grad_text: bool = True) -> torch.Tensor:
    """The model's own denoising loss (epsilon or v) on `x0` noised at `t`, prompted by `prompts`;
    with `masks` the tokens attend only inside each image's object."""
    from worker.engine.attention import control_attention

    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    with nullcontext() if grad_text else torch.no_grad():
        states, mask, pooled = _encode_with_grad(model, prompts)
    added = None
    if pooled is not None:
        h, w_ = x0.shape[-2:]
        scale = model.vae_scale
        time_ids = torch.tensor([[h * scale, w_ * scale, 0, 0, h * scale, w_ * scale]], dtype=pooled.dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
    controls = [_rectified(model, prompts, token_ids, masks)] if masks is not None else []
    with control_attention(model.unet, controls, tuple(x0.shape[-2:])) if controls else nullcontext():
        pred = model.unet(noisy.to(model.device, model.dtype), t.to(model.device), encoder_hidden_states=states,
                          encoder_attention_mask=None if mask is None else mask.to(model.device),
                          added_cond_kwargs=added).sample
    return F.mse_loss(pred.float(), target.to(pred.device).float())


def save_concept(out: Path, rows: dict[str, list[torch.Tensor]], info, cfg: LearnConfig, templates: list[str],
                 n_images: int, state: LearnState,
                 unet: tuple[dict[str, torch.Tensor], list[float]] | None = None) -> Path:
    from safetensors.torch import save_file

    files = {}
    for token, embs in rows.items():  # per encoder [N, D]; one vector is written as [D] (SDXL: [1, D])
        if len(embs) == 2:
            tensors = {"clip_l": embs[0].reshape(-1, embs[0].shape[-1]).contiguous(),
                       "clip_g": embs[1].reshape(-1, embs[1].shape[-1]).contiguous()}
        else:
            m = embs[0].reshape(-1, embs[0].shape[-1])
            tensors = {token: (m[0] if m.shape[0] == 1 else m).contiguous()}
        save_file(tensors, str(out / token_file(token)))
        files[token] = token_file(token)
    meta = {
        "format": CONCEPT_FORMAT,
        "version": 1,
        "tokens": list(rows),
        "files": files,
        "init_words": cfg.init_words,
        "vectors": cfg.vectors,
        "masked": cfg.masked,
        "base_model": {"id": info.id, "revision": info.revision},
        "training": {"steps": state.step, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                     "images": n_images, "templates": templates,
                     "final_loss": round(float(np.mean(state.losses[-50:])), 5) if state.losses else None},
    }
    if unet is not None:
        weights, losses = unet
        save_file(weights, str(out / UNET_FILE))
        meta["unet"] = {"file": UNET_FILE, "parameters": cfg.unet_params, "steps": cfg.unet_steps,
                        "lr": cfg.unet_lr, "prior_images": cfg.prior_images,
                        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None}
    (out / CONCEPT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return out
