"""UNet feature capture: down/mid/up block outputs at one denoising step, grouped by stride.

The detection adaptor (DiffusionEngine) reads the UNet's own multi-scale features in the pass
that makes the image. Features are taken with forward hooks on the blocks (a public torch
extension point) installed by `capture_features` and removed when it exits, whatever happens.
Only the chosen step's outputs are kept (the hooks ignore every other call), and under
classifier-free guidance only the conditional half of the batch.

Strides are in latent cells: a down block with a downsampler halves its input, an up block with
an upsampler doubles it; every down block but the last has a downsampler, every up block but
the last an upsampler (UNet2DConditionModel's layout for SD 1.x/2.x/SDXL and the builtins).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockFeature:
    name: str  # module path in the UNet: "down_blocks.0", "mid_block", "up_blocks.2"
    stride: int  # latent cells per feature cell
    channels: int


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """What to capture: `step` counts denoising steps (negative from the end; -1 = the last)."""

    step: int = -1
    guidance: bool = False  # batch is [uncond, cond]: keep only the conditional half
    blocks: tuple[str, ...] | None = None  # None: every down, mid and up block

    def step_index(self, num_steps: int) -> int:
        i = self.step if self.step >= 0 else num_steps + self.step
        if not 0 <= i < num_steps:
            raise ValueError(f"feature step {self.step} is outside a run of {num_steps} steps")
        return i


def feature_layout(unet: torch.nn.Module) -> list[BlockFeature]:
    """Every down, mid and up block output of the UNet with its stride and channels."""
    cfg = unet.config
    chans = list(cfg.block_out_channels)
    n = len(chans)
    out = []
    for i in range(len(unet.down_blocks)):
        out.append(BlockFeature(f"down_blocks.{i}", 2 ** min(i + 1, n - 1), chans[i]))
    if getattr(unet, "mid_block", None) is not None:
        out.append(BlockFeature("mid_block", 2 ** (n - 1), chans[-1]))
    rev = chans[::-1]
    for i in range(len(unet.up_blocks)):
        out.append(BlockFeature(f"up_blocks.{i}", 2 ** max(n - 2 - i, 0), rev[i]))
    return out


def level_layout(blocks: list[BlockFeature]) -> dict[int, list[BlockFeature]]:
    """Blocks grouped by stride, finest first; a level's features are concatenated in this order."""
    levels: dict[int, list[BlockFeature]] = {}
    for b in sorted(blocks, key=lambda b: b.stride):
        levels.setdefault(b.stride, []).append(b)
    return levels


class FeatureStore:
    """The block outputs of one step; `levels()` groups them by stride."""

    def __init__(self, config: FeatureConfig, blocks: list[BlockFeature]):
        self.config = config
        self.blocks = blocks
        self._active = False
        self._outputs: dict[str, torch.Tensor] = {}

    def begin_step(self, i: int, n: int) -> None:
        self._active = i == self.config.step_index(n)

    def capture_next_call(self) -> None:
        """Capture the next UNet call whatever its step (a single pass, as in training)."""
        self._active = True

    def _hook(self, name: str):
        def hook(_module, _args, output):
            if not self._active:
                return None
            h = output[0] if isinstance(output, tuple) else output
            if self.config.guidance:
                h = h.chunk(2)[1]
            self._outputs[name] = h.detach()
            return None

        return hook

    @property
    def captured(self) -> bool:
        return len(self._outputs) == len(self.blocks)

    def levels(self) -> dict[int, torch.Tensor]:
        """stride -> [B, C, h, w]: the level's block outputs concatenated on channels."""
        if not self.captured:
            missing = [b.name for b in self.blocks if b.name not in self._outputs]
            raise RuntimeError(f"no features captured for {', '.join(missing)} (was the step reached?)")
        return {
            stride: torch.cat([self._outputs[b.name] for b in group], dim=1)
            for stride, group in level_layout(self.blocks).items()
        }


@contextmanager
def capture_features(unet: torch.nn.Module, config: FeatureConfig) -> Iterator[FeatureStore]:
    """Hooks on the UNet's blocks for the duration of the `with` block (removed in `finally`)."""
    blocks = feature_layout(unet)
    if config.blocks is not None:
        unknown = sorted(set(config.blocks) - {b.name for b in blocks})
        if unknown:
            raise ValueError(f"unknown UNet blocks {unknown}; this UNet has {[b.name for b in blocks]}")
        blocks = [b for b in blocks if b.name in config.blocks]
    store = FeatureStore(config, blocks)
    handles = []
    try:
        for b in blocks:
            handles.append(unet.get_submodule(b.name).register_forward_hook(store._hook(b.name)))
        yield store
    finally:
        for h in handles:
            h.remove()
