"""Refinement math on hand-made maps."""
from __future__ import annotations

import pytest
import torch

from worker.labels import refine

torch.set_num_threads(1)


def _stochastic(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=g).softmax(dim=-1)


def test_identity_self_attention_gives_maps_back():
    maps = torch.rand(3, 16)
    out = refine.propagate(torch.eye(16), maps, tau=4)
    torch.testing.assert_close(out, maps)


@pytest.mark.parametrize("tau", [0, 1, 2, 4])
def test_propagate_equals_matrix_power(tau):
    s = _stochastic(9)
    maps = torch.rand(2, 9)
    expected = (torch.linalg.matrix_power(s, tau) @ maps.T).T
    torch.testing.assert_close(refine.propagate(s, maps, tau), expected)


def test_propagate_known_values():
    # S averages each pixel with its neighbour: one step spreads a spike over two pixels.
    s = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    a = torch.tensor([[0.0, 0.0, 1.0]])
    torch.testing.assert_close(refine.propagate(s, a, 1), torch.tensor([[0.0, 0.5, 1.0]]))
    torch.testing.assert_close(refine.propagate(s, a, 2), torch.tensor([[0.25, 0.75, 1.0]]))


def test_propagate_rejects_bad_shapes():
    with pytest.raises(ValueError):
        refine.propagate(torch.eye(4), torch.rand(2, 5), 1)
    with pytest.raises(ValueError):
        refine.propagate(torch.eye(4), torch.rand(2, 4), -1)


def test_minmax_normalise_per_class():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[0.1, 0.2], [0.3, 0.1]], [[7.0, 7.0], [7.0, 7.0]]])
    out = refine.minmax_normalise(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(out[2], torch.zeros(2, 2))  # constant map: no evidence anywhere


def test_ignore_band():
    scores = torch.tensor([[[0.55, 0.7, 0.3, 0.6, 0.5, 0.49]]]).reshape(1, 1, 6)
    semantic, best = refine.label_with_ignore_band(scores, [3], 0.6, 0.5)
    assert semantic.dtype == torch.uint8
    assert semantic.tolist() == [[255, 3, 0, 3, 255, 0]]
    torch.testing.assert_close(best, scores[0])


def test_ignore_band_argmax_between_classes():
    scores = torch.tensor([[[0.9, 0.2, 0.55]], [[0.8, 0.7, 0.1]]])
    semantic, _ = refine.label_with_ignore_band(scores, [1, 2], 0.6, 0.5)
    assert semantic.tolist() == [[1, 2, 255]]


def test_class_ids_validated():
    with pytest.raises(ValueError, match="1..254"):
        refine.label_with_ignore_band(torch.zeros(1, 2, 2), [255], 0.6, 0.5)
    with pytest.raises(ValueError, match="class ids"):
        refine.label_by_threshold(torch.zeros(2, 2, 2), [1], 0.4)


def test_daam_threshold_and_argmax():
    scores = torch.tensor([[[0.5, 0.39, 0.9, 0.45]], [[0.41, 0.2, 0.95, 0.1]]])
    semantic, _ = refine.label_by_threshold(scores, [4, 7], 0.4)
    assert semantic.tolist() == [[4, 0, 7, 4]]


def test_daam_scores_are_normalised_and_upsampled():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    out = refine.daam_scores(maps, (8, 8))
    assert out.shape == (1, 8, 8)
    assert out.min() >= 0 and out.max() <= 1
    assert out[0, -1, -1] == pytest.approx(1.0) and out[0, 0, 0] == pytest.approx(0.0)


def test_token_groups_are_averaged():
    cross = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])  # 2 pixels, 4 tokens
    maps = refine.token_group_maps(cross, [[1, 3], [2], []])
    torch.testing.assert_close(maps, torch.tensor([[0.3, 0.2], [0.3, 0.2], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="out of range"):
        refine.token_group_maps(cross, [[4]])


def test_class_cross_maps_upsample_and_average():
    # Token 1 attends to the left half at 2x2 and everywhere at 4x4.
    low = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 2x2 grid, 2 tokens
    high = torch.zeros(16, 2)
    high[:, 1] = 0.5
    out = refine.class_cross_maps([(low, (2, 2)), (high, (4, 4))], [[1]], (4, 4))
    assert out.shape == (1, 4, 4)
    assert (out >= 0).all()
    assert out[0, :, 0].mean() > out[0, :, 3].mean()  # left stronger
    # A constant map stays constant under bicubic resizing.
    const = torch.full((4, 2), 0.25)
    torch.testing.assert_close(refine.class_cross_maps([(const, (2, 2))], [[0]], (8, 8)), torch.full((1, 8, 8), 0.25))


def test_refined_scores_spread_class_over_its_region():
    # 4 pixels in two groups {0,1} and {2,3}; self-attention mixes within a group only.
    s = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    a = torch.tensor([[[1.0, 0.0], [0.1, 0.0]]])  # the class fires on pixel 0 only
    scores = refine.refined_scores(a, s, tau=4, image_hw=(2, 2))
    torch.testing.assert_close(scores, torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]))


def test_peak_attention_is_raw_maximum():
    maps = torch.tensor([[[0.1, 0.3]], [[0.02, 0.01]]])
    assert refine.peak_attention(maps) == pytest.approx([0.3, 0.02])
