"""Attention capture on tiny random UNets (SD 1.x-, SD 2.x- and SDXL-like)."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from tests.support.tiny_unets import KINDS, LATENT_HW, TOKENS, build
from worker.engine.attention import (
    AttentionStore,
    CaptureConfig,
    CapturingAttnProcessor,
    attention_layers,
    available_resolutions,
    capture_attention,
    capture_plan,
)

torch.set_num_threads(1)

EXPECTED = {
    "sd1": {"cross": (4, 8, 16), "self": (4, 8, 16)},
    "sd2": {"cross": (4, 8, 16), "self": (4, 8, 16)},
    "sdxl": {"cross": (4, 8), "self": (4, 8)},  # no attention in the first block
}


@pytest.fixture(scope="module", params=KINDS)
def tiny(request):
    unet, make = build(request.param)
    return request.param, unet, make


def _config(unet, **kw):
    avail = available_resolutions(unet, LATENT_HW)
    kw.setdefault("cross_resolutions", avail["cross"])
    kw.setdefault("self_resolutions", avail["self"])
    return CaptureConfig(latent_hw=LATENT_HW, **kw)


def _run(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def test_layers_kinds_and_factors():
    unet, _ = build("sd1")
    layers = {layer.name: layer for layer in attention_layers(unet)}
    assert layers["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"].kind == "self"
    assert layers["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"].kind == "cross"
    assert layers["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"].factor == 2
    assert layers["mid_block.attentions.0.transformer_blocks.0.attn2.processor"].factor == 4
    assert layers["up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"].factor == 2
    assert layers["up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor"].factor == 1
    assert len(layers) == len(unet.attn_processors)


def test_available_resolutions(tiny):
    kind, unet, _ = tiny
    assert available_resolutions(unet, LATENT_HW) == EXPECTED[kind]
    # Non-square latent: the resolution is the shorter side; odd sides round up per level.
    assert available_resolutions(unet, (16, 24))["cross"] == EXPECTED[kind]["cross"]
    assert 3 in available_resolutions(unet, (10, 16))["cross"]  # 10 -> 5 -> 3


def test_captured_shapes(tiny):
    kind, unet, make = tiny
    cfg = _config(unet)
    with capture_attention(unet, cfg) as store:
        _run(unet, make(2))
    for res in EXPECTED[kind]["cross"]:
        h, w = store.map_hw(res)
        assert (h, w) == (res, res)
        assert store.cross(res).shape == (2, h * w, TOKENS)
        assert store.self_attention(res).shape == (2, h * w, h * w)
        assert store.cross(res).dtype == torch.float32
        assert store.count("cross", res) >= 1


def test_non_square_latent_shapes():
    unet, make = build("sd1")
    cfg = CaptureConfig(latent_hw=(16, 24), cross_resolutions=(8,), self_resolutions=(8,))
    with capture_attention(unet, cfg) as store:
        _run(unet, make(1, latent_hw=(16, 24)))
    assert store.map_hw(8) == (8, 12)
    assert store.cross(8).shape == (1, 96, TOKENS)
    assert store.self_attention(8).shape == (1, 96, 96)


def test_output_unchanged_by_capture(tiny):
    _, unet, make = tiny
    inputs = make(2, seed=3)
    reference = _run(unet, inputs)
    with capture_attention(unet, _config(unet)):
        captured = _run(unet, inputs)
    torch.testing.assert_close(captured, reference, rtol=1e-5, atol=1e-5)


def test_output_unchanged_with_encoder_attention_mask():
    unet, make = build("sd1")
    inputs = make(2, seed=4)
    mask = torch.ones(2, TOKENS)
    mask[:, -3:] = 0  # padding tokens
    inputs["encoder_attention_mask"] = mask
    reference = _run(unet, inputs)
    with capture_attention(unet, _config(unet)) as store:
        captured = _run(unet, inputs)
    torch.testing.assert_close(captured, reference, rtol=1e-5, atol=1e-5)
    # Masked tokens get no attention.
    assert store.cross(16)[..., -3:].abs().max() < 1e-6


def test_probabilities_sum_to_one(tiny):
    kind, unet, make = tiny
    with capture_attention(unet, _config(unet)) as store:
        _run(unet, make(2))
    for res in EXPECTED[kind]["cross"]:
        for maps in (store.cross(res), store.self_attention(res)):
            assert (maps >= 0).all()
            torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:2]), rtol=0, atol=1e-5)


def test_guidance_keeps_conditional_half(tiny):
    kind, unet, make = tiny
    cond = make(2, seed=1)
    uncond = make(2, seed=2)
    both = {
        k: (torch.cat([uncond[k], cond[k]]) if k in ("sample", "encoder_hidden_states") else v)
        for k, v in cond.items()
    }
    if "added_cond_kwargs" in cond:
        both["added_cond_kwargs"] = {
            k: torch.cat([uncond["added_cond_kwargs"][k], v]) for k, v in cond["added_cond_kwargs"].items()
        }
    with capture_attention(unet, _config(unet, guidance=True)) as cfg_store:
        _run(unet, both)
    with capture_attention(unet, _config(unet)) as cond_store:
        _run(unet, cond)
    with capture_attention(unet, _config(unet)) as uncond_store:
        _run(unet, uncond)
    res = EXPECTED[kind]["cross"][-1]
    assert cfg_store.cross(res).shape[0] == 2
    torch.testing.assert_close(cfg_store.cross(res), cond_store.cross(res), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cfg_store.self_attention(res), cond_store.self_attention(res), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(cfg_store.cross(res), uncond_store.cross(res), atol=1e-4)


def test_guidance_rejects_odd_batch():
    unet, make = build("sd1")
    with pytest.raises(RuntimeError, match="even batch"):
        with capture_attention(unet, _config(unet, guidance=True)):
            _run(unet, make(3))


def _steps(make, n):
    return [dict(make(2, seed=10 + i), timestep=torch.tensor(900 - 100 * i)) for i in range(n)]


def test_online_average_equals_reference(tiny):
    kind, unet, make = tiny
    steps = _steps(make, 3)
    with capture_attention(unet, _config(unet)) as store:
        for i, inputs in enumerate(steps):
            store.begin_step(i, len(steps))
            _run(unet, inputs)
    per_step = []
    for inputs in steps:
        with capture_attention(unet, _config(unet)) as single:
            _run(unet, inputs)
        per_step.append(single)
    for res in EXPECTED[kind]["cross"]:
        ref_cross = torch.stack([s.cross(res) for s in per_step]).mean(0)
        ref_self = torch.stack([s.self_attention(res) for s in per_step]).mean(0)
        torch.testing.assert_close(store.cross(res), ref_cross, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(store.self_attention(res), ref_self, rtol=1e-5, atol=1e-6)
        assert store.count("cross", res) == 3 * per_step[0].count("cross", res)
    assert store.steps_captured == 3


def test_step_window_honoured():
    unet, make = build("sd1")
    steps = _steps(make, 4)
    cfg = _config(unet, cross_resolutions=(8,), self_resolutions=(), step_window=(0.5, 1.0))
    with capture_attention(unet, cfg) as store:
        for i, inputs in enumerate(steps):
            store.begin_step(i, len(steps))
            _run(unet, inputs)
    assert store.steps_captured == 2
    late = []
    for inputs in steps[2:]:
        with capture_attention(unet, _config(unet, cross_resolutions=(8,), self_resolutions=())) as single:
            _run(unet, inputs)
        late.append(single.cross(8))
    torch.testing.assert_close(store.cross(8), torch.stack(late).mean(0), rtol=1e-5, atol=1e-6)


def test_window_outside_every_step_captures_nothing():
    unet, make = build("sd1")
    cfg = _config(unet, cross_resolutions=(8,), self_resolutions=(), step_window=(0.0, 0.5))
    with capture_attention(unet, cfg) as store:
        store.begin_step(3, 4)
        _run(unet, make(1))
    assert store.count("cross", 8) == 0
    with pytest.raises(KeyError, match="no cross-attention captured"):
        store.cross(8)


def test_batch_of_prompts_matches_single_runs():
    unet, make = build("sd2")
    batch = make(3, seed=5)
    cfg = _config(unet, cross_resolutions=(8, 16), self_resolutions=(16,))
    with capture_attention(unet, cfg) as store:
        _run(unet, batch)
    for i in range(3):
        single = {k: v[i : i + 1] if k in ("sample", "encoder_hidden_states") else v for k, v in batch.items()}
        with capture_attention(unet, cfg) as one:
            _run(unet, single)
        torch.testing.assert_close(store.cross(8)[i], one.cross(8)[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(store.self_attention(16)[i], one.self_attention(16)[0], rtol=1e-4, atol=1e-6)


def test_only_requested_layers_replaced_and_restored():
    unet, make = build("sd1")
    before = dict(unet.attn_processors)
    cfg = _config(unet, cross_resolutions=(8,), self_resolutions=())
    with capture_attention(unet, cfg):
        inside = unet.attn_processors
        for layer in attention_layers(unet):
            replaced = isinstance(inside[layer.name], CapturingAttnProcessor)
            assert replaced == (layer.kind == "cross" and layer.factor == 2), layer.name
            if not replaced:
                assert inside[layer.name] is before[layer.name]
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_processors_restored_when_body_raises():
    unet, make = build("sdxl")
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(unet, _config(unet)):
            _run(unet, make(1))
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert not any(isinstance(p, CapturingAttnProcessor) for p in after.values())


def test_missing_resolution_lists_available():
    unet, _ = build("sdxl")
    with pytest.raises(ValueError, match=r"resolution 16 .*available cross resolutions: \[4, 8\]"):
        capture_plan(unet, CaptureConfig(latent_hw=LATENT_HW, cross_resolutions=(16,)))


def test_large_self_attention_refused():
    unet, _ = build("sd1")
    with pytest.raises(ValueError, match="64x64 = 4096 cells"):
        capture_plan(unet, CaptureConfig(latent_hw=(64, 64), cross_resolutions=(16,), self_resolutions=(64,)))
    plan = capture_plan(unet, CaptureConfig(latent_hw=(64, 64), cross_resolutions=(16,), self_resolutions=(32,)))
    assert {(p.kind, p.resolution) for p in plan.values()} == {("cross", 16), ("self", 32)}


def test_non_plain_processor_is_not_replaced():
    class Custom:  # e.g. a steering or adapter processor: capture must not drop it
        def __call__(self, attn, hidden_states, *args, **kwargs):
            return hidden_states

    unet, _ = build("sd1")
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    procs = dict(unet.attn_processors)
    procs[name] = Custom()
    unet.set_attn_processor(dict(procs))
    with pytest.raises(ValueError, match="Custom"):
        with capture_attention(unet, _config(unet, cross_resolutions=(8,), self_resolutions=())):
            pass
    assert unet.attn_processors[name] is procs[name]


@pytest.mark.parametrize(
    "options",
    [
        dict(norm_num_groups=2, residual_connection=True, rescale_output_factor=2.0, bias=True),
        dict(spatial_norm_dim=3, residual_connection=True),
        dict(cross_attention_dim=6, cross_attention_norm="layer_norm", qk_norm="layer_norm"),
    ],
)
def test_processor_matches_sdpa_on_attention_variants(options):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=4, **options).eval()
    x = torch.randn(2, 32, 4, 4)  # 4-D input: (batch, channels, h, w)
    kwargs = {}
    if "spatial_norm_dim" in options:
        kwargs["temb"] = torch.randn(2, 3, 4, 4)
    if "cross_attention_dim" in options:
        x = x.flatten(2).transpose(1, 2)  # 3-D tokens for the cross case
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, 6)
        mask = torch.zeros(2, 1, 5)
        mask[:, :, -2:] = -10000.0
        kwargs["attention_mask"] = mask
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        reference = attn(x, **kwargs)
    kind = "cross" if "cross_attention_dim" in options else "self"
    store = AttentionStore(CaptureConfig(latent_hw=(4, 4), cross_resolutions=(4,)))
    attn.set_processor(CapturingAttnProcessor(store, kind, 4, (4, 4)))
    with torch.no_grad():
        captured = attn(x, **kwargs)
    torch.testing.assert_close(captured, reference, rtol=1e-5, atol=1e-5)
    probs = store._average(kind, 4)
    assert probs.shape == (2, 16, 5 if kind == "cross" else 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 16))
    if kind == "cross":
        assert probs[..., -2:].max() < 1e-6


def test_head_chunking_gives_the_same_result(monkeypatch):
    # Large maps are processed a few heads at a time; the result must not depend on it.
    unet, make = build("sd2")
    inputs = make(2, seed=6)
    cfg = _config(unet)
    with capture_attention(unet, cfg) as whole:
        out_whole = _run(unet, inputs)
    monkeypatch.setattr("worker.engine.attention.PROBS_CHUNK_ELEMENTS", 1)  # one head per chunk
    with capture_attention(unet, cfg) as chunked:
        out_chunked = _run(unet, inputs)
    torch.testing.assert_close(out_chunked, out_whole, rtol=1e-5, atol=1e-6)
    for res in EXPECTED["sd2"]["cross"]:
        torch.testing.assert_close(chunked.cross(res), whole.cross(res), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(chunked.self_attention(res), whole.self_attention(res), rtol=1e-5, atol=1e-7)


def test_memory_is_flat_in_the_number_of_steps():
    """Maps aggregate online: 8 captured steps hold the same bytes as 2, only the counts grow."""
    unet, make = build("sd1")
    inputs = make(2)
    held = {}
    for steps in (2, 8):
        with capture_attention(unet, _config(unet)) as store:
            for step in range(steps):
                store.begin_step(step, steps)
                _run(unet, inputs)
        held[steps] = (store.nbytes, store.count("cross", 8), store.cross(8).clone())
    assert held[2][0] == held[8][0] > 0
    assert held[8][1] == 4 * held[2][1]
    # Same inputs every step, so the average is unchanged: the sums were divided by the right count.
    torch.testing.assert_close(held[2][2], held[8][2], rtol=1e-5, atol=1e-7)
