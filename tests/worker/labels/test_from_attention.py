"""label_image and the resolution helpers, on hand-made stores and a tiny UNet."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.formats.spec import LabelSpec
from tests.support.tiny_unets import LATENT_HW, build
from worker.engine.attention import AttentionStore, CaptureConfig, capture_attention
from worker.labels.from_attention import capture_config, label_image, resolve_resolutions
from worker.labels.instances import decode_rle

torch.set_num_threads(1)


# ---- resolutions ---------------------------------------------------------------------------

def test_auto_resolutions_tiny_latent():
    unet, _ = build("sd1")  # cross/self at 16, 8, 4 for a 16x16 latent
    assert resolve_resolutions(unet, LATENT_HW, LabelSpec()) == ((4, 8), (16,))
    sdxl, _ = build("sdxl")  # cross/self at 8, 4
    assert resolve_resolutions(sdxl, LATENT_HW, LabelSpec()) == ((4, 8), (8,))


def test_auto_resolutions_sd_at_512px():
    unet, _ = build("sd1")  # same block layout as SD: a 64x64 latent gives 64, 32, 16
    assert resolve_resolutions(unet, (64, 64), LabelSpec()) == ((16, 32), (32,))
    # 768 px: latent 96 -> 96, 48, 24: 48 is over the auto cap, 24 is latent/4.
    assert resolve_resolutions(unet, (96, 96), LabelSpec()) == ((24,), (24,))


def test_auto_cross_falls_back_to_largest_small_resolution():
    sdxl, _ = build("sdxl")  # 8x8 latent: cross at 4 (factor 2) and 2 (factor 4)
    cross, self_res = resolve_resolutions(sdxl, (8, 8), LabelSpec())
    assert cross == (2, 4) and self_res == (4,)
    cross, _ = resolve_resolutions(sdxl, (32, 32), LabelSpec(mode="daam"))  # 16 and 8 exist
    assert cross == (8, 16)
    cross, _ = resolve_resolutions(sdxl, (256, 256), LabelSpec(mode="daam"))  # 128, 64: none <= 32
    assert cross == (64,)


def test_explicit_resolutions_and_errors():
    unet, _ = build("sd1")
    spec = LabelSpec(cross_resolutions=[16], self_resolution=16)
    assert resolve_resolutions(unet, LATENT_HW, spec) == ((16,), (16,))
    with pytest.raises(ValueError, match=r"cross_resolutions: .*resolution 32.*available cross resolutions: \[4, 8, 16\]"):
        resolve_resolutions(unet, LATENT_HW, LabelSpec(cross_resolutions=[32]))
    with pytest.raises(ValueError, match=r"self_resolution: .*available self resolutions: \[4, 8, 16\]"):
        resolve_resolutions(unet, LATENT_HW, LabelSpec(self_resolution=2))


def test_capture_config_per_mode():
    unet, _ = build("sd2")
    cfg = capture_config(unet, LabelSpec(step_window=(0.2, 0.9)), LATENT_HW, guidance=True)
    assert cfg == CaptureConfig(
        latent_hw=LATENT_HW, cross_resolutions=(4, 8), self_resolutions=(16,), step_window=(0.2, 0.9), guidance=True
    )
    daam = capture_config(unet, LabelSpec(mode="daam"), LATENT_HW, guidance=False)
    assert daam.self_resolutions == () and daam.cross_resolutions == (4, 8)
    assert capture_config(unet, LabelSpec(mode="none"), LATENT_HW, guidance=False) is None


# ---- label_image on a hand-made store --------------------------------------------------------

def _halves_store() -> AttentionStore:
    """4x4 maps; token 1 ("cat") attends to the left half, token 2 ("dog") to the right half.

    Batch of 2: image 1 has the classes swapped.
    """
    cfg = CaptureConfig(latent_hw=(4, 4), cross_resolutions=(4,), self_resolutions=(4,))
    store = AttentionStore(cfg)
    cross = torch.full((2, 16, 4), 0.05)
    left = torch.tensor([c < 2 for _ in range(4) for c in range(4)])
    cross[0, left, 1] = 0.8
    cross[0, ~left, 2] = 0.8
    cross[1, left, 2] = 0.8
    cross[1, ~left, 1] = 0.8
    cross = cross / cross.sum(-1, keepdim=True)
    store.add("cross", 4, (4, 4), cross)
    store.add("self", 4, (4, 4), torch.eye(16).expand(2, 16, 16))
    return store


@pytest.mark.parametrize("mode", ["refined", "daam"])
def test_label_image_hand_made(mode):
    store = _halves_store()
    spec = LabelSpec(mode=mode, min_component_area=4)
    res = label_image(store, 0, [[1], [2]], [1, 2], ["cat", "dog"], spec, (32, 32))
    assert res.semantic.shape == (32, 32) and res.semantic.dtype == np.uint8
    assert res.instances.shape == (32, 32) and res.instances.dtype == np.uint16
    assert (res.semantic[:, :12] == 1).all() and (res.semantic[:, 20:] == 2).all()
    assert [(a.category, a.category_id) for a in res.annotations] == [("cat", 1), ("dog", 2)]
    cat = res.annotations[0]
    assert cat.bbox[0] == 0 and cat.bbox[1] == 0 and cat.bbox[3] == 32
    assert 0.6 <= cat.score <= 1.0
    assert set(res.quality) == {"uncertain_fraction", "peak_attention", "class_pixel_fraction"}
    assert res.quality["peak_attention"]["cat"] == pytest.approx(0.8 / 0.95, rel=1e-5)
    assert res.quality["class_pixel_fraction"]["cat"] == pytest.approx((res.semantic == 1).mean())
    assert res.quality["uncertain_fraction"] == pytest.approx((res.semantic == 255).mean())
    # The second image of the batch has the classes swapped.
    other = label_image(store, 1, [[1], [2]], [1, 2], ["cat", "dog"], spec, (32, 32))
    assert (other.semantic[:, :12] == 2).all() and (other.semantic[:, 20:] == 1).all()


def test_refined_ignore_band_in_label_image():
    store = _halves_store()
    res = label_image(store, 0, [[1]], [1], ["cat"], LabelSpec(min_component_area=0), (32, 32))
    # Normalised scores fall from 1 (left) to 0 (right); the bilinear ramp in the middle
    # crosses 0.6 and 0.5, giving a band of 255 between class and background.
    row = res.semantic[0]
    assert row[0] == 1 and row[-1] == 0
    assert 255 in row
    band = np.nonzero(row == 255)[0]
    assert np.nonzero(row == 1)[0].max() < band.min() and band.max() < np.nonzero(row == 0)[0].min()


def test_label_image_validates_inputs():
    store = _halves_store()
    with pytest.raises(ValueError, match="same length"):
        label_image(store, 0, [[1]], [1, 2], ["cat"], LabelSpec(), (8, 8))
    with pytest.raises(ValueError, match="none"):
        label_image(store, 0, [[1]], [1], ["cat"], LabelSpec(mode="none"), (8, 8))
    daam_only = AttentionStore(CaptureConfig(latent_hw=(4, 4), cross_resolutions=(4,)))
    daam_only.add("cross", 4, (4, 4), torch.full((1, 16, 3), 1 / 3))
    with pytest.raises(ValueError, match="self-attention"):
        label_image(daam_only, 0, [[1]], [1], ["cat"], LabelSpec(), (8, 8))


def test_class_without_tokens_gets_no_pixels():
    store = _halves_store()
    res = label_image(store, 0, [[1], []], [1, 2], ["cat", "dog"], LabelSpec(mode="daam"), (16, 16))
    assert not (res.semantic == 2).any()
    assert res.quality["peak_attention"]["dog"] == 0.0


# ---- end to end with a tiny UNet -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_label_image_after_capture(kind):
    unet, make = build(kind)
    spec = LabelSpec(min_component_area=2)
    cfg = capture_config(unet, spec, LATENT_HW, guidance=True)
    uncond, cond = make(2, seed=1), make(2, seed=2)
    inputs = dict(cond)
    inputs["sample"] = torch.cat([cond["sample"]] * 2)
    inputs["encoder_hidden_states"] = torch.cat([uncond["encoder_hidden_states"], cond["encoder_hidden_states"]])
    if "added_cond_kwargs" in cond:
        inputs["added_cond_kwargs"] = {k: torch.cat([v, v]) for k, v in cond["added_cond_kwargs"].items()}
    with capture_attention(unet, cfg) as store, torch.no_grad():
        for i in range(3):
            store.begin_step(i, 3)
            unet(**inputs)
    groups, ids, names = [[1, 2], [4], [5]], [1, 2, 7], ["cat", "dog", "car"]
    for b in range(2):
        res = label_image(store, b, groups, ids, names, spec, (64, 64))
        assert res.semantic.shape == (64, 64)
        assert set(np.unique(res.semantic)) <= {0, 1, 2, 7, 255}
        # Min-max normalisation puts every class at 1 somewhere: each claims pixels.
        assert all(res.quality["class_pixel_fraction"][n] > 0 for n in names)
        fractions = sum(res.quality["class_pixel_fraction"].values()) + res.quality["uncertain_fraction"]
        assert fractions <= 1.0 + 1e-9
        for a in res.annotations:
            assert np.array_equal(decode_rle(a.rle).astype(bool), res.instances == a.instance_id)
            assert res.semantic[res.instances == a.instance_id].tolist() == [a.category_id] * int(a.area)
            assert a.area >= spec.min_component_area
        assert all(0 < p <= 1 for p in res.quality["peak_attention"].values())
