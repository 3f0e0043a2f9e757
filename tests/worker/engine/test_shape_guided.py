"""Shape-Guided editing: inside-outside controls, DDIM inversion, method edit end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared.formats.spec import GenerationSpec, SpecError, parse_spec
from shared.shapes.dataset import write_real_dataset
from tests.support.tiny_pipelines import save_sd2, save_sdxl
from worker.engine.attention import Call, Site, control_attention, layer_sites
from worker.engine.loading import load_model
from worker.engine.session import EngineSession
from worker.engine.shape_guided import (
    EditOptions,
    InsideOutsideCrossAttention,
    InsideOutsideLogitMask,
    RegionSelfAttention,
    edit_images,
    word_weights,
)

torch.set_num_threads(1)
SHAPES = [{"name": "circle"}, {"name": "square"}, {"name": "triangle"}, {"name": "star"}]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_real_dataset(out, 3, seed=4, size=32, formats=[])
    return out


def _mask_2x2() -> torch.Tensor:
    m = torch.zeros(1, 2, 2)
    m[0, 0, 0] = 1  # query 0 is inside, queries 1..3 outside
    return m


def test_inside_tokens_stay_inside_outside_tokens_outside_and_words_are_scaled():
    site = Site("x.attn2.processor", "cross", 2, (2, 2))
    T = 3  # keys 0..2: inside prompt, 3..5: outside prompt
    cond = torch.tensor([[1.0, 2.5, 1.0, 1.0, 2.5, 1.0]])
    control = InsideOutsideCrossAttention(_mask_2x2(), T, {"cond": cond, "uncond": torch.ones(1, 6)})
    probs = torch.full((1, 2, 4, 6), 1 / 6)
    out = control.probs(site, Call("cond", slice(0, 1)), probs, slice(0, 2))
    inside_q, outside_q = out[0, :, 0], out[0, :, 1:]
    assert torch.all(inside_q[:, 3:] == 0) and torch.all(outside_q[..., :3] == 0)
    torch.testing.assert_close(inside_q[0, :3], torch.tensor([1.0, 2.5, 1.0]) / 6)
    torch.testing.assert_close(outside_q[0, 0, 3:], torch.tensor([1.0, 2.5, 1.0]) / 6)
    # not renormalised (the authors' form); the unconditional branch is only masked
    assert abs(float(inside_q[0].sum()) - 4.5 / 6) < 1e-6
    unc = control.probs(site, Call("uncond", slice(0, 1)), probs, slice(0, 2))
    torch.testing.assert_close(unc[0, 0, 0], torch.tensor([1.0, 1, 1, 0, 0, 0]) / 6)


def test_logit_mask_gives_each_pixel_only_its_own_prompt_on_both_branches():
    site = Site("x.attn2.processor", "cross", 2, (2, 2))
    control = InsideOutsideLogitMask(_mask_2x2(), 3)
    assert control.branches == ("uncond", "cond") and control.wants(site)
    for branch in ("cond", "uncond"):
        allowed = control.logits(site, Call(branch, slice(0, 1)))
        assert allowed.shape == (1, 1, 4, 6) and allowed.dtype == torch.bool
        assert allowed[0, 0, 0].tolist() == [True] * 3 + [False] * 3  # inside pixel: inside prompt only
        assert all(row.tolist() == [False] * 3 + [True] * 3 for row in allowed[0, 0, 1:])
    # after the softmax each pixel's attention sums to 1 over its own prompt
    logits = torch.randn(1, 2, 4, 6).masked_fill(~allowed, float("-inf"))
    p = logits.softmax(-1)
    torch.testing.assert_close(p[0, :, 0, :3].sum(-1), torch.ones(2))
    torch.testing.assert_close(p[0, :, 1:, 3:].sum(-1), torch.ones(2, 3))


def test_self_attention_is_cut_across_the_mask_boundary():
    site = Site("x.attn1.processor", "self", 2, (2, 2))
    probs = torch.full((1, 1, 4, 4), 0.25)
    full = RegionSelfAttention(_mask_2x2(), 1.0).probs(site, Call("cond", slice(0, 1)), probs, slice(0, 1))[0, 0]
    assert full[0, 0] == 0.25 and torch.all(full[0, 1:] == 0) and torch.all(full[1:, 0] == 0)
    assert torch.all(full[1:, 1:] == 0.25)
    half = RegionSelfAttention(_mask_2x2(), 0.5).probs(site, Call("cond", slice(0, 1)), probs, slice(0, 1))[0, 0]
    assert half[0, 1] == 0.125


def test_shared_tokens_and_special_tokens_are_not_scaled():
    ids = torch.tensor([[0, 7, 8, 9, 1, 1]])
    w = word_weights(ids, {0, 1}, 2.5, [{8}])
    assert w.tolist() == [[1.0, 2.5, 1.0, 2.5, 1.0, 1.0]]


def test_controls_sit_on_every_cross_and_self_layer_and_are_removed_after():
    model = load_model("builtin:tiny-random")
    latent_hw = (16, 16)
    masks = torch.zeros(1, 32, 32)
    controls = [InsideOutsideCrossAttention(masks, 4, {"cond": torch.ones(1, 8)}), RegionSelfAttention(masks)]
    sites = layer_sites(model.unet, latent_hw)
    before = dict(model.unet.attn_processors)
    with control_attention(model.unet, controls, latent_hw) as installed:
        procs = model.unet.attn_processors
        for s in sites:
            chain = procs[s.name].controls
            assert [type(c) for c in chain] == [InsideOutsideCrossAttention if s.kind == "cross" else RegionSelfAttention]
    assert {s.name for s in installed} == {s.name for s in sites}
    assert {k: type(v) for k, v in model.unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def _image_and_mask(size=32):
    from shared.shapes.render import render_scene

    scene = render_scene(2, size, objects=[("red", "circle")])
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float()[None] / 127.5 - 1
    return scene, image, torch.from_numpy(scene.instances == 1)[None]


def _smooth_model(model):
    """A copy of the tiny model whose noise prediction barely depends on its input: DDIM inversion
    is then exact up to float error, so any mismatch of levels/alphas between the inversion and
    the sampler shows as reconstruction error (a random UNet's output is too rough to invert)."""
    import copy
    import dataclasses

    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.002)
        unet.conv_out.bias.fill_(0.3)
    return dataclasses.replace(model, unet=unet)


