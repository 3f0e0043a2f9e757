"""Deterministic train/val/test assignment with exact counts.

The counts come from the ratios by the largest-remainder method (each split gets the floor
of `ratio * n`, the samples left over go to the largest fractional parts), and every split
with a ratio above 0 gets at least one sample when there are enough samples: 0.8/0.1/0.1 of
48 is 38/5/5, never an empty `val` (YOLO's data.yaml would then lack `val:`).

Which samples: the indexes are ranked by a hash of (job seed, index) and cut in that order,
train first. So the assignment is a pure function of (seed, set of indexes, ratios): the
same job gives the same splits on every machine and in every run, a resumed or sharded run
the same as an undisturbed one, and reordering the ratio keys moves nothing.

A job's exports pass `total` (the job's `num_images`): the counts and the ranking are then
over every index the job plans, 0 .. total-1, so a sample's split is a pure function of
(seed, index, total, ratios), known to the shard that makes the sample before any other
shard has run (each shard exports its own samples, finalisation merges those fragments).
A sample the labeler drops keeps its slot: its split has one sample fewer than planned.
For a job without dropped samples this is the same assignment as ranking its indexes.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache

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


def assign_splits(seed: int, indexes: Iterable[int], ratios: Mapping[str, float],
                  total: int | None = None) -> dict[int, str]:
    """{sample index: split} for every index, with the counts of `split_counts`: over the
    indexes given, or with `total` over all of 0 .. total-1 (see the module docstring)."""
    if total is None:
        ranked = sorted(set(indexes), key=lambda i: (split_draw(seed, i), i))
        out: dict[int, str] = {}
        position = 0
        for name, count in split_counts(len(ranked), ratios).items():
            for i in ranked[position:position + count]:
                out[i] = name
            position += count
        return out
    cuts, names = _cuts(seed, total, tuple(sorted(ratios.items())))
    out = {}
    for i in indexes:
        if not 0 <= i < total:
            raise ValueError(f"sample index {i} is outside the job's 0..{total - 1}")
        out[i] = names[bisect.bisect_left(cuts, (split_draw(seed, i), i))]
    return out


@lru_cache(maxsize=16)
def _cuts(seed: int, total: int, ratios: tuple[tuple[str, float], ...]) -> tuple[list[tuple[float, int]], list[str]]:
    """The rank keys where each split ends, for the ranking of 0 .. total-1: a sample goes to
    the first split whose last key is >= its own. Computed once per job and process (O(total)
    hashes, then a few keys kept), so a shard's lookups are O(log splits) each."""
    counts = [(name, c) for name, c in split_counts(total, dict(ratios)).items() if c > 0]
    draws = [split_draw(seed, i) for i in range(total)]
    ranked = sorted(range(total), key=draws.__getitem__)  # stable: equal draws by index
    cuts, names, position = [], [], 0
    for name, count in counts:
        position += count
        last = ranked[position - 1]
        cuts.append((draws[last], last))
        names.append(name)
    return cuts, names
