"""Feature capture: block outputs grouped by stride, per UNet kind, hooks removed, CFG half."""
import numpy as np
import pytest
import torch

from tests.support.tiny_unets import KINDS, LATENT_HW, build
from worker.engine.features import FeatureConfig, capture_features, feature_layout, level_layout


@pytest.mark.parametrize("kind", KINDS)
def test_levels_have_the_layout_strides_and_channels(kind):
    unet, make_inputs = build(kind)
    layout = feature_layout(unet)
    assert [b.name for b in layout] == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                        "up_blocks.0", "up_blocks.1", "up_blocks.2"]
    with torch.no_grad(), capture_features(unet, FeatureConfig()) as store:
        store.capture_next_call()
        unet(**make_inputs(3))
    levels = store.levels()
    assert sorted(levels) == [1, 2, 4]
    for stride, group in level_layout(layout).items():
        f = levels[stride]
        assert f.shape == (3, sum(b.channels for b in group), LATENT_HW[0] // stride, LATENT_HW[1] // stride)
    # Every hook is gone after the block: a second call captures nothing new.
    assert all(not unet.get_submodule(b.name)._forward_hooks for b in layout)


def test_only_the_chosen_step_and_the_conditional_half_are_kept():
    unet, make_inputs = build("sd1")
    a, b = make_inputs(1, seed=1), make_inputs(1, seed=2)
    batch = {k: torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) and a[k].dim() else a[k] for k in a}
    with torch.no_grad(), capture_features(unet, FeatureConfig(step=1, guidance=True)) as store:
        for i in range(3):
            store.begin_step(i, 3)
            inputs = batch if i == 1 else {**batch, "sample": torch.randn_like(batch["sample"])}
            unet(**inputs)
    with torch.no_grad(), capture_features(unet, FeatureConfig()) as alone:
        alone.capture_next_call()
        unet(**batch)
    got, ref = store.levels(), alone.levels()
    for s in ref:
        assert got[s].shape[0] == 1
        torch.testing.assert_close(got[s], ref[s][1:], rtol=1e-4, atol=1e-5)


def test_unknown_blocks_and_unreached_steps_are_errors():
    unet, make_inputs = build("sd1")
    with pytest.raises(ValueError, match="unknown UNet blocks"):
        with capture_features(unet, FeatureConfig(blocks=("down_blocks.9",))):
            pass
    with capture_features(unet, FeatureConfig(step=5)) as store:
        with pytest.raises(ValueError, match="outside a run of 2 steps"):
            store.begin_step(0, 2)
    with torch.no_grad(), capture_features(unet, FeatureConfig(step=1)) as store:
        store.begin_step(0, 2)
        unet(**make_inputs(1))  # step 0 only: step 1 never comes
    assert not store.captured
    with pytest.raises(RuntimeError, match="no features captured"):
        store.levels()


def test_generate_returns_last_step_features_without_changing_the_images():
    from shared.formats.spec import GenerationSpec
    from worker.engine.generate import generate
    from worker.engine.loading import load_model

    model = load_model("builtin:tiny-random")
    gen = GenerationSpec(width=32, height=32, steps=2, guidance_scale=2.0, batch_size=2)
    plain = generate(model, ["a cat", "a dog"], [1, 2], gen)
    feats = generate(model, ["a cat", "a dog"], [1, 2], gen, features=FeatureConfig())
    assert plain.features is None
    for a, b in zip(plain.images, feats.images):  # hooks observe only (CPU float jitter: 1 grey level)
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert sorted(feats.features) == [1, 2]  # tiny-random: 2 blocks -> strides 1 and 2 (latent cells)
    assert all(f.shape[0] == 2 for f in feats.features.values())
