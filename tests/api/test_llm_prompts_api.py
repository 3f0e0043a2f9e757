"""prompts.source llm over the API: only the server's configured endpoint; prompts stored with the job."""
from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.support.llm import ChatServer

from api_spec import SPEC


def _llm_spec(**llm):
    s = copy.deepcopy(SPEC)
    s["prompts"] = {"source": "llm", "llm": {"count": 2, **llm}}
    return s


@pytest.fixture
def chat():
    with ChatServer(lambda body: "A small " + ("cat" if "cat" in body["messages"][0]["content"] else "dog") + " outside.") as server:
        yield server


def _client(settings, dispatcher, store, session_factory, **over):
    app = create_app(settings.model_copy(update=over), dispatcher=dispatcher, store=store, session_factory=session_factory)
    return TestClient(app)


def test_the_server_endpoint_writes_the_prompts_once_and_the_job_keeps_them(settings, dispatcher, store, session_factory,
                                                                             headers, chat):
    with _client(settings, dispatcher, store, session_factory, llm_url=chat.url, llm_model="served-model") as client:
        r = client.post("/v1/jobs", json=_llm_spec(), headers=headers)
        assert r.status_code == 201, r.text
        llm = client.get(f"/v1/jobs/{r.json()['id']}", headers=headers).json()["spec"]["prompts"]["llm"]
    assert llm["generated"] == ["A small cat outside.", "A small dog outside."]
    assert llm["generated_by"]["model"] == "served-model" and "url" not in str(llm["generated_by"])
    assert [q["model"] for q in chat.requests] == ["served-model"] * 2


def test_llm_fields_a_tenant_may_not_set(settings, dispatcher, store, session_factory, headers, chat):
    with _client(settings, dispatcher, store, session_factory, llm_url=chat.url, llm_model="m") as client:
        r = client.post("/v1/jobs", json=_llm_spec(backend="local", model="/srv/models/x"), headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "prompts.llm.backend", r.text
        r = client.post("/v1/jobs", json=_llm_spec(generated=["a cat"]), headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "prompts.llm.generated"
        r = client.post("/v1/jobs", json={**_llm_spec(), "prompts": {"source": "llm", "llm": {"url": "http://evil/v1"}}},
                        headers=headers)
        assert r.status_code == 422 and "prompts.llm.url" in r.text
    assert chat.requests == []  # refused before any request went out
    with _client(settings, dispatcher, store, session_factory) as client:  # no endpoint configured
        r = client.post("/v1/jobs", json=_llm_spec(), headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "prompts.source"
