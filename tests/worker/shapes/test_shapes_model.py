"""The shapes model's components: tokenizer, local text encoder, attention-scale folding,
seeded and resumable training, export to a folder the engine's loader reads."""
import json

import pytest
import torch

from shared.formats.spec import GenerationSpec
from shared.shapes import VOCABULARY
from worker.shapes.model import (
    MAX_LENGTH,
    PRESETS,
    SPECIAL_TOKENS,
    add_query_scaling,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    encode_text,
    folded_unet_state,
)
from worker.shapes.train import TrainConfig, Trainer, export_checkpoint, train

TINY = PRESETS["tiny"]


def test_tokenizer_is_word_level_over_the_vocabulary():
    tok = build_tokenizer()
    assert list(tok.get_vocab()) == list(SPECIAL_TOKENS + VOCABULARY) or \
        sorted(tok.get_vocab(), key=tok.get_vocab().get) == list(SPECIAL_TOKENS + VOCABULARY)
    enc = tok("A Red circle, a blue square; circle square", return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert toks == ["<bos>", "a", "red", "circle", ",", "a", "blue", "square", ";", "circle", "square"]
    text = "A Red circle, a blue square; circle square"
    assert [text[a:b].lower() for a, b in enc["offset_mapping"][1:]] == toks[1:]
    assert tok.model_max_length == MAX_LENGTH
    assert tok("a green hexagon")["input_ids"][-1] == tok.unk_token_id


def test_engine_refuses_unknown_words_listing_the_vocabulary():
    from worker.engine.text import UnknownWordsError, tokenize

    with pytest.raises(UnknownWordsError) as err:
        tokenize(build_tokenizer(), ["a green hexagon"])
    assert "'hexagon'" in str(err.value) and "triangle" in str(err.value)


def test_text_encoder_is_local_no_token_sees_the_whole_caption():
    torch.manual_seed(0)
    te = build_text_encoder(TINY).eval()
    tok = build_tokenizer()
    with torch.no_grad():
        a, _ = encode_text(tok, te, ["a red circle and a blue square"])
        b, _ = encode_text(tok, te, ["a green circle and a blue square"])
    # tokens: <bos> a red circle and a blue square ; "red" is token 2
    diff = (a - b).abs().amax(-1)[0]
    assert diff[3] > 1e-3  # "circle" knows its colour
    assert torch.all(diff[5:9] < 1e-5)  # the square's phrase does not see the circle's colour


def test_folding_the_query_scale_gives_the_same_unet():
    torch.manual_seed(0)
    unet = build_unet(TINY).eval()
    plain = build_unet(TINY).eval()
    plain.load_state_dict(folded_unet_state(unet, TINY))
    add_query_scaling(unet, TINY)
    x, t, h = torch.randn(2, 3, 32, 32), torch.tensor([10, 500]), torch.randn(2, MAX_LENGTH, TINY.text_dim)
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=h).sample
        b = plain(x, t, encoder_hidden_states=h).sample
        unscaled = build_unet(TINY).eval()
        unscaled.load_state_dict(unet.state_dict())
        c = unscaled(x, t, encoder_hidden_states=h).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (a - c).abs().max() > 1e-4  # the scale matters, so the check above is meaningful


def _tc(out, steps):
    return TrainConfig(out=str(out), steps=steps, batch_size=2, preset="tiny", warmup=2, ckpt_every=1,
                       snapshot_every=100, bf16=False, attn_loss=0.05)


def test_training_is_seeded_and_resume_equals_uninterrupted(tmp_path):
    straight = train(_tc(tmp_path / "a", 2), progress=False)
    train(_tc(tmp_path / "b", 1), progress=False)
    with pytest.raises(FileExistsError):
        train(_tc(tmp_path / "b", 2), progress=False)
    resumed = train(_tc(tmp_path / "b", 2), resume=True, progress=False)
    assert resumed.step == straight.step == 2
    for (k, v1), v2 in zip(straight.ema_unet.state_dict().items(), resumed.ema_unet.state_dict().values()):
        torch.testing.assert_close(v1, v2, msg=k)
    lines = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["loss"] > 0 for x in lines)