def test_inversion_reconstructs_the_source_when_no_edit_is_asked():
    model = _smooth_model(load_model("builtin:tiny-random"))
    scene, image, mask = _image_and_mask()
    gen = GenerationSpec(width=32, height=32, steps=10, guidance_scale=1.0, batch_size=1)
    from worker.engine.generate import decode, encode_images

    x0 = encode_images(model, image)
    out, trajectory = edit_images(model, image, mask, ["a cat"], ["a cat"], [""], gen, EditOptions())
    assert len(trajectory) == 11 and torch.equal(trajectory[-1], x0)
    assert float((trajectory[0] - x0).abs().mean()) > 0.2  # the inversion went up to the noisiest level
    # regenerating from the inverted noise with the same prompt gives the source back

    floor = np.asarray(decode(model, x0)[0]).astype(float)
    rec = np.asarray(out.images[0]).astype(float)
    assert np.abs(rec - floor).mean() < 1.0


def test_an_edit_changes_the_inside_and_keeps_the_background():
    model = load_model("builtin:tiny-random")
    scene, image, mask = _image_and_mask()
    gen = GenerationSpec(width=32, height=32, steps=4, guidance_scale=2.0, batch_size=1)
    plain, _ = edit_images(model, image, mask, ["a cat"], ["a cat"], [""], gen)
    edited, trajectory = edit_images(model, image, mask, ["a cat"], ["a dog"], [""], gen)
    a, b = np.asarray(plain.images[0]).astype(float), np.asarray(edited.images[0]).astype(float)
    # latents outside the mask are the inverted trajectory's, exactly
    inside = scene.instances == 1
    ring = np.zeros_like(inside)  # VAE decoding blurs a few pixels across the boundary
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(inside, iterations=4)
    assert np.abs(a - b)[inside].mean() > 5 * max(np.abs(a - b)[~ring].mean(), 0.05)


