"""Engine benchmark: the cost of attention capture and of rectified mask-to-image vs plain generation.

    python bench/engine.py [--model builtin:shapes-v1] [--rounds 7] [--sd15-rounds 5] [--no-sd15] [--memory]

A shared machine's load drifts, so modes are never run one after another: they are
*interleaved in rounds* (plain, engine, capture, mask2image, plain, ...), each round on the same
batch of samples, and every figure is the median over rounds of the per-round ratio
mode_time / plain_time, with its spread (min, max). Round 0 is a warm-up and is not counted.

Part 1, the embedded model (whole engine: prompts, loop, decode, labels, sample files):
  plain       a plain diffusers denoising loop over the same components (stock processors)
  engine      dsgen generation, labels off
  capture     dsgen text2image with attention capture + refinement + labels + files
  mask2image  dsgen mask2image, backend rectified (every cross-attention layer masked through
              SDPA's attn_mask), labels from the masks + files
Part 2, an SD-1.5-shaped UNet (random weights from the SD-1.5 UNet config, 512 px = 64x64
latents, CFG batch [uncond, cond] of one image, one UNet call per mode per round), so the
ratios reflect a real checkpoint's layer sizes: plain UNet call / with the capture recorder
(cross 16+32, self 32, what labels use at 512 px) / with rectified cross-attention on all layers.

`--memory` adds peak RSS per mode, each in its own process (peak RSS is per process).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.formats.model_meta import model_side  # noqa: E402

MODES = ("plain", "engine", "capture", "mask2image")


def _extras(model: str) -> dict:
    from worker.engine.loading import load_model

    return load_model(model).extras


def _spec(model: str, images: int, batch: int, labels: str, steps: int | None, method: dict | None = None):
    from shared.formats.spec import parse_spec

    ex = _extras(model)
    gen = {k: v for k, v in ex.get("default_generation", {}).items() if k in {"width", "height", "steps", "guidance_scale", "scheduler"}}
    if steps:
        gen["steps"] = steps
    gen["batch_size"] = batch
    words = ex.get("demo_classes") or ["circle", "square"]
    body = {
        "name": "bench", "model": model,
        "classes": [{"name": w} for w in words],
        "prompts": {"templates": ex.get("demo_templates") or ["a {class}"], "slots": ex.get("demo_slots") or {}},
        "num_images": images,
        "generation": gen,
        "labels": {**ex.get("recommended_labels", {}), "mode": labels},
        "export": {"formats": []},
    }
    if method:
        body.update(method)
    return parse_spec(body)


def _masks(folder: Path, n: int, size: int, classes: int) -> Path:
    """Shapes-world masks (real label maps) for mask2image: `dsgen shapes render`'s renderer."""
    from shared.shapes.dataset import write_real_dataset

    write_real_dataset(folder, n, seed=123, size=size, formats=[])
    return folder


class PlainLoop:
    """Reference: text encoder + scheduler + UNet + (VAE) with diffusers' stock processors only."""

    def __init__(self, spec):
        from worker.engine.loading import load_model

        self.spec, self.m = spec, load_model(spec.model)

    def __call__(self, batch: list[int]) -> None:
        import torch

        from shared.formats.prompts import plan_sample
        from worker.engine.text import encode_prompts

        m, gen = self.m, self.spec.generation
        plans = [plan_sample(self.spec, i) for i in batch]
        f = m.vae_scale
        with torch.no_grad():
            # Text encoding is shared with the engine (model-specific and negligible).
            text = encode_prompts(m, [p.prompt for p in plans] + [""] * len(plans))
            states, mask = text.embeds, text.attention_mask
            sched = m.scheduler.__class__.from_config(m.scheduler.config)
            sched.set_timesteps(gen.steps)
            x = torch.stack([torch.randn(m.unet.config.in_channels, gen.height // f, gen.width // f,
                                         generator=torch.Generator().manual_seed(p.seed)) for p in plans])
            x = x * sched.init_noise_sigma
            n = len(plans)
            cond, uncond = states[:n], states[n:]
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps = m.unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond]),
                             encoder_attention_mask=None if mask is None else torch.cat([mask[n:], mask[:n]])).sample
                eu, ec = eps.chunk(2)
                x = sched.step(eu + gen.guidance_scale * (ec - eu), t, x).prev_sample
            if m.vae is not None:
                x = m.vae.decode(x / m.vae.config.scaling_factor).sample
            (x / 2 + 0.5).clamp(0, 1)


class EngineRun:
    def __init__(self, spec, write: bool):
        from worker.engine.session import EngineSession

        self.session, self.write = EngineSession(spec), write
        self.tmp = tempfile.TemporaryDirectory()

    def __call__(self, batch: list[int]) -> None:
        from shared.formats.export.files import atomic_write_bytes

        for sample in self.session.generate(batch):
            if self.write:
                folder = Path(self.tmp.name) / f"{sample.record.index:06d}"
                folder.mkdir(exist_ok=True)
                for name, data in sample.files().items():
                    atomic_write_bytes(folder / name, data)


