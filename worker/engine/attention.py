"""Attention capture: averaged cross- and self-attention probabilities from a diffusers UNet.

The stock SDPA processor never materialises the softmax, so on the layers we need we swap in
a processor that computes `softmax(QK^T * scale)` itself and adds the head-mean probabilities
to an `AttentionStore`. Everything goes through diffusers' extension point
(`unet.attn_processors` / `unet.set_attn_processor`); every layer we do not need keeps its
original processor, and the originals come back when `capture_attention` exits.

Vocabulary:
- factor: how much a layer's map is downsampled relative to the latent (1, 2, 4, ...);
- resolution: the shorter side of a layer's map in cells (16 for SD 1.x at 512 px, factor 4);
- kind: "cross" (pixel -> text token) or "self" (pixel -> pixel).

Memory: the store keeps one float32 running sum per (kind, resolution) plus a count, never
per-step tensors. Self-attention maps are N x N per image (N = h*w): 32x32 is 1024^2 (4 MiB per
image), 64x64 would be 4096^2 (64 MiB per image, and that per head while computing), so
self-attention capture is refused above `MAX_SELF_TOKENS` cells. Inside the processor the
probabilities are computed a few heads at a time (`PROBS_CHUNK_ELEMENTS`) so the peak stays
bounded whatever the batch size.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)

Kind = Literal["cross", "self"]

# 48x48 cells: covers 32x32 and non-square maps such as 32x64 (512x1024 px on SD);
# refuses 64x64 (4096^2 per head per image).
MAX_SELF_TOKENS = 48 * 48
# At most this many float32 probabilities (batch x heads x queries x keys) exist at once in
# the capturing processor (256 MiB); heads are processed in chunks below it.
PROBS_CHUNK_ELEMENTS = 1 << 26

# Processors whose output is plain softmax attention: replacing them with the capturing
# processor changes nothing but the memory/speed profile. Anything else (IP-Adapter, LoRA
# variants, fused QKV, custom steering) would silently lose its behaviour, so we refuse.
_PLAIN_PROCESSORS = (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor, SlicedAttnProcessor)

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


@dataclass(frozen=True)
class LayerInfo:
    name: str  # processor name as in `unet.attn_processors`, e.g. "...attn2.processor"
    kind: Kind
    factor: int  # downsampling relative to the latent


def _block_factor(name: str, num_blocks: int) -> int | None:
    m = _BLOCK.match(name)
    if m is None:
        return None
    if m.group(3) == "mid_block":
        return 2 ** (num_blocks - 1)
    i = int(m.group(2))
    # Every down block but the last ends with a downsampler; up blocks mirror them.
    return 2**i if m.group(1) == "down_blocks" else 2 ** (num_blocks - 1 - i)


def attention_layers(unet: torch.nn.Module) -> list[LayerInfo]:
    """All attention layers of a UNet2DConditionModel-like model, with kind and factor.

    The kind comes from the module itself (`is_cross_attention`), which also covers
    `only_cross_attention` blocks where attn1 is a cross-attention layer.
    """
    num_blocks = len(unet.config.down_block_types)
    layers = []
    for name in unet.attn_processors:
        factor = _block_factor(name, num_blocks)
        if factor is None:
            continue  # not inside a down/mid/up block: no spatial map we know how to place
        module = unet.get_submodule(name.removesuffix(".processor"))
        kind: Kind = "cross" if getattr(module, "is_cross_attention", False) else "self"
        layers.append(LayerInfo(name=name, kind=kind, factor=factor))
    return layers


def map_hw_for_factor(latent_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """Map size of a layer at `factor`: each stride-2 downsampler gives ceil(n / 2)."""
    h, w = latent_hw
    for _ in range(int(math.log2(factor))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def resolution_of(latent_hw: tuple[int, int], factor: int) -> int:
    return min(map_hw_for_factor(latent_hw, factor))


def available_resolutions(unet: torch.nn.Module, latent_hw: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """{"cross": (...), "self": (...)}: resolutions that have at least one layer, ascending."""
    found: dict[str, set[int]] = {"cross": set(), "self": set()}
    for layer in attention_layers(unet):
        found[layer.kind].add(resolution_of(latent_hw, layer.factor))
    return {k: tuple(sorted(v)) for k, v in found.items()}


@dataclass(frozen=True, kw_only=True)
class CaptureConfig:
    """What to capture. `latent_hw` is needed to tell which layers have which resolution."""

    latent_hw: tuple[int, int]
    cross_resolutions: tuple[int, ...] = ()
    self_resolutions: tuple[int, ...] = ()
    step_window: tuple[float, float] = (0.0, 1.0)  # fractions of the denoising steps
    guidance: bool = False  # batch is [uncond, cond]: keep only the conditional half

    def __post_init__(self) -> None:
        # Accept lists (e.g. straight from a LabelSpec) but store tuples: the config is hashable.
        for name in ("latent_hw", "cross_resolutions", "self_resolutions", "step_window"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        start, end = self.step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"step_window must satisfy 0 <= start < end <= 1, got {self.step_window}")
        if not self.cross_resolutions and not self.self_resolutions:
            raise ValueError("CaptureConfig: ask for at least one cross or self resolution")


class AttentionStore:
    """Running sums of head-mean attention probabilities per (kind, resolution).

    `cross(res)` / `self_attention(res)` return the average over heads, layers and captured
    steps, i.e. sum / number of layer calls. Before the first `begin_step` every call is
    captured (handy for a single UNet call); after it, only steps inside the window.
    """

    def __init__(self, config: CaptureConfig):
        self.config = config
        self._sums: dict[tuple[Kind, int], torch.Tensor] = {}
        self._counts: dict[tuple[Kind, int], int] = {}
        self._hw: dict[int, tuple[int, int]] = {}
        self.active = True
        self.steps_captured = 0

    def begin_step(self, step: int, num_steps: int) -> None:
        """Called by the denoising loop before each UNet call.

        A step covers the fraction [step/n, (step+1)/n); it is captured when that span
        overlaps the window, so any non-empty window captures at least one step.
        """
        if num_steps < 1 or not 0 <= step < num_steps:
            raise ValueError(f"begin_step: need 0 <= step < num_steps, got {step}/{num_steps}")
        start, end = self.config.step_window
        self.active = step / num_steps < end and (step + 1) / num_steps > start
        if self.active:
            self.steps_captured += 1

    def add(self, kind: Kind, resolution: int, hw: tuple[int, int], probs: torch.Tensor) -> None:
        """Add one layer call's head-mean probabilities [B, h*w, keys]."""
        if not self.active:
            return
        key = (kind, resolution)
        probs = probs.detach().float()
        if key in self._sums:
            if self._sums[key].shape != probs.shape:
                raise RuntimeError(
                    f"{kind}-attention at resolution {resolution}: got maps of shape "
                    f"{tuple(probs.shape)} after {tuple(self._sums[key].shape)}; use one store per batch"
                )
            self._sums[key].add_(probs)
            self._counts[key] += 1
        else:
            self._sums[key] = probs.clone()
            self._counts[key] = 1
            self._hw[resolution] = hw

    def _average(self, kind: Kind, resolution: int) -> torch.Tensor:
        key = (kind, resolution)
        if key not in self._sums:
            have = sorted(f"{k}@{r}" for k, r in self._sums)
            raise KeyError(
                f"no {kind}-attention captured at resolution {resolution} (captured: {have or 'nothing'}); "
                "was it requested in CaptureConfig, and did a step inside the window run?"
            )
        return self._sums[key] / self._counts[key]

    def cross(self, resolution: int) -> torch.Tensor:
        """[B, h*w, T]: pixel -> token probabilities (rows sum to 1 over T)."""
        return self._average("cross", resolution)

    def self_attention(self, resolution: int) -> torch.Tensor:
        """[B, h*w, h*w]: pixel -> pixel probabilities (rows sum to 1)."""
        return self._average("self", resolution)

    def map_hw(self, resolution: int) -> tuple[int, int]:
        if resolution in self._hw:
            return self._hw[resolution]
        # Not captured yet: derive it from the latent size (resolution = shorter side).
        for factor in (2**i for i in range(12)):
            if resolution_of(self.config.latent_hw, factor) == resolution:
                return map_hw_for_factor(self.config.latent_hw, factor)
        raise KeyError(f"resolution {resolution} does not occur for latent {self.config.latent_hw}")

    def count(self, kind: Kind, resolution: int) -> int:
        """How many layer calls were summed (layers x captured steps)."""
        return self._counts.get((kind, resolution), 0)

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._hw.clear()
        self.active = True
        self.steps_captured = 0