def test_exported_folder_loads_with_the_engine_loader_and_generates(tmp_path):
    from worker.engine.generate import generate
    from worker.engine.loading import load_model

    trainer = Trainer(_tc(tmp_path / "run", 1))
    trainer.train_step()
    trainer.save()
    folder = export_checkpoint(tmp_path / "run" / "latest.pt", tmp_path / "model")
    extras = json.loads((folder / "dsgen.json").read_text())
    assert extras["pixel_space"] and extras["text_attention_mask"] and extras["vocabulary"] == list(VOCABULARY)
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    model = load_model(str(folder))
    assert model.vae is None and model.unet.config.in_channels == 3
    # the shipped UNet has the query scale folded in: same output as the training form
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([300])
    h, m = encode_text(model.tokenizer, model.text_encoder, ["a red circle"])
    with torch.no_grad():  # trainer.ema_unet carries the training-form hooks
        torch.testing.assert_close(model.unet(x, t, h, encoder_attention_mask=m).sample,
                                   trainer.ema_unet.eval()(x, t, h, encoder_attention_mask=m).sample,
                                   atol=1e-5, rtol=1e-4)
    out = generate(model, ["a red circle and a blue square"], [0],
                   GenerationSpec(width=32, height=32, steps=2, guidance_scale=3.0, scheduler="ddim", batch_size=1))
    assert out.images[0].size == (32, 32)


def test_training_continues_from_an_exported_folder_when_the_run_is_gone(tmp_path):
    """--init-from: the export's weights come back exactly (query scales unfolded), the step and
    the data stream continue from the export, and the fresh optimizer warms up again."""
    first = Trainer(_tc(tmp_path / "run", 1))
    for _ in range(3):
        first.train_step()
    folder = first.export(tmp_path / "model")
    tc = _tc(tmp_path / "again", 5)
    tc.init_from = str(folder)
    second = Trainer(tc)
    second.init_from_export(folder)
    assert second.step == 3 and second.lr_at(3) < tc.lr  # warm-up restarts at the export's step
    for (k, v1), v2 in zip(first.ema_unet.state_dict().items(), second.ema_unet.state_dict().values()):
        torch.testing.assert_close(v1, v2, msg=k)
    for (k, v1), v2 in zip(first.ema_te.state_dict().items(), second.text_encoder.state_dict().values()):
        torch.testing.assert_close(v1, v2, msg=k)
    trainer = train(tc, progress=False)
    assert trainer.step == 5
    lines = [json.loads(x) for x in (tmp_path / "again" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 5]


def test_localisation_targets_point_at_each_objects_words():
    from shared.shapes import make_caption, render_scene
    from worker.shapes.attn_loss import token_targets

    tok = build_tokenizer()
    checked = 0
    for seed in range(30):
        scene = render_scene(seed)
        for suffix in (False, True):
            cap = make_caption([(o.colour, o.shape) for o in scene.objects], class_suffix=suffix)
            toks = tok.convert_ids_to_tokens(tok(cap)["input_ids"])
            for k, mask in token_targets(scene, cap, MAX_LENGTH):
                owners = [o for o in scene.objects if scene.instance_mask(o)[mask].any()]
                assert owners and all(toks[k] in (o.colour, o.shape) for o in owners)
                checked += 1
    assert checked > 60


def test_localisation_loss_rewards_attention_inside_the_mask():
    import numpy as np

    from worker.shapes.attn_loss import localisation_loss

    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    uniform = torch.full((1, 16, 3), 1 / 3)
    inside = uniform.clone()
    inside[0, mask.flatten(), 1] = 0.9
    targets = [[(1, mask)]]
    assert localisation_loss([inside], targets, "cpu") < localisation_loss([uniform], targets, "cpu")


def test_ablation_overrides_change_the_trained_world_and_side(tmp_path):
    tc = _tc(tmp_path / "run", 1)
    tc.colours, tc.image_size, tc.background = "red,green,blue,yellow,purple", 48, "gradient"
    trainer = Trainer(tc)
    assert trainer.world.colours[-1] == "purple" and trainer.world.background == "gradient"
    assert "purple" in trainer.tokenizer.get_vocab()
    trainer.train_step()
    folder = trainer.export(tmp_path / "model")
    extras = json.loads((folder / "dsgen.json").read_text())
    assert extras["default_generation"]["width"] == 48 and "purple" in extras["colours"]
