"""prompts.source llm against a real local HTTP chat-completions server."""
from __future__ import annotations

import re

import pytest

from shared.formats.llm_prompts import EndpointWriter, LLMError, clean_reply, resolve_llm_prompts, without_generated
from shared.formats.prompts import plan_sample
from shared.formats.spec import SpecError, parse_spec
from tests.support.llm import ChatServer


def _spec(**llm):
    return parse_spec({"model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog", "words": ["puppy"]}],
                       "num_images": 6, "seed": 4, "prompts": {"source": "llm", "llm": {"count": 3, **llm}}})


def _asked_word(body) -> str:
    return re.search(r"shows a (\w+)", body["messages"][0]["content"]).group(1)


def test_prompts_are_written_once_name_their_classes_and_plans_use_them():
    tries: dict[str, int] = {}

    def reply(body):
        word = _asked_word(body)
        tries[word] = tries.get(word, 0) + 1
        if word == "puppy" and tries[word] == 1:
            return "A sunny meadow with flowers."  # names no class: asked again
        return f'Caption: "A {word} sleeping on a red sofa."\nExtra line'

    with ChatServer(reply) as server:
        spec = resolve_llm_prompts(_spec(), EndpointWriter(server.url, "tiny-chat", api_key="k1"))
    llm = spec.prompts.llm
    assert llm.generated == ["A cat sleeping on a red sofa.", "A puppy sleeping on a red sofa.", "A cat sleeping on a red sofa."]
    assert llm.generated_by == {"backend": "endpoint", "model": "tiny-chat", "temperature": 0.8, "count": 3}
    assert len(server.requests) == 4 and tries["puppy"] == 2
    first = server.requests[0]
    assert first["_path"] == "/v1/chat/completions" and first["model"] == "tiny-chat" and first["_auth"] == "Bearer k1"
    assert len({r["seed"] for r in server.requests}) == 4  # a retry is a fresh draw
    plans = [plan_sample(spec, i) for i in range(6)]
    assert plans[1].prompt.startswith("A puppy sleeping") and plans[1].classes == ["dog"]
    assert plans[4].prompt == plans[1].prompt  # sample i uses prompt i mod count
    assert without_generated(spec) == _spec()
    # resolving a resolved spec asks nothing
    assert resolve_llm_prompts(spec, EndpointWriter("http://127.0.0.1:9/v1", "x")) is spec


def test_a_model_that_never_names_the_class_is_refused_naming_it():
    with ChatServer(lambda body: "An empty street at night.") as server:
        with pytest.raises(LLMError) as err:
            resolve_llm_prompts(_spec(max_attempts=2), EndpointWriter(server.url, "m"))
    assert err.value.field == "prompts.llm" and "'cat'" in str(err.value) and "2 attempts" in str(err.value)
    assert len(server.requests) == 2


def test_unreachable_endpoint_and_unresolved_plans_are_clear_errors():
    with pytest.raises(LLMError, match="cannot be reached"):
        resolve_llm_prompts(_spec(), EndpointWriter("http://127.0.0.1:9/v1", "m", timeout_s=2))
    with pytest.raises(SpecError, match="prompts.llm: the prompts are written once"):
        plan_sample(_spec(), 0)


def test_spec_checks():
    with pytest.raises(SpecError, match="prompts.llm"):
        parse_spec({"model": "m", "classes": [{"name": "a"}], "num_images": 1, "prompts": {"source": "llm"}})
    with pytest.raises(SpecError, match="instruction"):
        _spec(instruction="write something")
    with pytest.raises(SpecError, match="model"):
        _spec(backend="local")


def test_clean_reply():
    assert clean_reply('\n  "A cat."  \n') == "A cat."
    assert clean_reply("Prompt: a dog on grass") == "a dog on grass"
