"""GPU readiness: the engine on CUDA with an SD-1.5-shaped model of random weights. JSON out.

    python bench/gpu.py                       # CUDA: fp16 and bf16, 512 px, batch 4 and 8
    python bench/gpu.py --device cpu --quick  # the same code on a small same-shaped model (tested)

The model is built from configs, no weights downloaded: the UNet of SD 1.5 (320/640/1280/1280
channels, 2 layers per block, cross-attention 768, 8 heads), its VAE (128/256/512/512) and a
12-layer 768-wide CLIP text encoder (vocabulary of the shipped tiny tokenizer, 77 tokens).
`--quick` keeps the block structure with a tenth of the channels, 64 px and 2 steps.

It runs the engine's own entry point (`EngineSession.generate` on a `LoadedModel`), in two
modes per dtype and batch size: plain (labels.mode none: no attention capture) and capture
(labels.mode refined: attention capture, refinement and labels). Rounds interleave the modes
so clock and thermal drift hit both alike; the first batch of each (dtype, batch) is a
warm-up. Reports images/s, the capture/plain ratio and peak device memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")


def quick_configs() -> tuple[dict, dict, dict]:
    """SD-1.5 block structure at a tenth of the width (fast on a CPU)."""
    unet = {**SD15_UNET, "block_out_channels": (32, 64, 128, 128), "layers_per_block": 1,
            "cross_attention_dim": 64, "attention_head_dim": 4, "sample_size": 8}
    vae = {**SD15_VAE, "block_out_channels": (16, 32, 64, 64), "layers_per_block": 1, "sample_size": 64,
           "norm_num_groups": 16}
    text = {**SD15_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "projection_dim": 64}
    return unet, vae, text


def build_model(device: str, dtype_name: str, quick: bool):  # noqa: ANN201 - worker.engine.loading.LoadedModel
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from shared.formats.records import ModelInfo
    from worker.engine.loading import _DTYPES, LoadedModel, builtin_root

    torch.manual_seed(0)
    unet_cfg, vae_cfg, text_cfg = quick_configs() if quick else (SD15_UNET, SD15_VAE, SD15_TEXT)
    tiny = builtin_root() / "tiny-random"
    tokenizer = AutoTokenizer.from_pretrained(tiny / "tokenizer", use_fast=True)
    tokenizer.model_max_length = text_cfg["max_position_embeddings"]
    dtype = _DTYPES[dtype_name]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                        **text_cfg))
    parts = [UNet2DConditionModel(**unet_cfg), text, AutoencoderKL(**vae_cfg)]
    for p in parts:
        p.to(device=device, dtype=dtype).eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(tiny / "scheduler")
    return LoadedModel(info=ModelInfo(id="bench:sd15-random", revision="random-seed-0"), path=tiny,
                       unet=parts[0], text_encoder=parts[1], tokenizer=tokenizer, scheduler=scheduler, vae=parts[2],
                       text_encoder_2=None, tokenizer_2=None, device=torch.device(device), dtype=dtype)


def job_spec(device: str, dtype: str, size: int, steps: int, batch: int, labels: str, images: int):  # noqa: ANN201
    from shared.formats.spec import parse_spec

    return parse_spec({
        "name": "gpu-bench", "model": {"id": "bench:sd15-random", "device": device, "dtype": dtype},
        "classes": [{"name": "cat"}, {"name": "dog"}], "prompts": {"templates": ["a photo of a {class} and a {class_2}"]},
        "num_images": images, "generation": {"width": size, "height": size, "steps": steps, "batch_size": batch,
                                             "guidance_scale": 7.5},
        "labels": {"mode": labels}, "export": {"formats": []},
    })


def run_batches(model, spec, batches: list[int]) -> float:  # noqa: ANN001
    """Seconds to generate the given batch numbers (of spec's batch size), synchronised."""
    import torch

    from worker.engine.session import EngineSession

    session = EngineSession(spec, model=model)
    b = spec.generation.batch_size
    indexes = [i for k in batches for i in range(k * b, (k + 1) * b)]
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in session.generate(indexes):
        pass
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small same-shaped model, 64 px, 2 steps")
    ap.add_argument("--dtypes", default=None, help="default: float16,bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--batches", default=None, help="batch sizes (default 4,8; quick: 1,2)")
    ap.add_argument("--rounds", type=int, default=None, help="timed batches per mode (default 3; quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="default 20; quick: 2")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here; use --device cpu --quick")
    dtypes = (args.dtypes or ("float16,bfloat16" if args.device == "cuda" else "float32")).split(",")
    batch_sizes = [int(b) for b in (args.batches or ("1,2" if args.quick else "4,8")).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 20)
    size = 64 if args.quick else 512
    started = time.perf_counter()
    result: dict = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "torch": torch.__version__, "quick": args.quick, "size_px": size, "steps": steps,
                    "model": "SD-1.5-shaped UNet/VAE/CLIP, random weights" + (" (a tenth of the width)" if args.quick else ""),
                    "runs": []}
    modes = {"plain": "none", "capture": "refined"}
    for dtype in dtypes:
        model = build_model(args.device, dtype, args.quick)
        for batch in batch_sizes:
            images = batch * (rounds + 1)
            specs = {m: job_spec(args.device, dtype, size, steps, batch, labels, images) for m, labels in modes.items()}
            for m in modes:
                run_batches(model, specs[m], [0])  # warm-up (kernels, allocator, capture buffers)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds: dict[str, list[float]] = {m: [] for m in modes}
            peak: dict[str, float] = {}
            for r in range(1, rounds + 1):  # interleaved: plain, capture, plain, capture, ...
                for m in modes:
                    if args.device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    seconds[m].append(run_batches(model, specs[m], [r]))
                    if args.device == "cuda":
                        peak[m] = max(peak.get(m, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            rates = {m: batch / statistics.median(v) for m, v in seconds.items()}
            result["runs"].append({
                "dtype": dtype, "batch_size": batch, "rounds": rounds,
                "images_per_s": {m: round(v, 3) for m, v in rates.items()},
                "capture_vs_plain": round(rates["capture"] / rates["plain"], 3),
                "peak_device_mib": {m: round(v, 1) for m, v in peak.items()} or None,
            })
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result["mask2image"] = "not run: the mask2image method (rectified vs plain) lands with branch i10"
    result["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
