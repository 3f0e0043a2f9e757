"""Attention control: one attention processor, a chain of small controls, on the layers a job needs.

Every behaviour the engine adds to attention (recording maps for labels, rectified
cross-attention for mask-to-image, and the controls methods add later) is a *control*: a
small object plugged into `ControlledAttnProcessor`, the one processor that computes the
attention maths here. It mirrors diffusers' `AttnProcessor2_0` (spatial_norm, 4-D inputs,
encoder attention masks, group_norm, norm_cross, norm_q/norm_k, output projection, residual
and rescale_output_factor) and is installed through diffusers' own extension point
(`unet.attn_processors` / `unet.set_attn_processor`) by `control_attention`, which restores the
original processors in `finally`. Layers no control wants keep their original processor.

The control protocol (`AttentionControl`; every hook is optional):

- `wants(site) -> bool`: does the control act on this layer? A `Site` names the layer, its kind
  ("cross": pixel -> text token, "self": pixel -> pixel), its factor and its map size `hw`.
- `branches`: which halves of a classifier-free-guidance batch ([uncond, cond]) it acts on:
  ("cond",) by default — labels and rectification read/steer the conditional branch only;
  ("uncond", "cond") for edits that must act on both (e.g. Shape-Guided editing).
  Without guidance every row is "cond".
- `active() -> bool`: is it acting in this UNet call (step windows)? `begin_step(i, n)` is
  called by the denoising loop before each UNet call.
- `logits(site, call) -> Tensor | None`, before the softmax: a bool mask (True = may attend)
  or an additive float bias, broadcastable to [rows, heads, queries, keys]. `call.samples`
  indexes the job's samples in this call (the same for both CFG halves), so per-sample data is
  sliced with it. Masks from every control (and the model's own encoder mask) are combined;
  a control must never mask a whole row (rectified attention leaves the start token free).
- `probs(site, call, probs, heads) -> Tensor`, after the softmax, for a chunk of heads
  ([rows, len(heads), queries, keys]); set `edits_probs = True`. No renormalisation is done
  after it (Shape-Guided editing's inside-outside scaling relies on that).
- `record(site, call, probs)`: sees the head-mean probabilities [rows, queries, keys] after
  every edit; set `records = True`. Gradients flow through it when the UNet call is run with
  grad enabled (self-guidance energies on cross-attention maps); `AttentionStore` detaches.

Cost: while only logit controls are active, the call stays one fused SDPA with `attn_mask` —
no probabilities are materialised. Only controls that edit or record force the explicit
`softmax(QK^T * scale)`, computed a few heads at a time (`PROBS_CHUNK_ELEMENTS`), and only on
the rows (CFG half) they act on; the other half stays on SDPA.

Two methods this protocol is meant to carry (see docs/methods.md):
- Shape-Guided editing: a cross-attention control with `edits_probs` multiplying
  inside-token columns by the region mask and outside-token columns by (1 - mask) (both x 2.5),
  and a self-attention control multiplying `probs` by `(M - 1) * s + 1` with M[i, j] = 1 when
  queries i and j share a region; regions come from `regions_at(site, labels)`.
- Self-guidance: a recorder keeping the current step's cross-attention maps with their graph
  (`StepMapRecorder`), read by energies whose gradient w.r.t. the latent steers the noise.

Vocabulary:
- factor: how much a layer's map is downsampled relative to the latent (1, 2, 4, ...);
- resolution: the shorter side of a layer's map in cells (16 for SD 1.x at 512 px, factor 4);
- kind: "cross" (pixel -> text token) or "self" (pixel -> pixel).

Memory: `AttentionStore` keeps one float32 running sum per (kind, resolution) plus a count,
never per-step tensors. Self-attention maps are N x N per image (N = h*w): 32x32 is 1024^2 (4 MiB
per image), 64x64 would be 4096^2 (64 MiB per image, and that per head while computing), so
self-attention capture is refused above `MAX_SELF_TOKENS` cells.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

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

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sums: fixed by batch, resolutions and tokens, not by steps."""
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._hw.clear()
        self.active = True
        self.steps_captured = 0


