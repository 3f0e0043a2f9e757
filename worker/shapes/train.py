"""Train the shapes model: seeded, resumable, EMA, CFG dropout, sharpened attention.

    python -m worker.shapes.train --out runs/shapes --steps 3000
    dsgen shapes train --out runs/shapes --steps 3000 [--resume]

The batch of step k is a pure function of (seed, k): scene seeds come from
SeedSequence([seed, k]), so a resumed run sees exactly the data an uninterrupted one would.
Checkpoints: `DIR/latest.pt` (model, EMA, optimizer, step; written atomically every
`--ckpt-every` steps) and EMA-only snapshots `DIR/ema-<step>.pt` every `--snapshot-every`
steps for the quality-vs-training-time curve. `DIR/log.jsonl` has the loss per step.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataclasses import replace

from shared.shapes.render import render_scene
from shared.shapes.world import DEFAULT_WORLD, World, get_world, make_caption
from worker.shapes.model import (
    MAX_LENGTH,
    PRESETS,
    ShapesModelConfig,
    add_query_scaling,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    encode_text,
    export_model,
    query_scales,
)


@dataclass
class TrainConfig:
    out: str
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 200
    seed: int = 0
    preset: str = "small"
    cfg_dropout: float = 0.1
    suffix_prob: float = 0.25
    ema_decay: float = 0.999
    min_snr: float = 0.0  # > 0: min-SNR-gamma loss weighting (starves the low-noise steps on a short budget)
    ckpt_every: int = 50
    snapshot_every: int = 250
    max_minutes: float | None = None
    bf16: bool = False
    threads: int | None = None
    attn_loss: float = 0.05  # weight of the attention localisation loss (worker/shapes/attn_loss.py)
    rectify: float = 0.0  # share of samples trained with rectified cross-attention (worker/shapes/rectify.py)
    # The world trained on: a name from shared.shapes.world.WORLDS ("" = the preset's), and
    # overrides for ablations ("" = the world's own value).
    world: str = ""
    background: str = ""
    count_weights: str = ""  # e.g. "0.45,0.4,0.15"
    size_frac: str = ""  # e.g. "0.34,0.55"
    colours: str = ""  # e.g. "red,green,blue,yellow,purple" (the trained palette)
    image_size: int = 0  # 0 = the preset's side in pixels
    prediction: str = ""  # "" = the preset's; "epsilon" | "v_prediction"
    # An exported model folder (e.g. worker/engine/builtin/shapes-v2) to continue from when the
    # run folder's latest.pt is gone: its weights seed both the live and the EMA model, the step
    # counter continues from the folder's `training.steps` (so the data stream goes on where the
    # original run stopped), and the LR warms up again for the fresh optimizer.
    init_from: str = ""


def train_world(tc: TrainConfig, preset: ShapesModelConfig) -> World:
    """The world a run trains on: `tc.world`, else the preset's, else the default world; with
    the run's overrides."""
    world = get_world(tc.world) if tc.world else preset.shapes_world if preset.world else DEFAULT_WORLD
    changes: dict = {}
    if tc.background:
        changes["background"] = tc.background
    if tc.count_weights:
        changes["count_weights"] = tuple(float(v) for v in tc.count_weights.split(","))
    if tc.size_frac:
        changes["size_frac"] = tuple(float(v) for v in tc.size_frac.split(","))
    if tc.colours:
        changes["colours"] = tuple(c.strip() for c in tc.colours.split(",") if c.strip())
    return world.with_(**changes) if changes else world


