"""Engine benchmark: throughput and peak memory of generation with and without labels.

    python bench/engine.py [--model builtin:shapes-v1] [--images 32] [--steps N]

Prints one JSON object. Each mode runs in its own process so that peak RSS is its own:
  plain           a plain diffusers denoising loop over the same components (SDPA, no capture)
  engine          dsgen generation, labels off (no capture)
  engine_capture  dsgen with attention capture + refinement + labels + writing sample files
and the same three again at twice the steps, to show memory does not grow with steps.
The first batch of each mode is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spec(model: str, images: int, steps: int | None, batch: int, labels: str):
    from shared.spec import parse_spec
    from worker.engine.models import load_model

    defaults = load_model(model).extras.get("default_generation", {})
    gen = {k: v for k, v in defaults.items() if k in {"width", "height", "steps", "guidance_scale", "scheduler"}}
    if steps:
        gen["steps"] = steps
    gen["batch_size"] = batch
    labels_cfg = dict(load_model(model).extras.get("recommended_labels", {}))
    labels_cfg["mode"] = labels
    words = load_model(model).extras.get("demo_classes") or ["circle", "square"]
    return parse_spec({
        "name": "bench",
        "model": model,
        "classes": [{"name": w} for w in words[:2]],
        "prompts": {"templates": load_model(model).extras.get("demo_templates") or ["a {class}"],
                    "slots": load_model(model).extras.get("demo_slots") or {}},
        "num_images": images + batch,  # + one warm-up batch
        "generation": gen,
        "labels": labels_cfg,
        "export": {"formats": []},
    })


def plain_loop(spec) -> float:
    """Reference: text encoder + scheduler + UNet + (VAE) with diffusers' defaults only."""
    import torch

    from shared.prompts import plan_sample
    from worker.engine.models import load_model
    from worker.engine.text import encode_prompts

    m = load_model(spec.model)
    gen = spec.generation
    B = gen.batch_size
    f = m.vae_scale
    timed_start = None
    for b0 in range(0, spec.num_images, B):
        if b0 == B:
            timed_start = time.perf_counter()
        plans = [plan_sample(spec, i) for i in range(b0, min(b0 + B, spec.num_images))]
        with torch.no_grad():
            # Text encoding is shared with the engine (it is model-specific and negligible);
            # the denoising loop below uses diffusers' stock attention processors only.
            text = encode_prompts(m, [p.prompt for p in plans] + [""] * len(plans))
            states, mask = text.embeds, text.attention_mask
            sched = m.scheduler.__class__.from_config(m.scheduler.config)
            sched.set_timesteps(gen.steps)
            x = torch.stack([torch.randn(m.unet.config.in_channels, gen.height // f, gen.width // f,
                                         generator=torch.Generator().manual_seed(p.seed)) for p in plans])
            x = x * sched.init_noise_sigma
            cond, uncond = states[: len(plans)], states[len(plans):]
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps = m.unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond]),
                             encoder_attention_mask=None if mask is None else torch.cat([mask[len(plans):], mask[: len(plans)]])).sample
                eu, ec = eps.chunk(2)
                x = sched.step(eu + gen.guidance_scale * (ec - eu), t, x).prev_sample
            if m.vae is not None:
                x = m.vae.decode(x / m.vae.config.scaling_factor).sample
            (x / 2 + 0.5).clamp(0, 1)
    return time.perf_counter() - timed_start


def engine_loop(spec, write: bool) -> float:
    from worker.engine.local_run import write_atomic
    from worker.engine.session import EngineSession

    session = EngineSession(spec)
    B = spec.generation.batch_size
    timed_start = None
    with tempfile.TemporaryDirectory() as tmp:
        for sample in session.generate(range(spec.num_images)):
            if write:
                folder = Path(tmp) / f"{sample.record.index:06d}"
                folder.mkdir()
                for name, data in sample.files().items():
                    write_atomic(folder / name, data)
            if sample.record.index == B - 1:  # the warm-up batch is done (and written)
                timed_start = time.perf_counter()
    return time.perf_counter() - timed_start


def child(mode: str, model: str, images: int, steps: int | None, batch: int) -> None:
    import torch

    torch.manual_seed(0)
    labels = "refined" if mode == "engine_capture" else "none"
    spec = _spec(model, images, steps, batch, labels)
    seconds = plain_loop(spec) if mode == "plain" else engine_loop(spec, write=mode == "engine_capture")
    print(json.dumps({
        "images_per_s": images / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": spec.generation.steps,
        "threads": torch.get_num_threads(),
    }))


def run_child(mode: str, args, steps: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--images", str(args.images),
           "--batch", str(args.batch)] + (["--steps", str(steps)] if steps else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="default: builtin:shapes-v1 if shipped, else builtin:tiny-random")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="default: the model's recommended steps")
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.model is None:
        from worker.engine.models import builtin_names

        args.model = "builtin:shapes-v1" if "shapes-v1" in builtin_names() else "builtin:tiny-random"
    if args.child:
        child(args.child, args.model, args.images, args.steps, args.batch)
        return
    modes = ("plain", "engine", "engine_capture")
    base = {m: run_child(m, args, args.steps) for m in modes}
    steps = base["plain"]["steps"]
    double = {m: run_child(m, args, 2 * steps) for m in modes}
    result = {
        "model": args.model,
        "images": args.images,
        "batch_size": args.batch,
        "steps": steps,
        "threads": base["plain"]["threads"],
        "images_per_s": {m: round(base[m]["images_per_s"], 3) for m in modes},
        "ratio_engine_vs_plain": round(base["plain"]["images_per_s"] / base["engine"]["images_per_s"], 3),
        "ratio_capture_vs_plain": round(base["plain"]["images_per_s"] / base["engine_capture"]["images_per_s"], 3),
        "peak_rss_mb": {m: round(base[m]["peak_rss_mb"], 1) for m in modes},
        "images_per_s_2x_steps": {m: round(double[m]["images_per_s"], 3) for m in modes},
        "peak_rss_mb_2x_steps": {m: round(double[m]["peak_rss_mb"], 1) for m in modes},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