def test_inside_noise_restarts_only_the_inside_and_follows_each_samples_seed():
    model = load_model("builtin:tiny-random")
    scene, image, mask = _image_and_mask()
    gen = GenerationSpec(width=32, height=32, steps=4, guidance_scale=2.0, batch_size=2)
    args = (model, image.repeat(2, 1, 1, 1), mask.repeat(2, 1, 1), ["a cat"] * 2, ["a dog"] * 2, [""] * 2, gen)
    pure, _ = edit_images(*args, EditOptions())
    fresh, _ = edit_images(*args, EditOptions(inside_noise=1.0), seeds=[7, 8])
    a, b = (np.asarray(o.images[0]).astype(float) for o in (pure, fresh))
    from scipy.ndimage import binary_dilation

    inside = scene.instances == 1
    ring = binary_dilation(inside, iterations=4)  # VAE decoding blurs a few pixels across the boundary
    assert np.abs(a - b)[inside].mean() > 5 * max(np.abs(a - b)[~ring].mean(), 0.05)
    # two samples of the same source with different seeds differ; a sample alone equals itself in the batch
    assert not np.array_equal(np.asarray(fresh.images[0]), np.asarray(fresh.images[1]))
    alone, _ = edit_images(model, image, mask, ["a cat"], ["a dog"], [""], gen.model_copy(update={"batch_size": 1}),
                           EditOptions(inside_noise=1.0), seeds=[8])
    assert alone.images[0].tobytes() == fresh.images[1].tobytes()


def test_edit_method_labels_are_the_source_masks_and_records_name_the_prompts(shapes_dir):
    spec = parse_spec({
        "model": "builtin:tiny-random", "method": "edit", "classes": SHAPES, "num_images": 4, "seed": 2,
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2, "guidance_scale": 2.0},
        "edit": {"source": {"path": str(shapes_dir)}, "inside": ["a blue {class}", "a green {class}"],
                 "inversion": "{caption}", "objects": "largest"},
    })
    session = EngineSession(spec)
    samples = list(session.generate(range(4)))
    rec0 = json.loads((shapes_dir / "samples" / "000000" / "record.json").read_text())
    p = samples[0].record.parameters["edit"]
    assert p["source_mask"] == "samples/000000/semantic.png" and p["inversion_prompt"] == rec0["prompt"]
    assert p["inside_prompt"] == samples[0].record.prompt and p["inside_prompt"].startswith("a blue ")
    assert samples[1].record.parameters["edit"]["inside_prompt"].startswith("a green ")
    assert p["outside_prompt"] == "" and p["class"] in p["inside_prompt"]
    from PIL import Image

    for s in samples:
        src = s.record.parameters["edit"]["source_mask"]
        np.testing.assert_array_equal(s.semantic, np.asarray(Image.open(shapes_dir / src)))
        assert s.record.annotations
    again = list(EngineSession(spec).generate([1]))
    assert again[0].image.tobytes() == samples[1].image.tobytes()


def test_edit_spec_errors_name_the_field(shapes_dir, tmp_path):
    base = {"model": "builtin:tiny-random", "method": "edit", "classes": SHAPES, "num_images": 1}
    with pytest.raises(SpecError, match="edit: method 'edit' needs") as e:
        parse_spec(base)
    with pytest.raises(SpecError, match=r"\{colour\}") as e:
        parse_spec({**base, "edit": {"source": {"path": "x"}, "inside": ["a {colour} {class}"]}})
    assert e.value.field.startswith("edit")
    (tmp_path / "empty").mkdir()
    spec = parse_spec({**base, "edit": {"source": {"path": str(tmp_path / "empty")}, "inside": ["a {class}"]}})
    with pytest.raises(SpecError) as e:
        EngineSession(spec)
    assert e.value.field.startswith("edit.source")


@pytest.mark.parametrize("save", [save_sd2, save_sdxl])
def test_edit_on_sd_and_sdxl_layouts(tmp_path, save):
    model = load_model(str(save(tmp_path / "m")))
    _, image, mask = _image_and_mask()
    gen = GenerationSpec(width=32, height=32, steps=2, guidance_scale=2.0, batch_size=1)
    out, trajectory = edit_images(model, image, mask, ["a cat"], ["a dog"], [""], gen)
    assert out.images[0].size == (32, 32) and trajectory[0].shape == trajectory[-1].shape