def batch_for_step(seed: int, step: int, batch_size: int, size: int, cfg_dropout: float, suffix_prob: float,
                   return_scenes: bool = False, world: World | str | None = None):
    """Images (B,3,H,W) in [-1,1] and captions (and scenes) for training step `step`; deterministic."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, int(step)]))
    scene_seeds = rng.integers(0, 2**62, size=batch_size)
    drop = rng.random(batch_size) < cfg_dropout
    suffix = rng.random(batch_size) < suffix_prob
    images, captions, scenes = [], [], []
    for s, d, suf in zip(scene_seeds, drop, suffix):
        scene = render_scene(int(s), size, world=world)
        scenes.append(scene)
        images.append(scene.image)
        captions.append("" if d else make_caption([(o.colour, o.shape) for o in scene.objects], class_suffix=bool(suf)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if return_scenes:
        return x, captions, scenes
    return x, captions


class Trainer:
    def __init__(self, tc: TrainConfig, model_cfg: ShapesModelConfig | None = None):
        self.tc = tc
        self.out = Path(tc.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = model_cfg or PRESETS[tc.preset]
        self.world = train_world(tc, self.cfg)
        overrides = ({"prediction_type": tc.prediction} if tc.prediction else {}) | (
            {"image_size": tc.image_size} if tc.image_size else {})
        self.cfg = replace(self.cfg, world=self.world.to_json(), **overrides)
        torch.manual_seed(tc.seed)
        self.tokenizer = build_tokenizer(self.world)
        self.unet = build_unet(self.cfg).to(self.device)
        self.text_encoder = build_text_encoder(self.cfg).to(self.device)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_te = copy.deepcopy(self.text_encoder).requires_grad_(False)
        for m in (self.unet, self.ema_unet):
            add_query_scaling(m, self.cfg)
        # Attention controls for the whole run, on the engine's controlled processor (the same
        # attention code as inference): the localisation loss's maps and rectified attention.
        self.attn_maps = self.regions = None
        controls = []
        if tc.attn_loss:
            from worker.shapes import attn_loss

            self.attn_maps = attn_loss.recorder(self.cfg.image_size)
            controls.append(self.attn_maps)
        if tc.rectify:
            from worker.shapes.rectify import TokenRegions

            self.regions = TokenRegions()
            controls.append(self.regions)
        self._attention = contextlib.ExitStack()
        if controls:
            from worker.engine.attention import control_attention

            side = self.cfg.image_size
            self._attention.enter_context(control_attention(self.unet, controls, (side, side)))
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=0.01)
        self.sched = build_scheduler("ddpm", self.cfg.prediction_type)
        self.alphas = self.sched.alphas_cumprod.to(self.device)
        self.step = 0
        self.warmup_from = 0  # the step the LR warm-up counts from (a fresh optimizer warms up again)
        self.last_attn_loss = None
        self.elapsed = 0.0  # training seconds over all sessions of this run

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "step": self.step, "warmup_from": self.warmup_from, "elapsed": self.elapsed,
            "train_config": vars(self.tc), "model_config": self.cfg.to_json(),
            "unet": self.unet.state_dict(), "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(), "ema_text_encoder": self.ema_te.state_dict(),
            "opt": self.opt.state_dict(),
        }

    def save(self) -> None:
        tmp = self.out / "latest.pt.tmp"
        torch.save(self.state(), tmp)
        os.replace(tmp, self.out / "latest.pt")

    def snapshot(self) -> Path:
        path = self.out / f"ema-{self.step:06d}.pt"
        torch.save({"step": self.step, "elapsed": self.elapsed, "model_config": self.cfg.to_json(),
                    "ema_unet": self.ema_unet.state_dict(), "ema_text_encoder": self.ema_te.state_dict()}, path)
        return path

    def load(self, path: Path) -> None:
        st = torch.load(path, map_location=self.device, weights_only=False)
        self.unet.load_state_dict(st["unet"])
        self.text_encoder.load_state_dict(st["text_encoder"])
        self.ema_unet.load_state_dict(st["ema_unet"])
        self.ema_te.load_state_dict(st["ema_text_encoder"])
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.warmup_from = int(st.get("warmup_from", 0))
        self.elapsed = float(st.get("elapsed", 0.0))

    def init_from_export(self, folder: Path) -> None:
        """Seed live and EMA weights from an exported model folder (see `TrainConfig.init_from`)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        state = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        for name, s in query_scales(self.unet, self.cfg).items():  # export folded the scales into to_q
            for p in ("weight", "bias"):
                key = f"{name}.to_q.{p}"
                if key in state:
                    state[key] = state[key] / s
        te_state = load_file(str(folder / "text_encoder" / "model.safetensors"))
        for unet in (self.unet, self.ema_unet):
            unet.load_state_dict(state)
        for te in (self.text_encoder, self.ema_te):
            missing, unexpected = te.load_state_dict(te_state, strict=False)
            if unexpected or [k for k in missing if not k.endswith("position_ids")]:
                raise ValueError(f"{folder}: text encoder weights do not match the preset ({missing[:3]}, {unexpected[:3]})")
        training = json.loads((folder / "dsgen.json").read_text()).get("training", {})
        self.step = self.warmup_from = int(training.get("steps", 0))
        self.elapsed = float(training.get("elapsed_s", 0.0))

    # ---------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        return self.tc.lr * min(1.0, (step - self.warmup_from + 1) / max(1, self.tc.warmup))

    def train_step(self) -> float:
        tc = self.tc
        x0, captions, scenes = batch_for_step(tc.seed, self.step, tc.batch_size, self.cfg.image_size, tc.cfg_dropout,
                                              tc.suffix_prob, return_scenes=True, world=self.world)
        x0 = x0.to(self.device)
        g = torch.Generator().manual_seed(hash((tc.seed, self.step)) & 0x7FFFFFFF)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (x0.shape[0],), generator=g).to(self.device)
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        use_bf16 = tc.bf16 and self.device.type in ("cpu", "cuda")
        if self.attn_maps is not None:
            self.attn_maps.maps.clear()
        if self.regions is not None:
            from worker.shapes.attn_loss import token_targets

            chosen = torch.rand(len(captions), generator=g) < tc.rectify
            self.regions.set([token_targets(sc, cap, MAX_LENGTH) if cap and pick else []
                              for sc, cap, pick in zip(scenes, captions, chosen.tolist())], MAX_LENGTH, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            hidden, mask = encode_text(self.tokenizer, self.text_encoder, captions, self.device)
            pred = self.unet(xt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        snr = a.view(-1) / (1 - a.view(-1))
        if self.cfg.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
            # min-SNR-gamma in the v form (Hang et al. 2023): min(snr, gamma) / (snr + 1)
            weight = torch.clamp(snr, max=tc.min_snr) / (snr + 1) if tc.min_snr else torch.ones_like(snr)
        else:
            target = noise
            weight = torch.clamp(snr, max=tc.min_snr) / snr if tc.min_snr else torch.ones_like(snr)
        loss = (F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        self.last_attn_loss = None
        if self.attn_maps is not None:
            from worker.shapes.attn_loss import localisation_loss, token_targets

            targets = [token_targets(sc, cap, hidden.shape[1]) if cap else [] for sc, cap in zip(scenes, captions)]
            la = localisation_loss([probs for _, probs in self.attn_maps.maps], targets, self.device)
            self.last_attn_loss = float(la.detach())
            loss = loss + tc.attn_loss * la
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self._update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.tc.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_te, self.text_encoder)):
            for pe, pl in zip(ema.parameters(), live.parameters()):
                pe.lerp_(pl.detach(), 1 - d)
            for be, bl in zip(ema.buffers(), live.buffers()):
                be.copy_(bl)

    def run(self, progress: bool = True) -> None:
        from tqdm import tqdm

        tc = self.tc
        log = open(self.out / "log.jsonl", "a")
        bar = tqdm(total=tc.steps, initial=self.step, disable=not progress, dynamic_ncols=True, mininterval=5)
        ema_loss = None
        session_start = time.time()
        while self.step < tc.steps:
            t0 = time.time()
            loss = self.train_step()
            dt = time.time() - t0
            self.elapsed += dt
            ema_loss = loss if ema_loss is None else 0.98 * ema_loss + 0.02 * loss
            extra = {} if self.last_attn_loss is None else {"attn_loss": round(self.last_attn_loss, 4)}
            log.write(json.dumps({"step": self.step, "loss": round(loss, 5), **extra, "elapsed_s": round(self.elapsed, 1),
                                  "img_per_s": round(tc.batch_size / dt, 2)}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{ema_loss:.4f}", img_s=f"{tc.batch_size / dt:.1f}")
            bar.update(1)
            if self.step % tc.ckpt_every == 0 or self.step == tc.steps:
                self.save()
            if self.step % tc.snapshot_every == 0:
                self.snapshot()
            if tc.max_minutes is not None and (time.time() - session_start) > tc.max_minutes * 60:
                self.save()
                break
        bar.close()
        log.close()

    def export(self, out: Path) -> Path:
        return export_model(self.ema_unet, self.ema_te, self.cfg, out, steps=self.step)


def export_checkpoint(ckpt: Path, out: Path) -> Path:
    """Write the EMA weights of a checkpoint (latest.pt or ema-*.pt) as a diffusers folder."""
    st = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = ShapesModelConfig.from_json(st["model_config"])
    unet, te = build_unet(cfg), build_text_encoder(cfg)
    unet.load_state_dict(st["ema_unet"])
    te.load_state_dict(st["ema_text_encoder"])
    path = export_model(unet, te, cfg, out, steps=int(st["step"]))
    extras = json.loads((path / "dsgen.json").read_text())
    extras["training"]["elapsed_s"] = round(float(st.get("elapsed", 0.0)), 1)
    (path / "dsgen.json").write_text(json.dumps(extras, indent=2, sort_keys=True) + "\n")
    return path


def train(tc: TrainConfig, resume: bool = False, model_cfg: ShapesModelConfig | None = None, progress: bool = True) -> Trainer:
    trainer = Trainer(tc, model_cfg)
    latest = Path(tc.out) / "latest.pt"
    if resume and latest.is_file():
        trainer.load(latest)
    elif latest.is_file():
        raise FileExistsError(f"{latest} exists: pass --resume to continue that run, or choose another --out")
    elif tc.init_from:
        trainer.init_from_export(Path(tc.init_from))
    (Path(tc.out) / "train_config.json").write_text(json.dumps(vars(tc), indent=2) + "\n")
    trainer.run(progress=progress)
    return trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("out", "bf16"):
            continue
        typ = f.type if isinstance(f.type, type) else (float if "float" in str(f.type) else int if "int" in str(f.type) else str)
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=f.default)
    p.add_argument("--no-bf16", action="store_true", help="(default) train in fp32")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with AMX, GPUs)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", help="after training, export the EMA weights to this folder")
    a = p.parse_args(argv)
    kw = {k: getattr(a, k) for k in TrainConfig.__dataclass_fields__ if k not in ("bf16",)}
    tc = TrainConfig(**kw, bf16=a.bf16 and not a.no_bf16)
    trainer = train(tc, resume=a.resume)
    if a.export:
        trainer.export(Path(a.export))


if __name__ == "__main__":
    main()
