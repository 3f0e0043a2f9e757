"""A transformers causal-LM folder as a prompt writer (prompts.llm.backend local, CLI only)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from shared.formats.llm_prompts import LLMError


@functools.lru_cache(maxsize=1)
def _load(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    except (OSError, ValueError) as err:
        raise LLMError(f"prompts.llm.model: cannot load a causal language model from {folder}: "
                       f"{str(err).splitlines()[0]}", field="prompts.llm.model") from None
    return tokenizer, model


class LocalWriter:
    def __init__(self, folder: str):
        if not Path(folder).is_dir():
            raise LLMError(f"prompts.llm.model: folder not found: {folder}", field="prompts.llm.model")
        self.folder = folder
        self.tokenizer, self.model = _load(str(Path(folder).resolve()))

    def lineage(self) -> dict[str, Any]:
        from worker.engine.loading import content_revision

        return {"backend": "local", "model": Path(self.folder).name, "revision": content_revision(Path(self.folder))}

    @torch.no_grad()
    def write(self, instruction: str, seed: int, temperature: float, max_tokens: int) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tok(instruction + "\n", return_tensors="pt")["input_ids"]
        torch.manual_seed(seed)
        sample = temperature > 0
        out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=sample,
                                  temperature=temperature if sample else None, top_k=0 if sample else None,
                                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def writer_for(spec, settings=None):
    """The writer a CLI job's prompts.llm names (local folder, or the configured endpoint)."""
    llm = spec.prompts.llm
    if llm.backend == "local":
        return LocalWriter(llm.model)
    from shared.formats.llm_prompts import endpoint_writer

    return endpoint_writer(settings, llm)