@dataclass(frozen=True)
class Site:
    """An attention layer as controls see it, for one latent size."""

    name: str  # processor name as in `unet.attn_processors`
    kind: Kind
    resolution: int
    hw: tuple[int, int]  # map size (queries = h * w)


@dataclass(frozen=True)
class Call:
    """Which rows a control is acting on in this call."""

    branch: Literal["uncond", "cond"]
    samples: slice  # indexes of the job's samples (per-sample data is sliced with it)


class AttentionControl:
    """Base of every control: all hooks are no-ops (see the module docstring)."""

    branches: ClassVar[tuple[str, ...]] = ("cond",)
    edits_probs: ClassVar[bool] = False
    records: ClassVar[bool] = False

    def wants(self, site: Site) -> bool:
        return False

    def begin_step(self, step: int, num_steps: int) -> None:
        pass

    def active(self) -> bool:
        return True

    def logits(self, site: Site, call: Call) -> torch.Tensor | None:
        return None

    def probs(self, site: Site, call: Call, probs: torch.Tensor, heads: slice) -> torch.Tensor:
        return probs

    def record(self, site: Site, call: Call, probs: torch.Tensor) -> None:
        pass


class AttentionRecorder(AttentionControl):
    """Today's capture: head-mean probabilities of the planned layers into an AttentionStore."""

    records = True

    def __init__(self, store: AttentionStore, layers: Sequence[str] | None = None):
        self.store = store
        self.layers = None if layers is None else frozenset(layers)

    def wants(self, site: Site) -> bool:
        return self.layers is None or site.name in self.layers

    def begin_step(self, step: int, num_steps: int) -> None:
        self.store.begin_step(step, num_steps)

    def active(self) -> bool:
        return self.store.active

    def record(self, site: Site, call: Call, probs: torch.Tensor) -> None:
        self.store.add(site.kind, site.resolution, site.hw, probs)


class StepMapRecorder(AttentionControl):
    """The current step's head-mean cross-attention maps, graph kept (for guidance energies).

    `maps` holds one [B, h*w, T] tensor per layer call of the running step; `begin_step`
    clears it. Run the UNet with grad enabled and the maps stay differentiable w.r.t. the latent.
    """

    records = True

    def __init__(self, resolutions: Sequence[int] | None = None):
        self.resolutions = None if resolutions is None else frozenset(resolutions)
        self.maps: list[tuple[Site, torch.Tensor]] = []

    def wants(self, site: Site) -> bool:
        return site.kind == "cross" and (self.resolutions is None or site.resolution in self.resolutions)

    def begin_step(self, step: int, num_steps: int) -> None:
        self.maps.clear()

    def record(self, site: Site, call: Call, probs: torch.Tensor) -> None:
        self.maps.append((site, probs))


def regions_at(site: Site, labels: torch.Tensor) -> torch.Tensor:
    """Label maps [B, H, W] (any integer size) nearest-resized to the layer: [B, h*w]."""
    small = torch.nn.functional.interpolate(labels[:, None].float(), size=site.hw, mode="nearest")
    return small[:, 0].flatten(1).to(labels.dtype)


