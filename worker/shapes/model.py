"""The shapes model: components, tokenizer, attention sharpening, and export to a diffusers folder.

Design (see docs/shapes-model.md):
- UNet2DConditionModel in pixel space (in/out 3 channels, images in [-1, 1]), cross-attention
  at 32x32 and 16x16 where objects are several cells wide.
- Text encoder: a tiny `MistralModel` used as a *local* encoder: causal with a sliding window of
  2 tokens over 2 layers, so a token sees at most the two words before it. "circle" in
  "a red circle and a blue square" knows it is red but nothing about the square: no token
  carries the whole caption, so the UNet has to attend to each object's own words.
- Word-level tokenizer (`tokenizers` WordLevel, lower-casing, punctuation split) with only a
  start token prepended; padding is masked out of the cross-attention (`text_attention_mask`).
- Training sharpens the attention logits (query x `CROSS_SCALE` / `SELF_SCALE`) with forward hooks
  on `to_q`; export folds the factor into `to_q`'s weights so the shipped folder is a plain
  diffusers model with the stock processors.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from shared.shapes.world import DEFAULT_WORLD, World, get_world

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
MAX_LENGTH = 16  # <bos> + the longest caption with class suffix (15 words) fits


@dataclass
class ShapesModelConfig:
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (64, 96, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8  # diffusers' name: number of heads for this UNet class
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_window: int = 2
    cross_scale: float = 4.0
    self_scale: float = 2.0
    norm_num_groups: int = 16
    # The top (full-resolution) level's transformer blocks use cross-attention only: no
    # pixel-to-pixel self-attention at 32x32 (1024 x 1024 per head), which halves the cost of
    # a training step; labels refine with the 16x16 self-attention anyway.
    only_cross_top: bool = False
    prediction_type: str = "epsilon"  # or "v_prediction"
    world: dict[str, Any] | None = None  # shared.shapes.world.World JSON; None = the v1 world

    @property
    def shapes_world(self) -> World:
        return get_world(self.world)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ShapesModelConfig":
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        return cls(**d)


PRESETS: dict[str, ShapesModelConfig] = {
    "tiny": ShapesModelConfig(block_out_channels=(16, 32, 32), attention_head_dim=2, text_dim=16, text_heads=2, norm_num_groups=8),
    "small": ShapesModelConfig(block_out_channels=(32, 64, 64), attention_head_dim=4, norm_num_groups=16),
    "base": ShapesModelConfig(),
    # shapes-v2: the small UNet without top-level self-attention, v-prediction, the v2 world at
    # 48 px (the ablations' strongest lever: docs/shapes-model.md).
    "v2": ShapesModelConfig(block_out_channels=(32, 64, 64), attention_head_dim=4, norm_num_groups=16,
                            only_cross_top=True, prediction_type="v_prediction", image_size=48,
                            world=get_world("v2").to_json()),
}


def build_tokenizer(world: World | None = None):
    """Word-level fast tokenizer over a world's vocabulary (ids: specials, then the vocabulary)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + (world or DEFAULT_WORLD).vocabulary)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    # Same split as shared.shapes.world.split_words: words, and each punctuation mark apart.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=MAX_LENGTH,
        padding_side="right",
    )
    return fast


def build_text_encoder(cfg: ShapesModelConfig):
    from transformers import MistralConfig, MistralModel

    tcfg = MistralConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(cfg.shapes_world.vocabulary),
        hidden_size=cfg.text_dim,
        intermediate_size=cfg.text_dim * 2,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=MAX_LENGTH,
        sliding_window=cfg.text_window,
        pad_token_id=0,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        tie_word_embeddings=False,
    )
    return MistralModel(tcfg)


def build_unet(cfg: ShapesModelConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        only_cross_attention=(True, False, False) if cfg.only_cross_top else False,
    )


def build_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                  clip_sample=True, clip_sample_range=1.0)
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing")
    return DDPMScheduler(**common)


# ---------------------------------------------------------------- attention sharpening

