"""Learned concepts: textual inversion on CLIP (SD 1.x, SDXL's two encoders) and word-level
tokenizers; files diffusers' load_textual_inversion reads; loading in a spec; refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.formats.spec import SpecError, parse_spec
from tests.support.tiny_pipelines import save_sdxl
from worker.engine.concept_training import LearnConfig, learn_concept
from worker.engine.concepts import ConceptError, read_concept, with_concepts
from worker.engine.loading import load_model
from worker.engine.session import EngineSession

torch.set_num_threads(1)


def _images(folder: Path, n: int = 3, side: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = np.zeros((side, side, 3), np.uint8)
        a[8:24, 8 + i:24 + i] = (20, 205, 215)
        p = folder / f"{i}.png"
        Image.fromarray(a).save(p)
        out.append(p)
    return out


def _learn(model, tmp_path, tokens=("<thing>",), init=("the",), steps=3, **kw):
    cfg = LearnConfig(tokens=list(tokens), init_words=list(init), steps=steps, batch_size=2, lr=1e-2, checkpoint_every=2, **kw)
    out = tmp_path / "concept"
    state = learn_concept(model, _images(tmp_path / "imgs"), cfg, out)
    return out, state


def _spec(model_id: str, concept: Path, word: str, **extra):
    return parse_spec({
        "model": model_id, "classes": [{"name": "thing", "words": [word]}], "num_images": 2, "seed": 1,
        "prompts": {"templates": ["a {class}"]}, "concepts": [str(concept)],
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}, **extra,
    })


def test_clip_concept_trains_only_its_row_and_diffusers_loads_it(tmp_path):
    model = load_model("builtin:tiny-random")
    before = model.text_encoder.get_input_embeddings().weight.detach().clone()
    out, state = _learn(model, tmp_path)
    assert state.step == 3 and len(state.losses) == 3
    # the cached base model is untouched: no new token, same rows
    assert "<thing>" not in model.tokenizer.get_vocab()
    assert torch.equal(model.text_encoder.get_input_embeddings().weight, before)

    concept = read_concept(out)
    assert concept.tokens == ("<thing>",) and concept.base_revision == model.info.revision
    learned = with_concepts(model, [out])
    weight = learned.text_encoder.get_input_embeddings().weight
    assert weight.shape[0] == before.shape[0] + 1
    assert torch.equal(weight[: before.shape[0]], before)  # every old row frozen
    tid = learned.tokenizer.convert_tokens_to_ids("<thing>")
    init = before[torch.tensor(model.tokenizer("the", add_special_tokens=False)["input_ids"])].mean(0)
    assert not torch.allclose(weight[tid], init)  # the new row did train

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model.path, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(out / concept.files["<thing>"]))
    did = pipe.tokenizer.convert_tokens_to_ids("<thing>")
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[did], weight[tid])


def test_learning_resumes_from_its_checkpoint(tmp_path):
    model = load_model("builtin:tiny-random")
    out, _ = _learn(model, tmp_path, steps=2)
    rows_at_2 = read_concept(out).embeddings()["<thing>"][0]
    cfg = LearnConfig(tokens=["<thing>"], init_words=["the"], steps=2, batch_size=2, lr=1e-2, checkpoint_every=2)
    state = learn_concept(model, sorted((tmp_path / "imgs").glob("*.png")), cfg, out)  # already done: nothing to run
    assert state.step == 2 and torch.equal(read_concept(out).embeddings()["<thing>"][0], rows_at_2)
    # different settings against that checkpoint: refused, nothing overwritten
    with pytest.raises(ConceptError, match="different run"):
        learn_concept(model, sorted((tmp_path / "imgs").glob("*.png")), LearnConfig(["<thing>"], ["the"], steps=4), out)


def test_word_level_tokenizer_gets_the_token_and_it_round_trips(tmp_path):
    model = load_model("builtin:shapes-v1")
    vocab_size = len(model.tokenizer)
    out, _ = _learn(model, tmp_path, tokens=("<cyan>", "<cross>"), init=("blue", "star"))
    learned = with_concepts(model, [out])
    assert len(learned.tokenizer) == vocab_size + 2 and len(model.tokenizer) == vocab_size
    enc = learned.tokenizer("a <cyan> <cross> and a red circle", return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert learned.tokenizer.convert_ids_to_tokens(ids)[1:4] == ["a", "<cyan>", "<cross>"]
    assert enc["offset_mapping"][2] == (2, 8)  # the token's characters: labels can find it
    learned.tokenizer.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok", use_fast=True)
    assert again("a <cyan> <cross> and a red circle")["input_ids"] == ids
    # the session uses it: prompts with the tokens are known words, and the record says which concept
    spec = _spec("builtin:shapes-v1", out, "<cross>",
                 prompts={"templates": ["a <cyan> {class}"]}, labels={"mode": "refined", "cross_resolutions": [16, 32]})
    session = EngineSession(spec)
    samples = list(session.generate(range(2)))
    assert samples[0].record.prompt == "a <cyan> <cross>"
    assert samples[0].record.parameters["concepts"][0]["tokens"] == ["<cyan>", "<cross>"]
    assert samples[0].record.classes == ["thing"]


def test_sdxl_concept_has_both_encoders_rows(tmp_path):
    path = save_sdxl(tmp_path / "sdxl")
    model = load_model(str(path))
    out, _ = _learn(model, tmp_path, init=("a",))
    from safetensors.torch import load_file

    state = load_file(str(out / "thing.safetensors"))
    assert set(state) == {"clip_l", "clip_g"}
    assert state["clip_l"].shape == (1, 16) and state["clip_g"].shape == (1, 16)
    learned = with_concepts(model, [out])
    for tok, enc, key in ((learned.tokenizer, learned.text_encoder, "clip_l"), (learned.tokenizer_2, learned.text_encoder_2, "clip_g")):
        row = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("<thing>")]
        assert torch.equal(row, state[key][0])
    samples = list(EngineSession(_spec(str(path), out, "<thing>")).generate(range(2)))
    assert samples[0].record.prompt == "a <thing>"


def test_a_concept_of_another_model_is_refused_naming_both(tmp_path):
    out, _ = _learn(load_model("builtin:shapes-v1"), tmp_path, tokens=("<cyan>",), init=("blue",), steps=1)
    with pytest.raises(SpecError) as err:
        EngineSession(_spec("builtin:tiny-random", out, "<cyan>"))
    msg = str(err.value)
    assert err.value.field == "concepts[0]" and "builtin:shapes-v1" in msg and "builtin:tiny-random" in msg


def test_a_missing_concept_names_the_field_and_the_fix(tmp_path):
    with pytest.raises(SpecError) as err:
        EngineSession(_spec("builtin:tiny-random", tmp_path / "nope", "<x>"))
    assert err.value.field == "concepts[0]" and "dsgen concepts learn" in str(err.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "concept.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SpecError, match="concepts\\[0\\]"):
        EngineSession(_spec("builtin:tiny-random", tmp_path / "bad", "<x>"))


def test_init_word_the_model_does_not_know_is_refused(tmp_path):
    with pytest.raises(ConceptError, match="--init-word: 'photo' is not a word"):
        _learn(load_model("builtin:shapes-v1"), tmp_path, tokens=("<cyan>",), init=("photo",), steps=1)


def test_a_multi_vector_token_is_one_word_with_n_embeddings_that_labels_and_diffusers_read(tmp_path):
    from worker.engine.text import encode_prompts, token_groups, tokenize

    model = load_model("builtin:tiny-random")
    out, _ = _learn(model, tmp_path, vectors=3)
    state = read_concept(out).embeddings()["<thing>"][0]
    assert state.shape[0] == 3 and json.loads((out / "concept.json").read_text())["vectors"] == 3
    assert not torch.allclose(state[0], state[1])  # the vectors trained apart from their shared init
    learned = with_concepts(model, [out])
    enc = tokenize(learned.tokenizer, ["a <thing> cat", "a cat"])
    plain = tokenize(learned.tokenizer, ["a cat"])
    row = enc["input_ids"][0].tolist()
    ids = learned.tokenizer.convert_tokens_to_ids(["<thing>", "<thing>_1", "<thing>_2"])
    assert row[2:5] == ids and enc["attention_mask"][0].sum() == plain["attention_mask"][0].sum() + 3
    assert enc["input_ids"].shape[1] == plain["input_ids"].shape[1]  # still padded to the model's length
    assert torch.equal(enc["input_ids"][1], plain["input_ids"][0])  # prompts without the token are untouched
    # a class mention of the word selects its three vectors (so attention labels read all of them)
    from shared.formats.prompts import ClassMention

    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    assert token_groups(offsets, (ClassMention("thing", 1, ((2, 9),)),)) == [[2, 3, 4]]
    weight = learned.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[ids], state)
    assert encode_prompts(learned, ["a <thing> cat"]).embeds.shape[1] == enc["input_ids"].shape[1]

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model.path, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(out / "thing.safetensors"), token="<thing>")
    assert pipe.tokenizer.convert_tokens_to_ids("<thing>_2") != pipe.tokenizer.unk_token_id
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<thing>_2")],
                          state[2])
    samples = list(EngineSession(_spec(model.info.id, out, "<thing>", labels={"mode": "refined"})).generate(range(2)))
    assert samples[0].record.prompt == "a <thing>" and samples[0].semantic is not None


def test_a_word_level_model_takes_multi_vector_tokens_too(tmp_path):
    model = load_model("builtin:shapes-v1")
    out, _ = _learn(model, tmp_path, tokens=("<cyan>", "<cross>"), init=("blue", "star"), vectors=2)
    learned = with_concepts(model, [out])
    from worker.engine.text import tokenize

    row = tokenize(learned.tokenizer, ["a <cyan> <cross>"])["input_ids"][0].tolist()
    names = learned.tokenizer.convert_ids_to_tokens(row)
    assert names[1:6] == ["a", "<cyan>", "<cyan>_1", "<cross>", "<cross>_1"]
    with pytest.raises(ConceptError, match="--vectors"):
        _learn(model, tmp_path / "x", vectors=0)


def test_vector_expansion_that_overflows_keeps_the_end_token():
    from worker.engine.text import _expand_vectors

    enc = {"input_ids": torch.tensor([[0, 7, 9, 1, 1, 1]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]]),
           "offset_mapping": torch.tensor([[[0, 0], [0, 3], [4, 5], [0, 0], [0, 0], [0, 0]]])}
    out = _expand_vectors(enc, {7: [7, 20, 21, 22]}, 6, 1)
    assert out["input_ids"][0].tolist() == [0, 7, 20, 21, 22, 1]  # 9 was cut, the end token kept
    assert out["attention_mask"][0].tolist() == [1] * 6
    assert [tuple(o) for o in out["offset_mapping"][0].tolist()][1:5] == [(0, 3)] * 4


def test_masked_learning_keeps_the_tokens_inside_the_masks(tmp_path):
    """With `masked`, the tokens' cross-attention is rectified to each image's mask: a mask over
    the whole image changes nothing, a mask over part of it changes what is learned."""
    model = load_model("builtin:tiny-random")
    paths = _images(tmp_path / "imgs")
    whole = [np.ones((32, 32), bool)] * len(paths)
    part = []
    for i in range(len(paths)):
        m = np.zeros((32, 32), bool)
        m[8:24, 8 + i:24 + i] = True  # where _images drew the object
        part.append(m)

    def rows(masked: bool, masks, name: str):
        cfg = LearnConfig(["<thing>"], ["the"], steps=3, batch_size=2, lr=1e-2, masked=masked)
        learn_concept(model, paths, cfg, tmp_path / name, masks=masks)
        return read_concept(tmp_path / name).embeddings()["<thing>"][0]

    plain = rows(False, None, "plain")
    assert torch.allclose(rows(True, whole, "whole"), plain, atol=1e-6)
    assert not torch.allclose(rows(True, part, "part"), plain, atol=1e-4)
    assert json.loads((tmp_path / "part" / "concept.json").read_text())["masked"] is True
    with pytest.raises(ConceptError, match="--masked"):
        learn_concept(model, paths, LearnConfig(["<thing>"], ["the"], steps=1, masked=True), tmp_path / "none")


def _unet_state(unet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


def test_unet_step_trains_only_cross_attention_kv_and_the_loaded_copy_shares_the_rest(tmp_path):
    """--unet-steps: after textual inversion the cross-attention key/value train (Custom
    Diffusion), written to unet.safetensors; loading gives a UNet with those weights whose every
    other tensor is the cached model's own; the cached model is never changed."""
    from worker.engine.concepts import CROSS_KV, UNET_FILE

    model = load_model("builtin:tiny-random")
    before = _unet_state(model.unet)
    out, _ = _learn(model, tmp_path, steps=2, unet_steps=3, unet_lr=1e-2, prior_images=2)
    assert all(torch.equal(p, before[n]) for n, p in model.unet.named_parameters())  # the cached UNet untouched
    meta = json.loads((out / "concept.json").read_text())
    assert meta["unet"]["file"] == UNET_FILE and meta["unet"]["steps"] == 3 and meta["unet"]["prior_images"] == 2
    from safetensors.torch import load_file

    saved = load_file(str(out / UNET_FILE))
    assert saved and all(n.endswith(CROSS_KV) for n in saved)
    assert set(saved) == {n for n in before if n.endswith(CROSS_KV)}
    assert any(not torch.equal(w, before[n]) for n, w in saved.items())  # they did train

    learned = with_concepts(model, [out])
    assert learned.unet is not model.unet
    shared = 0
    for (n, p), (_, q) in zip(learned.unet.named_parameters(), model.unet.named_parameters()):
        if n.endswith(CROSS_KV):
            assert torch.equal(p, saved[n]) and p.data_ptr() != q.data_ptr()
        else:
            assert p.data_ptr() == q.data_ptr()  # shared, not copied
            shared += 1
    assert shared > 0
    # the session draws with it, and the record says the concept carries UNet weights
    samples = list(EngineSession(_spec("builtin:tiny-random", out, "<thing>")).generate(range(2)))
    assert samples[0].record.parameters["concepts"][0]["unet_steps"] == 3
    plain, _ = _learn(model, tmp_path / "ti-only", steps=2)
    ti_only = list(EngineSession(_spec("builtin:tiny-random", plain, "<thing>")).generate(range(2)))
    assert not np.array_equal(np.asarray(samples[0].image), np.asarray(ti_only[0].image))
    assert all(torch.equal(p, before[n]) for n, p in model.unet.named_parameters())  # still untouched