def _combine(masks: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor | None:
    """One SDPA attn_mask from several: bool masks are ANDed; with any float mask, an additive bias."""
    if not masks:
        return None
    if len(masks) == 1:
        return masks[0]
    floats = [m for m in masks if m.dtype != torch.bool]
    bools = [m for m in masks if m.dtype == torch.bool]
    allowed = None
    for m in bools:
        allowed = m if allowed is None else allowed & m
    if not floats:
        return allowed
    bias = floats[0].to(dtype)
    for m in floats[1:]:
        bias = bias + m.to(dtype)
    if allowed is not None:
        bias = torch.where(allowed, bias, torch.tensor(float("-inf"), dtype=bias.dtype, device=bias.device))
    return bias


class ControlledAttnProcessor:
    """Softmax attention (what AttnProcessor2_0 computes) with a chain of controls.

    `guidance`: the batch is [uncond, cond]; controls then act on the halves they name.
    """

    def __init__(self, site: Site, controls: Sequence[AttentionControl], guidance: bool = False):
        self.site = site
        self.controls = tuple(controls)
        self.guidance = guidance

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

        hw = self.site.hw
        if query.shape[2] != hw[0] * hw[1]:
            raise RuntimeError(
                f"capturing {self.site.kind}-attention at resolution {self.site.resolution}: expected "
                f"{hw[0]}x{hw[1]} queries, got {query.shape[2]}; the latent size differs "
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
        """Split the batch into the CFG halves the active controls need; attend each."""
        batch = query.shape[0]
        active = [c for c in self.controls if c.active()]
        if not active:
            return _sdpa(attn, query, key, value, mask)
        if not self.guidance:
            return self._attend_rows(attn, query, key, value, mask, active, Call("cond", slice(0, batch)))
        if batch % 2:
            raise RuntimeError(f"guidance=True needs an even batch ([uncond, cond]), got {batch}")
        half = batch // 2
        outputs = []
        for rows, branch in ((slice(0, half), "uncond"), (slice(half, batch), "cond")):
            mine = [c for c in active if branch in c.branches]
            m = None if mask is None else mask[rows] if mask.shape[0] == batch else mask
            q, k, v = query[rows], key[rows], value[rows]
            if not mine:
                outputs.append(_sdpa(attn, q, k, v, m))
            else:
                outputs.append(self._attend_rows(attn, q, k, v, m, mine, Call(branch, slice(0, half))))
        dtype = outputs[-1].dtype
        return torch.cat([o.to(dtype) for o in outputs])

    def _masks(self, controls, call: Call, mask) -> list[torch.Tensor]:
        """The pre-softmax masks of these controls, after the model's own (already sliced to the rows)."""
        masks = [] if mask is None else [mask]
        for c in controls:
            m = c.logits(self.site, call)
            if m is not None:
                masks.append(m)
        return masks

    def _attend_rows(self, attn, query, key, value, mask, controls, call: Call) -> torch.Tensor:
        combined = _combine(self._masks(controls, call, mask), query.dtype)
        if not any(c.edits_probs or c.records for c in controls):
            return _sdpa(attn, query, key, value, combined)
        return self._attend_explicit(attn, query, key, value, combined, controls, call)

    def _attend_explicit(self, attn, query, key, value, mask, controls, call: Call) -> torch.Tensor:
        """Explicit softmax attention, a chunk of heads at a time: edits, then the head mean to recorders."""
        batch, heads, n_q, _ = query.shape
        n_k = key.shape[2]
        chunk = max(1, PROBS_CHUNK_ELEMENTS // max(1, batch * n_q * n_k))
        editors = [c for c in controls if c.edits_probs]
        recorders = [c for c in controls if c.records]
        outputs, probs_sum = [], None
        for h0 in range(0, heads, chunk):
            sl = slice(h0, h0 + chunk)
            probs = _softmax_scores(query[:, sl], key[:, sl], attn.scale, mask[:, sl] if mask is not None and
                                    mask.shape[1] > 1 else mask)
            for c in editors:
                probs = c.probs(self.site, call, probs, sl)
            outputs.append(torch.matmul(probs.to(value.dtype), value[:, sl]))
            if recorders:
                if probs_sum is None:
                    probs_sum = probs.sum(dim=1)
                else:
                    probs_sum.add_(probs.sum(dim=1))
            del probs
        if recorders:
            mean = probs_sum / heads
            for c in recorders:
                c.record(self.site, call, mean)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


class CapturingAttnProcessor(ControlledAttnProcessor):
    """A controlled processor whose only control records into an AttentionStore (plain capture)."""

    def __init__(self, store: AttentionStore, kind: Kind, resolution: int, hw: tuple[int, int], name: str = ""):
        super().__init__(Site(name, kind, resolution, tuple(hw)), [AttentionRecorder(store)], store.config.guidance)
        self.store = store


def _softmax_scores(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(scale * Q K^T + mask) in float32, [B, h, n_q, n_k], in one buffer.

    These probabilities are the largest tensor of a capturing step (1024^2 per head for a 32x32
    self-attention layer), so every pass over them counts: the scale is fused into the GEMM
    (baddbmm's alpha), the mask and the softmax are applied in place. float32 because fp16 QK^T
    can overflow (why SD 2.x sets upcast_attention)."""
    batch, heads, n_q, dim = query.shape
    n_k = key.shape[2]
    q = query.float().reshape(batch * heads, n_q, dim)
    k = key.float().reshape(batch * heads, n_k, dim)
    differentiable = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    scores = torch.empty(batch * heads, n_q, n_k, dtype=torch.float32, device=query.device)
    if differentiable:  # self-guidance and the training losses take gradients through these maps
        scores = torch.baddbmm(scores, q, k.transpose(1, 2), beta=0.0, alpha=scale)
    else:
        torch.baddbmm(scores, q, k.transpose(1, 2), beta=0.0, alpha=scale, out=scores)
    scores = scores.view(batch, heads, n_q, n_k)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    return scores.softmax(dim=-1) if differentiable else _softmax_(scores)


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, written over `x` (ATen's row-wise kernel reads a row before
    writing it); a copy where this build has no out= variant."""
    try:
        return torch.ops.aten._softmax.out(x, -1, False, out=x)
    except (RuntimeError, AttributeError):  # pragma: no cover - other builds
        return x.softmax(dim=-1)


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


def layer_sites(unet: torch.nn.Module, latent_hw: tuple[int, int]) -> list[Site]:
    """Every attention layer of the UNet as a Site for this latent size."""
    sites = []
    for layer in attention_layers(unet):
        hw = map_hw_for_factor(latent_hw, layer.factor)
        sites.append(Site(layer.name, layer.kind, min(hw), hw))
    return sites


def _processor_for(site: Site, chain: list[AttentionControl], guidance: bool) -> ControlledAttnProcessor:
    if len(chain) == 1 and isinstance(chain[0], AttentionRecorder):
        proc = CapturingAttnProcessor(chain[0].store, site.kind, site.resolution, site.hw, name=site.name)
        proc.guidance = guidance
        return proc
    return ControlledAttnProcessor(site, chain, guidance)


@contextmanager
def control_attention(
    unet: torch.nn.Module,
    controls: Sequence[AttentionControl],
    latent_hw: tuple[int, int],
    guidance: bool = False,
) -> Iterator[list[Site]]:
    """Install one controlled processor on every layer some control wants; yield those sites; restore.

    Controls run in the order given. The original processors come back in `finally`, also
    when the body raises. Layers no control wants keep their original processor object.
    """
    originals = dict(unet.attn_processors)
    chains: dict[str, tuple[Site, list[AttentionControl]]] = {}
    for site in layer_sites(unet, tuple(latent_hw)):
        chain = [c for c in controls if c.wants(site)]
        if chain:
            _check_replaceable(site.name, originals[site.name])
            chains[site.name] = (site, chain)
    installed = dict(originals)
    for name, (site, chain) in chains.items():
        installed[name] = _processor_for(site, chain, guidance)
    # set_attn_processor pops from the dict it is given: always hand it a copy.
    unet.set_attn_processor(dict(installed))
    try:
        yield [site for site, _ in chains.values()]
    finally:
        unet.set_attn_processor(dict(originals))


def begin_step(controls: Sequence[AttentionControl], step: int, num_steps: int) -> None:
    """Tell every control which denoising step the next UNet call is."""
    for c in controls:
        c.begin_step(step, num_steps)


def capture_controls(unet: torch.nn.Module, config: CaptureConfig) -> tuple[AttentionStore, AttentionRecorder]:
    """The store and the recorder control that capture what `config` asks for (checked here)."""
    plan = capture_plan(unet, config)
    store = AttentionStore(config)
    return store, AttentionRecorder(store, plan)


@contextmanager
def capture_attention(unet: torch.nn.Module, config: CaptureConfig) -> Iterator[AttentionStore]:
    """Install recording processors on the requested layers; yield the store; restore.

    The original processors come back in `finally`, also when the body raises.
    """
    store, recorder = capture_controls(unet, config)
    with control_attention(unet, [recorder], config.latent_hw, config.guidance):
        yield store
