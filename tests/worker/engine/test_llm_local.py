"""prompts.source llm with a local transformers causal LM (tiny, built from a config), and
`dsgen run`'s folder keeping the written prompts (a re-run asks nothing)."""
from __future__ import annotations

import json

import pytest
import torch

from shared.formats.llm_prompts import LLMError, resolve_llm_prompts
from shared.formats.spec import parse_spec
from tests.support.llm import ChatServer
from worker.engine.llm_local import LocalWriter
from worker.engine.local_run import run_to_folder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("lm")
    vocab = {"<pad>": 0, "<unk>": 1, "circle": 2, "square": 3, "a": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _spec(classes, model, **llm):
    return parse_spec({"model": "builtin:shapes-v1", "classes": [{"name": c} for c in classes], "num_images": 2,
                       "prompts": {"source": "llm", "llm": {"backend": "local", "model": str(model), "count": 2,
                                                            "max_tokens": 12, "temperature": 1.0, **llm}}})


def test_local_causal_lm_writes_prompts_that_name_their_classes(tiny_lm):
    spec = resolve_llm_prompts(_spec(["circle", "square"], tiny_lm), LocalWriter(str(tiny_lm)))
    gen = spec.prompts.llm.generated
    assert len(gen) == 2 and "circle" in gen[0].split() and "square" in gen[1].split()
    assert set(" ".join(gen).split()) <= {"circle", "square", "a"}  # what this model can say
    assert spec.prompts.llm.generated_by["backend"] == "local" and len(spec.prompts.llm.generated_by["revision"]) == 16
    # the same seed: the same prompts
    assert resolve_llm_prompts(_spec(["circle", "square"], tiny_lm), LocalWriter(str(tiny_lm))).prompts.llm.generated == gen


def test_a_class_the_model_cannot_say_is_refused(tiny_lm):
    with pytest.raises(LLMError, match="'star'"):
        resolve_llm_prompts(_spec(["star"], tiny_lm, max_attempts=2), LocalWriter(str(tiny_lm)))


def test_run_folder_keeps_the_written_prompts(tmp_path, monkeypatch):
    with ChatServer(lambda body: "a red circle") as chat:
        monkeypatch.setenv("DSGEN_LLM_URL", chat.url)
        monkeypatch.setenv("DSGEN_LLM_MODEL", "served")
        spec = parse_spec({"model": "builtin:shapes-v1", "classes": [{"name": "circle"}], "num_images": 2,
                           "prompts": {"source": "llm", "llm": {"count": 1}, "append_class_names": False},
                           "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
                           "labels": {"mode": "none"}, "export": {"formats": []}})
        run_to_folder(spec, tmp_path / "out")
        assert len(chat.requests) == 1
        stored = json.loads((tmp_path / "out" / "spec.json").read_text())
        assert stored["prompts"]["llm"]["generated"] == ["a red circle"]
        record = json.loads((tmp_path / "out" / "samples" / "000001" / "record.json").read_text())
        assert record["prompt"] == "a red circle"
        report = run_to_folder(spec, tmp_path / "out")  # a re-run: same prompts, nothing asked, nothing redone
        assert len(chat.requests) == 1 and report.generated == 0