def test_unet_step_resumes_and_keeps_its_prior_pictures(tmp_path):
    model = load_model("builtin:tiny-random")
    out, _ = _learn(model, tmp_path, steps=2, unet_steps=2, unet_lr=1e-2, prior_images=2)
    from safetensors.torch import load_file

    first = load_file(str(out / "unet.safetensors"))
    prior = torch.load(out / "prior.pt", weights_only=True)
    from worker.engine.concept_training import PHOTO_TEMPLATES

    # the base model's pictures of the init word, in the templates the tokens learn with
    assert prior["x0"].shape[0] == 2 and prior["prompts"] == [t.format("the") for t in PHOTO_TEMPLATES[:2]]
    # the same run again: both steps are done, nothing retrains, the weights are the same
    _learn(model, tmp_path, steps=2, unet_steps=2, unet_lr=1e-2, prior_images=2)
    again = load_file(str(out / "unet.safetensors"))
    assert all(torch.equal(first[n], again[n]) for n in first)
    # other fine-tune settings against that checkpoint: refused, nothing overwritten
    with pytest.raises(ConceptError, match="UNet fine-tune with other settings"):
        _learn(model, tmp_path, steps=2, unet_steps=4, unet_lr=1e-2, prior_images=2)
    assert all(torch.equal(first[n], w) for n, w in load_file(str(out / "unet.safetensors")).items())


