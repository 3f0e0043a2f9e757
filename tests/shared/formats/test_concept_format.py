"""A concept folder's concept.json read without torch (shared/formats/concepts.py): what an API
upload is recognised and checked by."""
from __future__ import annotations

import json

from shared.formats.concepts import CONCEPT_FORMAT, concept_summary, foreign_concept


def meta(**over) -> bytes:
    base = {"format": CONCEPT_FORMAT, "tokens": ["<cyan>", "<cross>"], "files": {},
            "base_model": {"id": "builtin:shapes-v2", "revision": "b0cfc5b0702c4427"}}
    return json.dumps({**base, **over}).encode()


def test_a_concept_is_summarised_by_its_tokens_and_base_model():
    assert concept_summary(meta()) == {"tokens": ["<cyan>", "<cross>"],
                                       "base_model": {"id": "builtin:shapes-v2", "revision": "b0cfc5b0702c4427"}}


def test_what_is_not_a_dsgen_concept_has_no_summary():
    for raw in (b"not json", b"[]", meta(format="other"), meta(tokens=[]), meta(tokens="<cyan>"),
                meta(tokens=["cyan"]), meta(tokens=[3]), meta(base_model="builtin:x"), meta(base_model={})):
        assert concept_summary(raw) is None, raw


def test_a_concept_of_another_builtin_model_is_foreign_naming_both_and_the_fix():
    summary = concept_summary(meta())
    assert foreign_concept(summary, "builtin:shapes-v2") is None
    why = foreign_concept(summary, "builtin:tiny-random")
    assert "builtin:shapes-v2" in why and "builtin:tiny-random" in why
    assert "dsgen concepts learn --model builtin:tiny-random" in why
    # a folder or hub id may be the same weights under another name: the worker's revision check decides
    local = concept_summary(meta(base_model={"id": "/home/me/sd15", "revision": "r"}))
    assert foreign_concept(local, "runwayml/stable-diffusion-v1-5") is None
    assert foreign_concept(local, "builtin:shapes-v2") is not None
