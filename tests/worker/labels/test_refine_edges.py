"""Edge-aware refinement: score maps snap to the guide image's edges."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.labels.refine import auto_radius, guided_filter


def _scene():
    # A red disc on grey; the "attention" is a blurry, shrunken blob from a 8x8 grid.
    yy, xx = np.mgrid[0:32, 0:32]
    disc = (xx - 13) ** 2 + (yy - 17) ** 2 <= 8 ** 2
    image = np.full((32, 32, 3), 128, np.uint8)
    image[disc] = (220, 40, 40)
    coarse = F.adaptive_avg_pool2d(torch.from_numpy(disc.astype(np.float32))[None, None], 8)
    blob = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)[0]
    return image, disc, blob


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_guided_scores_follow_the_image_edges():
    image, disc, blob = _scene()
    out = guided_filter(blob, image, radius=2)
    assert out.shape == blob.shape and 0 <= out.min() and out.max() <= 1
    before, after = _iou(blob[0].numpy() >= 0.5, disc), _iou(out[0].numpy() >= 0.5, disc)
    assert after > before + 0.05 and after > 0.9
    # edge pixels are decided by the image: inside the disc high, outside low
    ring_out = (np.abs(np.hypot(*(np.mgrid[0:32, 0:32] - np.array([17, 13])[:, None, None])) - 9.5) < 0.7)
    assert out[0].numpy()[ring_out].mean() < blob[0].numpy()[ring_out].mean()


def test_flat_guide_leaves_a_smooth_map_smooth_and_sizes_are_checked():
    flat = np.full((16, 16, 3), 90, np.uint8)
    p = torch.linspace(0, 1, 16).repeat(16, 1)[None]
    out = guided_filter(p, flat, radius=1)
    torch.testing.assert_close(out[:, :, 2:-2], p[:, :, 2:-2], atol=1e-3, rtol=0)  # a ramp is its own local fit
    with pytest.raises(ValueError, match="differ in size"):
        guided_filter(p, np.zeros((8, 8, 3), np.uint8), radius=1)
    assert auto_radius((32, 32)) == 2 and auto_radius((512, 768)) == 32