def _attention_modules(unet):
    from diffusers.models.attention_processor import Attention

    for name, mod in unet.named_modules():
        if isinstance(mod, Attention):
            yield name, mod


def query_scales(unet, cfg: ShapesModelConfig) -> dict[str, float]:
    """Scale for each attention's to_q: cross-attention (`attn2`) and self-attention (`attn1`)."""
    out = {}
    for name, mod in _attention_modules(unet):
        out[name] = cfg.cross_scale if mod.is_cross_attention else cfg.self_scale
    return out


def add_query_scaling(unet, cfg: ShapesModelConfig) -> list:
    """Multiply every to_q output by its scale (training form). Returns the hook handles."""
    handles = []
    scales = query_scales(unet, cfg)
    for name, mod in _attention_modules(unet):
        s = scales[name]
        if s != 1.0:
            handles.append(mod.to_q.register_forward_hook(lambda m, i, o, s=s: o * s))
    return handles


def folded_unet_state(unet, cfg: ShapesModelConfig) -> dict[str, torch.Tensor]:
    """The UNet's state dict with the query scales folded into to_q (export form)."""
    state = {k: v.detach().clone().float().contiguous() for k, v in unet.state_dict().items()}
    for name, s in query_scales(unet, cfg).items():
        for p in ("weight", "bias"):
            key = f"{name}.to_q.{p}"
            if key in state:
                state[key] = state[key] * s
    return state


# ---------------------------------------------------------------- export

def dsgen_extras(cfg: ShapesModelConfig, steps: int | None = None) -> dict[str, Any]:
    """The `dsgen.json` the engine reads next to the model (see docs/shapes-model.md)."""
    world = cfg.shapes_world
    return {
        "pixel_space": True,
        "text_attention_mask": True,
        "default_generation": {"width": cfg.image_size, "height": cfg.image_size, "steps": 20,
                               "guidance_scale": 3.0, "scheduler": "ddim"},
        "vocabulary": list(world.vocabulary),
        "world": world.to_json(),
        # LabelSpec fields only: the engine may pass this dict straight into `labels`.
        # Measured on held-out real renders (docs/shapes-model.md): refinement with the 16x16
        # self-attention and tau 1; the maps are peaky, so lower thresholds than Dataset
        # Diffusion's 0.6/0.5, and guided edges (the image snaps the coarse maps to its edges).
        "recommended_labels": {"cross_resolutions": [cfg.image_size // 2, cfg.image_size],
                               "self_resolution": cfg.image_size // 2, "tau": 1, "edges": "guided",
                               "class_threshold": 0.4, "uncertain_threshold": 0.3},
        "classes": list(world.shapes),
        "colours": list(world.colours),
        "demo_classes": list(world.shapes),
        "demo_templates": ["a {colour} {class}", "a {colour} {class} and a {colour_2} {class_2}"],
        "demo_slots": {"colour": list(world.colours), "colour_2": list(world.colours)},
        "training": {"steps": steps, "config": cfg.to_json()},
    }


def export_model(unet, text_encoder, cfg: ShapesModelConfig, out: Path, steps: int | None = None) -> Path:
    """Write a diffusers-style folder loadable by worker.engine.loading.load_model(path)."""
    import copy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(unet).float()
    plain.load_state_dict(folded_unet_state(unet, cfg))
    plain.save_pretrained(out / "unet", safe_serialization=True)
    te = copy.deepcopy(text_encoder).float()
    te.save_pretrained(out / "text_encoder", safe_serialization=True)
    build_tokenizer(cfg.shapes_world).save_pretrained(out / "tokenizer")
    build_scheduler("ddim", cfg.prediction_type).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", type(text_encoder).__name__],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    for f in out.rglob("*.safetensors"):
        f.chmod(0o644)
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "dsgen.json").write_text(json.dumps(dsgen_extras(cfg, steps), indent=2, sort_keys=True) + "\n")
    return out


def encode_text(tokenizer, text_encoder, captions: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings and the attention mask (1 = word or start token, 0 = padding)."""
    batch = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    hidden = text_encoder(input_ids=ids, attention_mask=mask)[0]
    return hidden, mask