def test_a_learned_concept_goes_on_to_a_unet_fine_tune_in_its_folder(tmp_path):
    """Textual inversion done without --unet-steps: the same command with them reuses the learned
    rows (no step of textual inversion again) and adds the fine-tune."""
    model = load_model("builtin:tiny-random")
    out, _ = _learn(model, tmp_path, steps=2)
    rows = read_concept(out).embeddings()["<thing>"][0]
    assert read_concept(out).unet_file is None
    _, state = _learn(model, tmp_path, steps=2, unet_steps=1, unet_lr=1e-2, prior_images=0)
    assert len(state.losses) == 2  # the two steps of the first run, none more
    assert torch.equal(read_concept(out).embeddings()["<thing>"][0], rows) and read_concept(out).unet_file


def test_two_concepts_with_unet_weights_or_foreign_weights_are_refused_naming_the_field(tmp_path):
    model = load_model("builtin:tiny-random")
    a, _ = _learn(model, tmp_path / "a", steps=1, unet_steps=1, prior_images=0)
    b, _ = _learn(model, tmp_path / "b", tokens=("<other>",), steps=1, unet_steps=1, prior_images=0)
    with pytest.raises(ConceptError, match=r"concepts\[1\]: only one concept of a job may carry fine-tuned UNet") as err:
        with_concepts(model, [a, b])
    assert err.value.field == "concepts[1]"
    from safetensors.torch import load_file, save_file

    weights = load_file(str(a / "unet.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name][:, :-1].contiguous()  # not this model's shape
    save_file(weights, str(a / "unet.safetensors"))
    with pytest.raises(ConceptError, match=r"concepts\[0\]: .*does not hold weights of this model's UNet"):
        with_concepts(model, [a], ["concepts[0]"])
    (a / "unet.safetensors").unlink()
    with pytest.raises(ConceptError, match=r"concepts\[0\]: .*lacks unet.safetensors"):
        with_concepts(model, [a], ["concepts[0]"])


def test_unet_params_all_trains_the_whole_unet_and_a_wrong_choice_is_refused_before_learning(tmp_path):
    from safetensors.torch import load_file

    model = load_model("builtin:tiny-random")
    before = _unet_state(model.unet)
    out, _ = _learn(model, tmp_path, steps=1, unet_steps=2, unet_lr=1e-2, prior_images=0, unet_params="all")
    saved = load_file(str(out / "unet.safetensors"))
    assert set(saved) == set(before) and json.loads((out / "concept.json").read_text())["unet"]["parameters"] == "all"
    assert any(not torch.equal(w, before[n]) for n, w in saved.items() if "attn2" not in n)  # beyond the projections
    learned = with_concepts(model, [out])
    assert all(torch.equal(p, saved[n]) for n, p in learned.unet.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.unet.named_parameters())  # the cached model untouched
    with pytest.raises(ConceptError, match="--unet-params: one of cross-kv, all"):
        _learn(model, tmp_path / "bad", steps=1, unet_steps=1, unet_params="lora")
    assert not (tmp_path / "bad" / "concept").exists()
