"""Deterministic train/val/test assignment with exact counts.

The counts come from the ratios by the largest-remainder method (each split gets the floor
of `ratio * n`, the samples left over go to the largest fractional parts), and every split
with a ratio above 0 gets at least one sample when there are enough samples: 0.8/0.1/0.1 of
48 is 38/5/5, never an empty `val` (YOLO's data.yaml would then lack `val:`).

Which samples: the indexes are ranked by a hash of (job seed, index) and cut in that order,
train first. So the assignment is a pure function of (seed, set of indexes, ratios): the
same job gives the same splits on every machine and in every run, a resumed or sharded run
the same as an undisturbed one, and reordering the ratio keys moves nothing.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

# Splits are cut in this order whatever order the spec's mapping has (YAML and JSON keep the
# user's order), so reordering the keys never moves a sample.
SPLIT_ORDER = ("train", "val", "test")

_HASH_DOMAIN = b"dsgen/split/v1"


def _ordered(ratios: Mapping[str, float]) -> list[tuple[str, float]]:
    known = [(name, ratios[name]) for name in SPLIT_ORDER if name in ratios]
    others = sorted((name, r) for name, r in ratios.items() if name not in SPLIT_ORDER)
    return known + others


def split_draw(seed: int, index: int) -> float:
    """A number in [0, 1) that is a pure function of (seed, index): the sample's rank key.

    sha256 rather than `hash()` (salted per process) or numpy (whose generators are
    allowed to change between releases): the split of a published dataset must not move
    when Python or numpy is upgraded.
    """
    digest = hashlib.sha256(_HASH_DOMAIN + f":{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_counts(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Samples per split for `n` samples: largest remainder, ties to the earlier split, then
    one sample moved to each empty split with a ratio > 0 from the largest split."""
    ordered = [(name, r) for name, r in _ordered(ratios) if r > 0]
    if not ordered:
        raise ValueError("split ratios: at least one split needs a ratio > 0")
    total = sum(r for _, r in ordered)
    exact = [(name, n * r / total) for name, r in ordered]
    counts = {name: math.floor(x) for name, x in exact}
    left = n - sum(counts.values())
    by_remainder = sorted(range(len(exact)), key=lambda k: (-(exact[k][1] - math.floor(exact[k][1])), k))
    for k in by_remainder[:left]:
        counts[exact[k][0]] += 1
    if n >= len(ordered):
        for name, _ in ordered:
            if counts[name] == 0:
                donor = max(counts, key=lambda m: (counts[m], -[o for o, _ in ordered].index(m)))
                counts[donor] -= 1
                counts[name] += 1
    return counts


def assign_splits(seed: int, indexes: Iterable[int], ratios: Mapping[str, float]) -> dict[int, str]:
    """{sample index: split} for every index, with the counts of `split_counts`."""
    ranked = sorted(set(indexes), key=lambda i: (split_draw(seed, i), i))
    out: dict[int, str] = {}
    position = 0
    for name, count in split_counts(len(ranked), ratios).items():
        for i in ranked[position:position + count]:
            out[i] = name
        position += count
    return out
