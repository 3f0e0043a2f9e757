"""Rectified cross-attention in training: an object's words see only its mask, others see all."""
import dataclasses

import numpy as np
import pytest
import torch

from shared.shapes import render_scene
from worker.engine.attention import control_attention
from worker.shapes import attn_loss
from worker.shapes.attn_loss import token_targets
from worker.shapes.model import MAX_LENGTH, PRESETS, build_text_encoder, build_tokenizer, build_unet, encode_text
from worker.shapes.rectify import TokenRegions

TINY = dataclasses.replace(PRESETS["tiny"], only_cross_top=True)


@pytest.fixture
def setup():
    """A tiny UNet with the training controls installed (the engine's processor), restored after."""
    torch.manual_seed(0)
    unet, te, tok = build_unet(TINY), build_text_encoder(TINY), build_tokenizer()
    maps, regions = attn_loss.recorder(32), TokenRegions()  # head-mean cross-attention probabilities; rectify
    scene = render_scene(11, objects=[("red", "circle"), ("blue", "square")])
    hidden, mask = encode_text(tok, te, [scene.caption])
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with control_attention(unet, [maps, regions], (32, 32)):
        yield unet, maps, regions, scene, hidden.detach(), mask, x, t


def test_object_tokens_have_zero_probability_outside_their_mask(setup):
    unet, maps, regions, scene, hidden, mask, x, t = setup
    targets = token_targets(scene, scene.caption, MAX_LENGTH)
    assert len(targets) == 4  # colour + shape word of each object
    regions.set([targets], MAX_LENGTH)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask)
    assert maps.maps, "no cross-attention layer recorded"
    for _, probs in maps.maps:
        r = int(round(probs.shape[1] ** 0.5))
        for k, m in targets:
            small = torch.nn.functional.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(r, r),
                                                    mode="nearest").flatten().bool()
            col = probs[0, :, k]
            assert col[~small].max() < 1e-6  # masked out
            if small.any():
                assert col[small].min() > 1e-4  # still attended inside its region
        # the start token is never constrained: every row still sums to one
        torch.testing.assert_close(probs[0].sum(-1), torch.ones(probs.shape[1]), atol=1e-4, rtol=0)


def test_no_targets_means_the_stock_attention(setup):
    unet, _, regions, scene, hidden, mask, x, t = setup
    regions.set([[]], MAX_LENGTH)
    with torch.no_grad():
        free = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        regions.set([token_targets(scene, scene.caption, MAX_LENGTH)], MAX_LENGTH)
        constrained = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        regions.set(None, MAX_LENGTH)
        again = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
    torch.testing.assert_close(free, again)
    assert (free - constrained).abs().max() > 1e-5
