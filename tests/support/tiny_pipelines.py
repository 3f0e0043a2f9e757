"""Whole tiny pipelines in the SD 2.x and SDXL folder layouts, saved like real checkpoints.

They prove that `load_model` + the engine drive those layouts (v-prediction, linear
projections, two text encoders, pooled embeds and SDXL micro-conditioning) end to end.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.support.tiny_unets import tiny_sd2, tiny_sdxl
from worker.engine.builtin.make_tiny_random import build_tokenizer


def _vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=8, sample_size=32)


def _text(hidden: int, projection: int | None = None, vocab: int = 514):
    torch.manual_seed(2)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def save_sd2(path: Path) -> Path:
    unet, _ = tiny_sd2()
    pipe = StableDiffusionPipeline(unet=unet, vae=_vae(), text_encoder=_text(24), tokenizer=build_tokenizer(),
                                   scheduler=_scheduler("v_prediction"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_sdxl(path: Path) -> Path:
    unet, _ = tiny_sdxl()
    pipe = StableDiffusionXLPipeline(unet=unet, vae=_vae(), text_encoder=_text(16), text_encoder_2=_text(16, projection=8),
                                     tokenizer=build_tokenizer(), tokenizer_2=build_tokenizer(),
                                     scheduler=_scheduler("epsilon"))
    pipe.save_pretrained(path, safe_serialization=True)
    return path
