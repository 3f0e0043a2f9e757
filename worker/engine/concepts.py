"""Learned concepts (textual inversion): new prompt tokens whose embeddings were learned from a
few real images, the UNet and text encoder(s) frozen.

A concept folder holds
- one `<name>.safetensors` per token, in the layout diffusers' `load_textual_inversion` reads:
  `{token: [D]}` for one-encoder models (SD 1.x/2.x, the builtin shapes models), and
  `{"clip_l": [1, D1], "clip_g": [1, D2]}` for SDXL (both encoders, as SDXL embeddings ship);
- `concept.json`: the tokens, the files, and the base model's id and revision it was learned on
  (a concept is refused on any other model: its embedding means nothing elsewhere);
- optionally `unet.safetensors`: the UNet weights fine-tuned with the tokens (`dsgen concepts learn
  --unet-steps`, worker.engine.concept_unet; the cross-attention key/value by default), by name.

`with_concepts(model, folders)` returns a copy of the model whose tokenizer(s) know the tokens
and whose text encoder(s) have the learned rows (and, for a concept with UNet weights, a UNet
whose fine-tuned weights are the concept's, every other tensor shared); the cached base model
is never changed.
The same `add_concept_tokens` serves training (rows initialised from a related word) and
loading (rows from the file), for CLIP BPE and word-level tokenizers alike.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from shared.formats.concepts import CONCEPT_FILE, CONCEPT_FORMAT
from shared.formats.prompts import CONCEPT_TOKEN
from shared.formats.spec import SpecError
from worker.engine.text import VECTORS_ATTR

UNET_FILE = "unet.safetensors"
TOKEN = CONCEPT_TOKEN
TOKEN_PATTERN = re.compile(rf"^{TOKEN}$")
# Parameter-name endings of the cross-attention projections a concept fine-tunes by default (Custom Diffusion).
CROSS_KV = ("attn2.to_k.weight", "attn2.to_v.weight")
# What `concepts learn --unet-params` may train: those projections, or every UNet weight (DreamBooth;
# a full UNet's worth of file and memory, for small models).
UNET_PARAMS = ("cross-kv", "all")
SDXL_KEYS = ("clip_l", "clip_g")


class ConceptError(SpecError):
    def __init__(self, message: str, field: str = "concepts"):
        super().__init__(message, field=field)


@dataclass(frozen=True)
class Concept:
    folder: Path
    tokens: tuple[str, ...]
    files: dict[str, str]  # token -> file name
    base_id: str
    base_revision: str
    meta: dict[str, Any]
    unet_file: str | None = None  # the fine-tuned cross-attention k/v (concept_unet), if any

    def unet_weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.folder / self.unet_file)) if self.unet_file else {}

    def embeddings(self) -> dict[str, list[torch.Tensor]]:
        """token -> one [N, D] matrix per text encoder (in encoder order): its N vectors."""
        from safetensors.torch import load_file

        out = {}
        for token in self.tokens:
            state = load_file(str(self.folder / self.files[token]))
            if set(state) == set(SDXL_KEYS):
                out[token] = [_matrix(state["clip_l"]), _matrix(state["clip_g"])]
            elif len(state) == 1:
                out[token] = [_matrix(next(iter(state.values())))]
            else:
                raise ConceptError(f"concepts: {self.folder / self.files[token]} is not a textual-inversion embedding")
        return out


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """[D] (one vector, as most embeddings ship) or [N, D] -> [N, D]."""
    return t.reshape(-1, t.shape[-1])


def vector_tokens(token: str, n: int) -> list[str]:
    """The tokenizer entries of a token with n vectors: `<t>`, `<t>_1`, ... (diffusers' naming)."""
    return [token] + [f"{token}_{k}" for k in range(1, n)]


def check_token(token: str, field: str = "--token") -> str:
    if not TOKEN_PATTERN.match(token):
        raise ConceptError(f"{field}: {token!r} is not a concept token; write it as <name> (letters, digits, '-', '_'), "
                           "e.g. <my-part>", field=field)
    return token


def token_file(token: str) -> str:
    return token.strip("<>") + ".safetensors"


def read_concept(folder: str | Path, field: str = "concepts") -> Concept:
    folder = Path(folder)
    meta_path = folder / CONCEPT_FILE
    if not meta_path.is_file():
        raise ConceptError(f"{field}: {folder} is not a concept folder (no {CONCEPT_FILE}); make one with "
                           "`dsgen concepts learn`", field=field)
    try:
        meta = json.loads(meta_path.read_text())
        tokens = tuple(meta["tokens"])
        files = {t: meta["files"][t] for t in tokens}
        base = meta["base_model"]
    except (ValueError, KeyError, TypeError):
        raise ConceptError(f"{field}: {meta_path} is not a {CONCEPT_FORMAT} file (tokens, files, base_model)", field=field) from None
    if meta.get("format") != CONCEPT_FORMAT:
        raise ConceptError(f"{field}: {meta_path} is not a {CONCEPT_FORMAT} file", field=field)
    for t in tokens:
        check_token(t, field)
        if not (folder / files[t]).is_file() or "/" in files[t] or "\\" in files[t]:
            raise ConceptError(f"{field}: {folder} lacks {files[t]} (the embedding of {t})", field=field)
    unet_file = (meta.get("unet") or {}).get("file")
    if unet_file is not None and (not isinstance(unet_file, str) or "/" in unet_file or "\\" in unet_file
                                  or not (folder / unet_file).is_file()):
        raise ConceptError(f"{field}: {folder} lacks {unet_file} (its fine-tuned UNet weights)", field=field)
    return Concept(folder, tokens, files, str(base["id"]), str(base["revision"]), meta, unet_file)


def _pairs(model) -> list[tuple[Any, Any]]:
    pairs = [(model.tokenizer, model.text_encoder)]
    if model.text_encoder_2 is not None:
        pairs.append((model.tokenizer_2, model.text_encoder_2))
    return pairs


def word_embedding(tokenizer, text_encoder, word: str) -> torch.Tensor:
    """The input embedding of `word` (mean of its tokens when it is several)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and unk in ids and unk not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)):
        vocab = sorted(w for w in tokenizer.get_vocab() if w not in tokenizer.all_special_tokens)
        raise ConceptError(f"--init-word: {word!r} is not a word of this model; known words: {' '.join(vocab[:200])}",
                           field="--init-word")
    weight = text_encoder.get_input_embeddings().weight
    return weight[torch.tensor(ids)].mean(0).detach().clone()


def add_concept_tokens(model, rows: dict[str, Sequence[torch.Tensor]]) -> list[dict[str, list[int]]]:
    """Add the tokens to the model's tokenizer(s) (in place), grow the text encoder(s)' input
    embeddings and set the rows ([D] or [N, D] per encoder: N vectors). A token with N > 1 vectors
    is N tokenizer entries that `worker.engine.text.tokenize` writes for the one word. Returns, per
    encoder, each token's ids."""
    ids_per_encoder = []
    for e, (tokenizer, encoder) in enumerate(_pairs(model)):
        matrices = {t: _matrix(rows[t][e]) for t in rows}
        names = {t: vector_tokens(t, m.shape[0]) for t, m in matrices.items()}
        vocab = tokenizer.get_vocab()
        known = [n for t in rows for n in names[t] if n in vocab]
        if known:
            raise ConceptError(f"concepts: token {known[0]} is already a word of this model; pick another name "
                               "(two concepts cannot share a token)")
        tokenizer.add_tokens([n for t in rows for n in names[t]])
        ids = {t: list(tokenizer.convert_tokens_to_ids(names[t])) for t in rows}
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set below
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            for t, m in matrices.items():
                weight[ids[t]] = m.to(weight.dtype, copy=True).to(weight.device)
        vectors = {i[0]: i for i in ids.values() if len(i) > 1}
        if vectors:
            setattr(tokenizer, VECTORS_ATTR, {**getattr(tokenizer, VECTORS_ATTR, {}), **vectors})
        ids_per_encoder.append(ids)
    return ids_per_encoder


def private_copy(model):
    """A copy of the model whose tokenizers and text encoders may change (UNet/VAE shared)."""
    update = {"tokenizer": copy.deepcopy(model.tokenizer), "text_encoder": copy.deepcopy(model.text_encoder)}
    if model.text_encoder_2 is not None:
        update |= {"tokenizer_2": copy.deepcopy(model.tokenizer_2), "text_encoder_2": copy.deepcopy(model.text_encoder_2)}
    return replace(model, **update)


def unet_param_names(unet, which: str = "cross-kv") -> list[str]:
    """The UNet weights a concept's fine-tune trains: the cross-attention key/value (diffusers
    names them attn2.to_k / attn2.to_v), or all."""
    if which not in UNET_PARAMS:
        raise ConceptError(f"--unet-params: one of {', '.join(UNET_PARAMS)} (got {which!r})", field="--unet-params")
    return [n for n, _ in unet.named_parameters() if which == "all" or n.endswith(CROSS_KV)]


def private_unet(unet, weights: dict[str, torch.Tensor]):
    """A copy of `unet` with its own modules and its own tensors for the parameters named in
    `weights` (set to them); every other parameter and buffer is the original's tensor (no memory
    doubled beyond what the concept changes)."""
    memo = {id(t): t for n, t in [*unet.named_parameters(), *unet.named_buffers()] if n not in weights}
    copied = copy.deepcopy(unet, memo)
    params = dict(copied.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            params[name].copy_(w.to(params[name].dtype))
    return copied


def _unet_with(model, concept: Concept, field: str):
    weights = concept.unet_weights()
    params = dict(model.unet.named_parameters())
    wrong = sorted(n for n, w in weights.items() if n not in params or tuple(w.shape) != tuple(params[n].shape))
    if wrong or not weights:
        raise ConceptError(f"{field}: {concept.folder / concept.unet_file} does not hold weights of this model's UNet "
                           f"({wrong[0] if wrong else 'none'}); learn the concept again with `dsgen concepts learn "
                           "--unet-steps`", field=field)
    return private_unet(model.unet, weights)


def check_base(concept: Concept, model, field: str) -> None:
    if concept.base_revision != model.info.revision:
        raise ConceptError(
            f"{field}: concept {', '.join(concept.tokens)} was learned on {concept.base_id} (revision "
            f"{concept.base_revision}), not on this job's model {model.info.id} (revision {model.info.revision}); "
            f"use model {concept.base_id!r} or learn the concept again with `dsgen concepts learn --model {model.info.id}`",
            field=field,
        )


_applied: dict[tuple, Any] = {}


def with_concepts(model, folders: Sequence[str | Path], fields: Sequence[str] | None = None):
    """The model with the concepts' tokens loaded (a cached copy per model + concept set)."""
    if not folders:
        return model
    fields = list(fields) if fields is not None else [f"concepts[{i}]" for i in range(len(folders))]
    concepts = [read_concept(f, field) for f, field in zip(folders, fields)]
    for c, field in zip(concepts, fields):
        check_base(c, model, field)
    tuned = [field for c, field in zip(concepts, fields) if c.unet_file]
    if len(tuned) > 1:
        raise ConceptError(f"{tuned[1]}: only one concept of a job may carry fine-tuned UNet weights ({tuned[0]} does "
                           "too); learn such concepts together (several --token in one `dsgen concepts learn`)",
                           field=tuned[1])
    seen: dict[str, str] = {}
    for c, field in zip(concepts, fields):
        for t in c.tokens:
            if t in seen:
                raise ConceptError(f"{field}: token {t} is also in {seen[t]}; each token may come from one concept", field=field)
            seen[t] = field
    key = (id(model), model.info.revision, tuple((str(c.folder), (c.folder / CONCEPT_FILE).stat().st_mtime_ns) for c in concepts))
    if key not in _applied:
        rows: dict[str, list[torch.Tensor]] = {}
        n_enc = len(_pairs(model))
        for c, field in zip(concepts, fields):
            for token, emb in c.embeddings().items():
                dims = [enc.get_input_embeddings().weight.shape[1] for _, enc in _pairs(model)]
                if len(emb) != n_enc or [e.shape[-1] for e in emb] != dims or len({e.shape[0] for e in emb}) != 1:
                    raise ConceptError(f"{field}: {token}'s embedding has sizes {[list(e.shape) for e in emb]}, this "
                                       f"model's text encoders take {dims}", field=field)
                rows[token] = emb
        copied = private_copy(model)
        add_concept_tokens(copied, rows)
        for c, field in zip(concepts, fields):
            if c.unet_file:
                copied = replace(copied, unet=_unet_with(model, c, field))
        _applied.clear()  # one concept set at a time, like the model cache
        _applied[key] = copied
    return _applied[key]


def concept_lineage(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """What a sample records of the concepts its model was given."""
    out = []
    for f in folders:
        c = read_concept(f)
        out.append({"tokens": list(c.tokens), "base_revision": c.base_revision,
                    "steps": c.meta.get("training", {}).get("steps"), "name": c.meta.get("name"),
                    "unet_steps": (c.meta.get("unet") or {}).get("steps", 0)})
    return out
