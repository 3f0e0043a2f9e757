from collections import Counter

import pytest

from shared.export.splits import assign_split, assign_splits, split_draw

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}
KNOWN_SPLITS_SEED0 = [
    "train", "test", "train", "test", "train", "val", "train", "train", "train", "train", "train", "train",
]


def test_split_of_a_sample_does_not_depend_on_the_other_samples():
    everything = assign_splits(7, range(1000), RATIOS)
    evens = assign_splits(7, range(0, 1000, 2), RATIOS)
    shuffled = assign_splits(7, reversed(range(1000)), RATIOS)
    assert all(evens[i] == everything[i] for i in evens)
    assert shuffled == everything


def test_split_is_a_pure_function_of_seed_and_index():
    assert [assign_split(7, i, RATIOS) for i in range(200)] == [assign_split(7, i, RATIOS) for i in range(200)]
    # A different job seed reshuffles: the assignment is not index-only.
    assert assign_splits(7, range(200), RATIOS) != assign_splits(8, range(200), RATIOS)


def test_key_order_of_the_ratios_does_not_move_samples():
    reordered = {"test": 0.1, "val": 0.1, "train": 0.8}
    assert assign_splits(3, range(500), reordered) == assign_splits(3, range(500), RATIOS)


def test_ratios_are_roughly_respected_on_1000_indexes():
    counts = Counter(assign_splits(11, range(1000), RATIOS).values())
    assert set(counts) == {"train", "val", "test"}
    # Binomial(1000, p): 5 standard deviations is ~63 for train and ~47 for val/test.
    assert abs(counts["train"] - 800) < 63
    assert abs(counts["val"] - 100) < 47
    assert abs(counts["test"] - 100) < 47


def test_a_zero_ratio_split_gets_no_sample():
    counts = Counter(assign_splits(0, range(1000), {"train": 0.9, "val": 0.1, "test": 0.0}).values())
    assert "test" not in counts
    assert counts["train"] > counts["val"] > 0


def test_train_only():
    assert set(assign_splits(5, range(100), {"train": 1.0}).values()) == {"train"}


def test_draw_is_uniform_in_unit_interval():
    draws = [split_draw(1, i) for i in range(2000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55


def test_known_values_stay_put():
    # Frozen: a change here moves samples of published datasets between splits.
    assert [assign_split(0, i, RATIOS) for i in range(12)] == KNOWN_SPLITS_SEED0


def test_all_zero_ratios_are_refused():
    with pytest.raises(ValueError):
        assign_split(0, 0, {"train": 0.0})

