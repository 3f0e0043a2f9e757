"""FreeMask's hardness-aware resampling: harder masks get more synthetic variants.

hardness(mask) = pixel-weighted mean of the segmenter's class-wise mean loss on real data over
the classes the mask contains; masks ranked by hardness (ascending) get
`min(1 + round((rank + 1) / N * K), K)` variants. Ties are broken by a permutation drawn from
the job seed, so the schedule is a pure function of (masks, class losses, K, seed).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.formats.records import IGNORE

_STREAM_TIES = 0x4A2D


def mask_hardness(semantic: np.ndarray, class_loss: Mapping[int, float]) -> float:
    """Pixel-weighted mean class loss of the classes in the mask (ignore pixels left out)."""
    ids, counts = np.unique(semantic[semantic != IGNORE], return_counts=True)
    pairs = [(class_loss[int(i)], int(n)) for i, n in zip(ids, counts) if int(i) in class_loss]
    if not pairs:
        return 0.0
    total = sum(n for _, n in pairs)
    return float(sum(loss * n for loss, n in pairs) / total)


def variants_by_hardness(hardness: Sequence[float], max_variants: int, seed: int) -> list[int]:
    """Variants per mask, in the masks' own order."""
    n = len(hardness)
    if n == 0:
        return []
    ties = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_TIES])).permutation(n)
    order = sorted(range(n), key=lambda i: (hardness[i], int(ties[i])))
    out = [0] * n
    for rank, i in enumerate(order):
        out[i] = min(1 + round((rank + 1) / n * max_variants), max_variants)
    return out