def _runners(args, masks: Path) -> dict:
    images = (args.rounds + 1) * args.batch
    m2i = {"method": "mask2image", "mask2image": {"source": {"path": str(masks)}, "prompt": "source"}}
    return {
        "plain": PlainLoop(_spec(args.model, images, args.batch, "none", args.steps)),
        "engine": EngineRun(_spec(args.model, images, args.batch, "none", args.steps), write=False),
        "capture": EngineRun(_spec(args.model, images, args.batch, "refined", args.steps), write=True),
        "mask2image": EngineRun(_spec(args.model, images, args.batch, "refined", args.steps, m2i), write=True),
    }


def interleave(runners: dict, rounds: int, batch_of) -> dict[str, list[float]]:
    """seconds[mode][round], rounds interleaved mode by mode; round 0 (warm-up) dropped."""
    seconds: dict[str, list[float]] = {m: [] for m in runners}
    for r in range(rounds + 1):
        for mode, run in runners.items():
            started = time.perf_counter()
            run(batch_of(r))
            if r:
                seconds[mode].append(time.perf_counter() - started)
    return seconds


def summarize(seconds: dict[str, list[float]], per_call: int) -> dict:
    plain = seconds["plain"]
    out = {"per_image_s": {m: round(statistics.median(s) / per_call, 4) for m, s in seconds.items()}, "ratio_vs_plain": {}}
    for mode, s in seconds.items():
        if mode == "plain":
            continue
        ratios = sorted(a / b for a, b in zip(s, plain))
        out["ratio_vs_plain"][mode] = {"median": round(statistics.median(ratios), 3), "min": round(ratios[0], 3),
                                       "max": round(ratios[-1], 3), "rounds": len(ratios)}
    return out


def sd15_unet():
    """A UNet with the SD-1.5 UNet config (random weights): the real checkpoint's layer sizes."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def bench_sd15(rounds: int) -> dict:
    import torch

    from worker.engine.attention import CaptureConfig, capture_controls, control_attention
    from worker.engine.controls import RectifiedCrossAttention

    unet = sd15_unet()
    latent_hw = (64, 64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *latent_hw, generator=g)
    states = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor(500)
    labels = torch.zeros(1, 512, 512, dtype=torch.long)
    labels[:, 64:320, 32:288] = 1
    labels[:, 200:480, 240:500] = 2
    tokens = [[(2, 1), (3, 1), (5, 2)]]  # e.g. "a dog cat": a two-token class and a one-token class

    def plain(_):
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=states)

    def capture(_):
        store, recorder = capture_controls(unet, CaptureConfig(latent_hw=latent_hw, cross_resolutions=(16, 32),
                                                               self_resolutions=(32,), guidance=True))
        with control_attention(unet, [recorder], latent_hw, guidance=True), torch.no_grad():
            unet(x, t, encoder_hidden_states=states)

    def rectified(_):
        control = RectifiedCrossAttention(labels, tokens, 77)
        with control_attention(unet, [control], latent_hw, guidance=True), torch.no_grad():
            unet(x, t, encoder_hidden_states=states)

    seconds = interleave({"plain": plain, "capture": capture, "mask2image_rectified": rectified}, rounds, lambda r: r)
    params = sum(p.numel() for p in unet.parameters())
    return {"unet": "SD-1.5 config, random weights", "parameters_m": round(params / 1e6, 1), "latent": list(latent_hw),
            "unet_batch": 2, "rounds": rounds, **summarize(seconds, 1)}


def child_memory(args, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        masks = _masks(Path(tmp) / "masks", 8, model_side(_extras(args.model)), 4)
        runner = _runners(args, masks)[mode]
        for r in range(args.rounds + 1):
            runner(list(range(r * args.batch, (r + 1) * args.batch)))
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="default: the embedded default model (builtin:shapes-v2 if shipped)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (plus one warm-up)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="default: the model's recommended steps")
    p.add_argument("--sd15-rounds", type=int, default=5)
    p.add_argument("--no-sd15", action="store_true", help="skip the SD-1.5-shaped UNet part")
    p.add_argument("--memory", action="store_true", help="also peak RSS per mode (one process each)")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from worker.engine.loading import builtin_names

        names = builtin_names()
        args.model = next((f"builtin:{n}" for n in ("shapes-v2", "shapes-v1") if n in names), "builtin:tiny-random")
    if args.child_memory:
        print(json.dumps(child_memory(args, args.child_memory)))
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        size = model_side(_extras(args.model))
        masks = _masks(Path(tmp) / "masks", 16, size, 4)
        runners = _runners(args, masks)
        seconds = interleave(runners, args.rounds, lambda r: list(range(r * args.batch, (r + 1) * args.batch)))
    result = {
        "model": args.model, "batch_size": args.batch, "rounds": args.rounds,
        "steps": runners["plain"].spec.generation.steps, "threads": torch.get_num_threads(),
        **summarize(seconds, args.batch),
    }
    if args.memory:
        result["peak_rss_mb"] = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child-memory", mode, "--model", args.model, "--rounds", str(args.rounds),
                   "--batch", str(args.batch)] + (["--steps", str(args.steps)] if args.steps else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
            result["peak_rss_mb"][mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    if not args.no_sd15:
        result["sd15"] = bench_sd15(args.sd15_rounds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
