"""What a learned-concept folder is, for the parts that must recognise one without torch (uploads
over the API): `dsgen concepts learn` writes CONCEPT_FILE (format CONCEPT_FORMAT) beside one
safetensors file per token; worker/engine/concepts.py reads the folder."""
from __future__ import annotations

import json
import re

from shared.formats.prompts import CONCEPT_TOKEN

CONCEPT_FILE = "concept.json"
CONCEPT_FORMAT = "dsgen-concept"
# Model ids that mean the same weights wherever they are named: a concept learned on one of these
# can be checked against a job's model by id alone (a folder path or hub id may be the same
# weights under another name: the worker compares revisions when it loads them).
CANONICAL_MODEL_PREFIX = "builtin:"


def concept_summary(raw: bytes) -> dict | None:
    """{"tokens", "base_model": {"id", "revision"}} of a CONCEPT_FILE's bytes; None when they are
    not a dsgen concept."""
    try:
        meta = json.loads(raw)
        if meta.get("format") != CONCEPT_FORMAT:
            return None
        base, tokens = meta["base_model"], meta["tokens"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and re.fullmatch(CONCEPT_TOKEN, t)
                                                                  for t in tokens):
            return None
        return {"tokens": tokens,
                "base_model": {"id": str(base["id"]), "revision": str(base.get("revision", ""))}}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def foreign_concept(summary: dict, model_id: str) -> str | None:
    """Why a concept cannot serve a job's model, when its ids alone show it (canonical ids that
    differ), else None."""
    base = summary["base_model"]["id"]
    if base != model_id and (base.startswith(CANONICAL_MODEL_PREFIX) or model_id.startswith(CANONICAL_MODEL_PREFIX)):
        return (f"concept {', '.join(summary['tokens'])} was learned on {base}, not on this job's model {model_id}; "
                f"use model {base!r} or learn the concept again with `dsgen concepts learn --model {model_id}`")
    return None