class CapturingAttnProcessor:
    """Plain softmax attention (what AttnProcessor2_0 computes) that also records probabilities.

    Mirrors AttnProcessor2_0: spatial_norm, 4-D inputs, attention masks via
    `attn.prepare_attention_mask`, group_norm, norm_cross, norm_q/norm_k, output projection,
    residual connection and rescale_output_factor. The scores use `attn.scale`.
    """

    def __init__(self, store: AttentionStore, kind: Kind, resolution: int, hw: tuple[int, int]):
        self.store = store
        self.kind = kind
        self.resolution = resolution
        self.hw = hw

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size = hidden_states.shape[0]
        key_length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if query.shape[2] != self.hw[0] * self.hw[1]:
            raise RuntimeError(
                f"capturing {self.kind}-attention at resolution {self.resolution}: expected "
                f"{self.hw[0]}x{self.hw[1]} queries, got {query.shape[2]}; the latent size differs "
                "from CaptureConfig.latent_hw"
            )

        hidden_states = self._attend(attn, query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(self, attn, query, key, value, mask) -> torch.Tensor:
        """Attention output; records head-mean probabilities when the store is active.

        Only what is recorded is computed with an explicit softmax: steps outside the window
        and, under CFG, the unconditional half go through SDPA like every other layer.
        """
        batch = query.shape[0]
        if not self.store.active:
            return _sdpa(attn, query, key, value, mask)
        if not self.store.config.guidance:
            return self._attend_recorded(attn, query, key, value, mask)
        if batch % 2:
            raise RuntimeError(f"guidance=True needs an even batch ([uncond, cond]), got {batch}")
        half = batch // 2
        split_mask = (None, None) if mask is None else (mask[:half], mask[half:]) if mask.shape[0] == batch else (mask, mask)
        uncond = _sdpa(attn, query[:half], key[:half], value[:half], split_mask[0])
        cond = self._attend_recorded(attn, query[half:], key[half:], value[half:], split_mask[1])
        return torch.cat([uncond.to(cond.dtype), cond])

    def _attend_recorded(self, attn, query, key, value, mask) -> torch.Tensor:
        """Explicit softmax attention, a chunk of heads at a time; adds the head mean to the store."""
        batch, heads, n_q, _ = query.shape
        n_k = key.shape[2]
        chunk = max(1, PROBS_CHUNK_ELEMENTS // max(1, batch * n_q * n_k))
        outputs, probs_sum = [], None
        for h0 in range(0, heads, chunk):
            sl = slice(h0, h0 + chunk)
            # float32 scores: fp16 QK^T can overflow (why SD 2.x sets upcast_attention).
            scores = torch.matmul(query[:, sl].float(), key[:, sl].float().transpose(-1, -2)) * attn.scale
            if mask is not None:
                m = mask[:, sl] if mask.shape[1] > 1 else mask
                if m.dtype == torch.bool:
                    scores = scores.masked_fill(~m, float("-inf"))
                else:
                    scores = scores + m.float()
            probs = scores.softmax(dim=-1)
            del scores
            outputs.append(torch.matmul(probs.to(value.dtype), value[:, sl]))
            part = probs.sum(dim=1)
            probs_sum = part if probs_sum is None else probs_sum + part
            del probs
        self.store.add(self.kind, self.resolution, self.hw, probs_sum / heads)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def _sdpa(attn, query, key, value, mask) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=attn.scale
    )


@dataclass(frozen=True)
class PlannedLayer:
    kind: Kind
    resolution: int
    hw: tuple[int, int]


def capture_plan(unet: torch.nn.Module, config: CaptureConfig) -> dict[str, PlannedLayer]:
    """Processor name -> what it captures, for the layers the config asks for.

    Raises ValueError naming the available resolutions when a requested one has no layer, and
    when a self-attention map would be too large to hold.
    """
    wanted = {("cross", r) for r in config.cross_resolutions} | {("self", r) for r in config.self_resolutions}
    plan: dict[str, PlannedLayer] = {}
    for layer in attention_layers(unet):
        hw = map_hw_for_factor(config.latent_hw, layer.factor)
        if (layer.kind, min(hw)) in wanted:
            plan[layer.name] = PlannedLayer(layer.kind, min(hw), hw)
    missing = sorted(wanted - {(p.kind, p.resolution) for p in plan.values()})
    if missing:
        avail = available_resolutions(unet, config.latent_hw)
        kind, res = missing[0]
        raise ValueError(
            f"no {kind}-attention layer at resolution {res} for latent {config.latent_hw[0]}x"
            f"{config.latent_hw[1]}; available {kind} resolutions: {list(avail[kind])}"
        )
    for p in plan.values():
        cells = p.hw[0] * p.hw[1]
        if p.kind == "self" and cells > MAX_SELF_TOKENS:
            raise ValueError(
                f"self-attention at resolution {p.resolution} is {p.hw[0]}x{p.hw[1]} = {cells} cells, "
                f"i.e. a {cells}x{cells} map per image and head; the limit is {MAX_SELF_TOKENS} cells. "
                "Use a smaller self resolution (e.g. 32)."
            )
    return plan


def _check_replaceable(name: str, processor: object) -> None:
    if not isinstance(processor, _PLAIN_PROCESSORS):
        raise ValueError(
            f"attention layer {name} uses {type(processor).__name__}; attention capture only "
            f"replaces plain softmax processors ({', '.join(p.__name__ for p in _PLAIN_PROCESSORS)}), "
            "replacing this one would change what the model generates"
        )


@contextmanager
def capture_attention(unet: torch.nn.Module, config: CaptureConfig) -> Iterator[AttentionStore]:
    """Install capturing processors on the requested layers; yield the store; restore.

    The original processors come back in `finally`, also when the body raises.
    """
    plan = capture_plan(unet, config)
    originals = dict(unet.attn_processors)
    for name in plan:
        _check_replaceable(name, originals[name])
    store = AttentionStore(config)
    installed = dict(originals)
    for name, p in plan.items():
        installed[name] = CapturingAttnProcessor(store, p.kind, p.resolution, p.hw)
    # set_attn_processor pops from the dict it is given: always hand it a copy.
    unet.set_attn_processor(dict(installed))
    try:
        yield store
    finally:
        unet.set_attn_processor(dict(originals))
