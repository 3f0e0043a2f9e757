"""The attention-control mechanism: controls compose, restore, and rectify (SD1/SD2/SDXL tiny UNets)."""
from __future__ import annotations

import pytest
import torch

from tests.support.tiny_unets import KINDS, LATENT_HW, TOKENS, build
from worker.engine.attention import (
    AttentionControl,
    AttentionRecorder,
    AttentionStore,
    CaptureConfig,
    ControlledAttnProcessor,
    StepMapRecorder,
    available_resolutions,
    capture_controls,
    control_attention,
    layer_sites,
)
from worker.engine.controls import RectifiedCrossAttention

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=KINDS)
def tiny(request):
    unet, make = build(request.param)
    return request.param, unet, make


def _run(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def _labels(batch: int) -> torch.Tensor:
    """Left half class 1, right half class 2 (16x16, the latent size)."""
    lab = torch.zeros(batch, *LATENT_HW, dtype=torch.long)
    lab[:, :, : LATENT_HW[1] // 2] = 1
    lab[:, :, LATENT_HW[1] // 2 :] = 2
    return lab


CLASS_TOKENS = [(2, 1), (4, 2)]  # token 2 -> class 1 (left), token 4 -> class 2 (right)


def _rectified(batch: int) -> RectifiedCrossAttention:
    return RectifiedCrossAttention(_labels(batch), [CLASS_TOKENS] * batch, TOKENS)


def _config(unet, guidance=False):
    avail = available_resolutions(unet, LATENT_HW)
    return CaptureConfig(latent_hw=LATENT_HW, cross_resolutions=avail["cross"], guidance=guidance)


def test_rectified_leaves_class_tokens_at_zero_outside_their_region(tiny):
    kind, unet, make = tiny
    store, recorder = capture_controls(unet, _config(unet))
    with control_attention(unet, [_rectified(2), recorder], LATENT_HW):
        _run(unet, make(2))
    for res in available_resolutions(unet, LATENT_HW)["cross"]:
        probs = store.cross(res).view(2, res, res, TOKENS)
        left, right = probs[:, :, : res // 2], probs[:, :, res // 2 :]
        assert right[..., 2].max() == 0.0 and left[..., 4].max() == 0.0  # exactly zero outside
        assert left[..., 2].min() > 0.0 and right[..., 4].min() > 0.0  # free inside
        assert probs[..., 0].min() > 0.0  # the start token attends everywhere
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, res, res), rtol=0, atol=1e-5)


def test_rectified_changes_the_output_and_only_the_conditional_branch():
    unet, make = build("sd1")
    cond, uncond = make(1, seed=1), make(1, seed=2)
    both = {k: torch.cat([uncond[k], cond[k]]) if k in ("sample", "encoder_hidden_states") else v for k, v in cond.items()}
    plain = _run(unet, both)
    with control_attention(unet, [_rectified(1)], LATENT_HW, guidance=True):
        steered = _run(unet, both)
    torch.testing.assert_close(steered[:1], plain[:1], rtol=1e-5, atol=1e-6)  # uncond untouched
    assert not torch.allclose(steered[1:], plain[1:], atol=1e-4)


def test_rectified_sdpa_path_equals_explicit_softmax():
    # Logit masks alone run fused SDPA; adding a recorder forces the explicit softmax: same output.
    unet, make = build("sd2")
    inputs = make(2, seed=3)
    with control_attention(unet, [_rectified(2)], LATENT_HW):
        fused = _run(unet, inputs)
    store, recorder = capture_controls(unet, _config(unet))
    with control_attention(unet, [_rectified(2), recorder], LATENT_HW):
        explicit = _run(unet, inputs)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)


def test_rectified_combines_with_the_encoder_attention_mask():
    unet, make = build("sd1")
    inputs = make(2, seed=4)
    mask = torch.ones(2, TOKENS)
    mask[:, -2:] = 0
    inputs["encoder_attention_mask"] = mask
    store, recorder = capture_controls(unet, _config(unet))
    with control_attention(unet, [_rectified(2), recorder], LATENT_HW):
        out = _run(unet, inputs)
    assert torch.isfinite(out).all()
    probs = store.cross(16).view(2, 16, 16, TOKENS)
    assert probs[..., -2:].max() < 1e-6 and probs[:, :, 8:, 2].max() == 0.0


def test_controls_compose_in_order_and_restore():
    unet, make = build("sdxl")
    before = dict(unet.attn_processors)
    seen = []

    class Scale(AttentionControl):
        edits_probs = True

        def __init__(self, tag, factor):
            self.tag, self.factor = tag, factor

        def wants(self, site):
            return site.kind == "self"

        def probs(self, site, call, probs, heads):
            seen.append(self.tag)
            return probs * self.factor

    store, recorder = capture_controls(
        unet, CaptureConfig(latent_hw=LATENT_HW, self_resolutions=available_resolutions(unet, LATENT_HW)["self"])
    )
    with pytest.raises(RuntimeError, match="boom"):
        with control_attention(unet, [Scale("a", 2.0), Scale("b", 0.25), recorder], LATENT_HW) as sites:
            inside = unet.attn_processors
            for s in layer_sites(unet, LATENT_HW):
                if s.kind == "self":
                    assert isinstance(inside[s.name], ControlledAttnProcessor)
                else:
                    assert inside[s.name] is before[s.name]
            assert {s.kind for s in sites} == {"self"}
            _run(unet, make(1))
            raise RuntimeError("boom")
    assert seen[:2] == ["a", "b"]  # chain order
    # The recorder sees the edited probabilities (x 2 x 0.25 = 0.5, no renormalisation).
    res = available_resolutions(unet, LATENT_HW)["self"][0]
    torch.testing.assert_close(store.self_attention(res).sum(-1), torch.full(store.self_attention(res).shape[:2], 0.5))
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_inactive_controls_fall_back_to_the_original_maths():
    unet, make = build("sd1")
    inputs = make(2, seed=5)
    reference = _run(unet, inputs)

    class Off(RectifiedCrossAttention):
        def active(self):
            return False

    off = Off(_labels(2), [CLASS_TOKENS] * 2, TOKENS)
    with control_attention(unet, [off], LATENT_HW):
        torch.testing.assert_close(_run(unet, inputs), reference, rtol=1e-5, atol=1e-6)


def test_step_map_recorder_keeps_gradients_to_the_latent():
    unet, make = build("sd1")
    inputs = make(1, seed=6)
    latent = inputs.pop("sample").requires_grad_(True)
    rec = StepMapRecorder(resolutions=(8,))
    with control_attention(unet, [rec], LATENT_HW):
        rec.begin_step(0, 1)
        unet(sample=latent, **inputs)
    assert rec.maps and all(site.resolution == 8 for site, _ in rec.maps)
    energy = sum(m[..., 2].mean() for _, m in rec.maps)  # e.g. a "size" energy on token 2
    energy.backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


def test_rectified_refuses_masking_the_start_token():
    with pytest.raises(ValueError, match="class token index 0"):
        RectifiedCrossAttention(_labels(1), [[(0, 1)]], TOKENS)


def test_recorder_only_chain_matches_plain_capture(tiny):
    _, unet, make = tiny
    inputs = make(2, seed=7)
    reference = _run(unet, inputs)
    store = AttentionStore(_config(unet))
    with control_attention(unet, [AttentionRecorder(store)], LATENT_HW):
        out = _run(unet, inputs)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert store.count("cross", available_resolutions(unet, LATENT_HW)["cross"][0]) >= 1
