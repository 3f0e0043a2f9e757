"""Prompt encoding and the mapping from class words to token indexes.

Labels read the cross-attention of the tokens that spell a class's words; the fast
tokenizer's character offsets tell which tokens those are, for any tokenizer (CLIP BPE,
word-level, byte-level) without re-implementing its rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.formats.prompts import ClassMention
from shared.formats.spec import SpecError


class UnknownWordsError(SpecError):
    def __init__(self, message: str):
        super().__init__(message, field="prompts")


@dataclass
class EncodedPrompts:
    embeds: torch.Tensor  # [B, T, D] conditional text states
    attention_mask: torch.Tensor | None  # [B, T] 1 = real token, when the model masks padding
    pooled: torch.Tensor | None  # [B, D2] SDXL pooled text embeds
    offsets: list[list[tuple[int, int]]]  # per prompt, per token: character span
    input_ids: torch.Tensor


def _check_known_words(tokenizer, prompts: list[str], ids: torch.Tensor) -> None:
    """Word-level tokenizers map unknown words to [UNK]: refuse them with the vocabulary."""
    unk = tokenizer.unk_token_id
    if unk is None or unk in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        return  # byte-level/BPE tokenizers cannot produce an unknown word
    for prompt, row in zip(prompts, ids.tolist()):
        if unk in row:
            vocab = sorted(w for w in tokenizer.get_vocab() if w not in tokenizer.all_special_tokens)
            words = [w for w in prompt.replace(";", " ").replace(",", " ").split()
                     if tokenizer.convert_tokens_to_ids(w.lower()) == unk and tokenizer.convert_tokens_to_ids(w) == unk]
            raise UnknownWordsError(
                f"prompts: {', '.join(repr(w) for w in words) or 'a word'} in {prompt!r} is not in this model's "
                f"vocabulary; known words: {' '.join(vocab)}"
            )


# A tokenizer copy that holds multi-vector concept tokens carries {token id: [its vector ids]}
# under this attribute (worker.engine.concepts sets it): one word in a prompt, N input embeddings.
VECTORS_ATTR = "dsgen_concept_vectors"


def tokenize(tokenizer, prompts: list[str]):
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    _check_known_words(tokenizer, prompts, enc["input_ids"])
    vectors = getattr(tokenizer, VECTORS_ATTR, None)
    if vectors:
        return _expand_vectors(enc, vectors, tokenizer.model_max_length, tokenizer.pad_token_id)
    return enc


def _expand_vectors(enc, vectors: dict[int, list[int]], length: int, pad_id: int | None) -> dict:
    """Each multi-vector token becomes its N ids in place (each with the word's character span, so
    class mentions select all of them); the row is re-padded, and cut before its last real token
    (the end token) if it grew past the limit."""
    rows_ids, rows_mask, rows_off = [], [], []
    for ids, mask, offs in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), enc["offset_mapping"].tolist()):
        real = sum(mask)
        new_ids, new_off = [], []
        for t, o in zip(ids[:real], offs[:real]):
            for v in vectors.get(t, (t,)):
                new_ids.append(v)
                new_off.append(tuple(o))
        if len(new_ids) > length:
            new_ids, new_off = new_ids[:length - 1] + new_ids[-1:], new_off[:length - 1] + new_off[-1:]
        n = len(new_ids)
        pad = ids[real] if real < len(ids) else (pad_id if pad_id is not None else new_ids[-1])
        rows_ids.append(new_ids + [pad] * (length - n))
        rows_mask.append([1] * n + [0] * (length - n))
        rows_off.append(new_off + [(0, 0)] * (length - n))
    return {"input_ids": torch.tensor(rows_ids), "attention_mask": torch.tensor(rows_mask),
            "offset_mapping": torch.tensor(rows_off)}


def token_groups(offsets: list[tuple[int, int]], mentions: tuple[ClassMention, ...]) -> list[list[int]]:
    """For each class mention, the indexes of tokens overlapping its character spans.

    Special tokens (start, end, padding) have empty spans and are never selected. A class
    whose words were cut off by the tokenizer's length limit gets an empty group.
    """
    groups = []
    for mention in mentions:
        idx = [
            t for t, (a, b) in enumerate(offsets)
            if b > a and any(a < end and b > start for start, end in mention.spans)
        ]
        groups.append(idx)
    return groups


def _encode_one(text_encoder, input_ids, attention_mask, device, penultimate: bool):
    out = text_encoder(
        input_ids.to(device),
        attention_mask=None if attention_mask is None else attention_mask.to(device),
        output_hidden_states=penultimate,
    )
    states = out.hidden_states[-2] if penultimate else out.last_hidden_state
    pooled = getattr(out, "text_embeds", None)
    return states, pooled


@torch.no_grad()
def encode_prompts(model, prompts: list[str]) -> EncodedPrompts:
    """Text states for the UNet. SD 1.x/2.x: last hidden state; SDXL: penultimate states of
    both encoders concatenated, pooled embeds from the second (as the SDXL paper does)."""
    enc = tokenize(model.tokenizer, prompts)
    use_mask = bool(model.extras.get("text_attention_mask"))
    mask = enc["attention_mask"] if use_mask else None
    offsets = [[tuple(o) for o in row] for row in enc["offset_mapping"].tolist()]
    if model.text_encoder_2 is None:
        states, _ = _encode_one(model.text_encoder, enc["input_ids"], mask, model.device, penultimate=False)
        return EncodedPrompts(states, mask, None, offsets, enc["input_ids"])
    enc2 = tokenize(model.tokenizer_2, prompts)
    s1, _ = _encode_one(model.text_encoder, enc["input_ids"], None, model.device, penultimate=True)
    s2, pooled = _encode_one(model.text_encoder_2, enc2["input_ids"], None, model.device, penultimate=True)
    return EncodedPrompts(torch.cat([s1, s2], dim=-1), None, pooled, offsets, enc["input_ids"])
