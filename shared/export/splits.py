"""Deterministic train/val/test assignment.

A sample's split depends only on (job seed, sample index, ratios): it is a hash of the
first two mapped to [0, 1) and compared with the cumulative ratios. It never depends on
which other samples exist or in which order they are seen, so a resumed run, a sharded
run and a run that lost a few samples all put every sample in the same split.

The price of being pure per index: nothing forces a split with a non-zero ratio to be
non-empty. With few samples (say 5 at 0.8/0.1/0.1) `val` or `test` can come out empty,
and the exact counts drift around `ratio * n` like a binomial draw. That is deliberate:
balancing the counts would need the whole set of indexes and would move samples
between splits when the set changes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

# Cumulative ratios are taken in this order whatever order the spec's mapping has
# (YAML and JSON keep the user's order), so reordering the keys never moves a sample.
SPLIT_ORDER = ("train", "val", "test")

_HASH_DOMAIN = b"dsgen/split/v1"


def _ordered(ratios: Mapping[str, float]) -> list[tuple[str, float]]:
    known = [(name, ratios[name]) for name in SPLIT_ORDER if name in ratios]
    others = sorted((name, r) for name, r in ratios.items() if name not in SPLIT_ORDER)
    return known + others


def split_draw(seed: int, index: int) -> float:
    """A number in [0, 1) that is a pure function of (seed, index).

    sha256 rather than `hash()` (salted per process) or numpy (whose generators are
    allowed to change between releases): the split of a published dataset must not move
    when Python or numpy is upgraded.
    """
    digest = hashlib.sha256(_HASH_DOMAIN + f":{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(seed: int, index: int, ratios: Mapping[str, float]) -> str:
    """The split of sample `index` of a job with `seed` and split `ratios`."""
    ordered = [(name, r) for name, r in _ordered(ratios) if r > 0]
    if not ordered:
        raise ValueError("split ratios: at least one split needs a ratio > 0")
    total = sum(r for _, r in ordered)
    draw = split_draw(seed, index) * total  # tolerate ratios that add up to 1 +- rounding
    cumulative = 0.0
    for name, ratio in ordered:
        cumulative += ratio
        if draw < cumulative:
            return name
    return ordered[-1][0]  # draw == total after float rounding


def assign_splits(seed: int, indexes: Iterable[int], ratios: Mapping[str, float]) -> dict[int, str]:
    """{sample index: split} for every index; each entry as `assign_split` gives it."""
    return {index: assign_split(seed, index, ratios) for index in indexes}
