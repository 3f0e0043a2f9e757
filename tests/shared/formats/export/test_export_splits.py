from collections import Counter

import pytest

from shared.formats.export.splits import assign_splits, split_counts, split_draw
from tests.support.processes import in_fresh_process

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_largest_remainder_counts():
    assert split_counts(48, RATIOS) == {"train": 38, "val": 5, "test": 5}
    assert split_counts(100, RATIOS) == {"train": 80, "val": 10, "test": 10}
    assert split_counts(10, {"train": 0.6, "val": 0.2, "test": 0.2}) == {"train": 6, "val": 2, "test": 2}
    assert split_counts(7, {"train": 1.0}) == {"train": 7}
    assert split_counts(0, RATIOS) == {"train": 0, "val": 0, "test": 0}


@pytest.mark.parametrize("n", range(3, 200))
def test_no_split_with_a_ratio_above_zero_is_empty(n):
    counts = Counter(assign_splits(5, range(n), RATIOS).values())
    assert set(counts) == {"train", "val", "test"} and sum(counts.values()) == n
    exact = split_counts(n, RATIOS)
    assert dict(counts) == exact
    for name, ratio in RATIOS.items():
        assert abs(exact[name] - n * ratio) < 1.5  # within one sample of the ratio (plus the non-empty rule)


def test_the_48_image_case_of_issue_13():
    counts = Counter(assign_splits(0, range(48), RATIOS).values())
    assert counts == {"train": 38, "val": 5, "test": 5}


def test_tiny_sets_fill_train_first():
    assert Counter(assign_splits(0, range(2), RATIOS).values()) == {"train": 2}
    assert Counter(assign_splits(0, range(1), RATIOS).values()) == {"train": 1}


def test_splits_are_deterministic_from_the_seed():
    here = {str(k): v for k, v in assign_splits(7, range(200), RATIOS).items()}
    assert in_fresh_process(f"from shared.formats.export.splits import assign_splits; RATIOS = {RATIOS!r}",
                            "{str(k): v for k, v in assign_splits(7, range(200), RATIOS).items()}") == here
    assert assign_splits(7, reversed(range(200)), RATIOS) == assign_splits(7, range(200), RATIOS)
    # A different job seed reshuffles: the assignment is not index-only.
    assert assign_splits(7, range(200), RATIOS) != assign_splits(8, range(200), RATIOS)


def test_key_order_of_the_ratios_does_not_move_samples():
    reordered = {"test": 0.1, "val": 0.1, "train": 0.8}
    assert assign_splits(3, range(500), reordered) == assign_splits(3, range(500), RATIOS)


def test_a_zero_ratio_split_gets_no_sample():
    counts = Counter(assign_splits(0, range(1000), {"train": 0.9, "val": 0.1, "test": 0.0}).values())
    assert counts == {"train": 900, "val": 100}


def test_train_only():
    assert set(assign_splits(5, range(100), {"train": 1.0}).values()) == {"train"}


def test_draw_is_uniform_in_unit_interval():
    draws = [split_draw(1, i) for i in range(2000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55


def test_known_values_stay_put():
    # Frozen: a change here moves samples of published datasets between splits.
    got = assign_splits(0, range(12), RATIOS)
    assert [got[i] for i in range(12)] == [
        "train", "test", "train", "val", "train", "train", "train", "train", "train", "train", "train", "train"]


def test_all_zero_ratios_are_refused():
    with pytest.raises(ValueError):
        assign_splits(0, [0], {"train": 0.0})


@pytest.mark.parametrize("n", [1, 2, 3, 10, 48, 101, 997])
def test_over_the_jobs_total_the_assignment_is_the_ranking_of_all_its_indexes(n):
    whole = assign_splits(9, range(n), RATIOS)
    assert assign_splits(9, range(n), RATIOS, total=n) == whole
    # a shard asking for its own indexes gets their splits in the whole job
    for start in range(0, n, 8):
        part = range(start, min(start + 8, n))
        assert assign_splits(9, part, RATIOS, total=n) == {i: whole[i] for i in part}


def test_over_the_total_a_dropped_sample_keeps_its_slot():
    whole = assign_splits(4, range(50), RATIOS, total=50)
    kept = [i for i in range(50) if i not in (3, 17)]
    assert assign_splits(4, kept, RATIOS, total=50) == {i: whole[i] for i in kept}
    # (without the total, the remaining 48 would be re-cut with exact counts over them)
    assert Counter(assign_splits(4, kept, RATIOS).values()) == split_counts(48, RATIOS)


def test_an_index_outside_the_total_is_refused():
    with pytest.raises(ValueError, match="outside"):
        assign_splits(0, [5], RATIOS, total=5)
