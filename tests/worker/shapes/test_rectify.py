"""Rectified cross-attention in training: an object's words see only its mask, others see all."""
import dataclasses

import numpy as np
import torch

from shared.shapes import render_scene
from worker.shapes import attn_loss, rectify
from worker.shapes.attn_loss import token_targets
from worker.shapes.model import MAX_LENGTH, PRESETS, build_text_encoder, build_tokenizer, build_unet, encode_text

TINY = dataclasses.replace(PRESETS["tiny"], only_cross_top=True)


def _setup():
    torch.manual_seed(0)
    unet, te, tok = build_unet(TINY), build_text_encoder(TINY), build_tokenizer()
    sink = attn_loss.install(unet, (16, 32), 32)  # records head-mean cross-attention probabilities
    regions = rectify.install(unet)
    scene = render_scene(11, objects=[("red", "circle"), ("blue", "square")])
    hidden, mask = encode_text(tok, te, [scene.caption])
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    return unet, sink, regions, scene, hidden.detach(), mask, x, t


def test_object_tokens_have_zero_probability_outside_their_mask():
    unet, sink, regions, scene, hidden, mask, x, t = _setup()
    targets = token_targets(scene, scene.caption, MAX_LENGTH)
    assert len(targets) == 4  # colour + shape word of each object
    regions.set([targets], MAX_LENGTH)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask)
    assert sink, "no cross-attention layer recorded"
    for probs in sink:
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


def test_no_targets_means_the_stock_attention():
    unet, sink, regions, scene, hidden, mask, x, t = _setup()
    regions.set([[]], MAX_LENGTH)
    with torch.no_grad():
        free = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        regions.set([token_targets(scene, scene.caption, MAX_LENGTH)], MAX_LENGTH)
        constrained = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        regions.set(None, MAX_LENGTH)
        again = unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
    torch.testing.assert_close(free, again)
    assert (free - constrained).abs().max() > 1e-5
