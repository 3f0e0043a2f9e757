"""prompts.source llm: prompts written by a language model, once per job.

`resolve_llm_prompts(spec, writer)` asks the writer for `llm.count` prompts, prompt j naming
the classes j*k .. j*k+k-1 (mod the class count, k = classes_per_prompt, so every class gets
its share), and returns the spec with `prompts.llm.generated` (and `generated_by`) filled in.
The resolved spec is what the job stores (the service's job row, `dsgen run`'s spec.json):
every shard, retry and re-run reads the same prompts, and every record's spec says which
model wrote them. A reply that does not name its classes is asked again (a fresh seed), up to
`max_attempts`; then the job is refused, naming the class.

Writers: `EndpointWriter` (an OpenAI-compatible /chat/completions endpoint: vLLM, llama.cpp's
server, Ollama; stdlib HTTP, no torch) and `worker.engine.llm_local.LocalWriter` (a
transformers causal-LM folder). Over the API only the server's configured endpoint is used.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any, Protocol

from shared.formats.spec import JobSpec, SpecError


class LLMError(SpecError):
    def __init__(self, message: str, field: str = "prompts.llm"):
        super().__init__(message, field=field)


class PromptWriter(Protocol):
    def lineage(self) -> dict[str, Any]: ...

    def write(self, instruction: str, seed: int, temperature: float, max_tokens: int) -> str: ...


class EndpointWriter:
    """POST {base_url}/chat/completions with one user message; the reply's first choice."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s

    def lineage(self) -> dict[str, Any]:
        return {"backend": "endpoint", "model": self.model}  # not the URL: a server detail, not the data's

    def write(self, instruction: str, seed: int, temperature: float, max_tokens: int) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": instruction}],
                "temperature": temperature, "max_tokens": max_tokens, "seed": seed, "n": 1}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
            return str(data["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as err:
            raise LLMError(f"prompts.llm: the language model endpoint answered HTTP {err.code}; check model "
                           f"{self.model!r} is served there") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise LLMError(f"prompts.llm: the language model endpoint cannot be reached ({type(err).__name__}); "
                           "try again later or use another prompts.source") from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError("prompts.llm: the endpoint's reply is not an OpenAI-style chat completion") from None


def clean_reply(text: str) -> str:
    """The caption out of a reply: its first non-empty line, without quotes or a 'Caption:' label."""
    for line in text.strip().splitlines():
        line = line.strip().strip('"\u201c\u201d\'`').strip()
        line = re.sub(r"^(caption|prompt)\s*[:\-]\s*", "", line, flags=re.IGNORECASE).strip().strip('"\'')
        if line:
            return line
    return ""


def names_word(prompt: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", prompt, flags=re.IGNORECASE) is not None


def resolve_llm_prompts(spec: JobSpec, writer: PromptWriter, max_length: int = 500) -> JobSpec:
    """The spec with its prompts written (unchanged if it has them already or is not source llm)."""
    llm = spec.prompts.llm
    if spec.prompts.source != "llm" or llm is None or llm.generated:
        return spec
    classes = spec.classes
    k = min(llm.classes_per_prompt, len(classes))
    prompts = []
    for j in range(llm.count):
        chosen = [classes[(j * k + i) % len(classes)] for i in range(k)]
        words = [c.prompt_words[0] for c in chosen]
        instruction = llm.instruction.replace("{classes}", " and a ".join(words))
        for attempt in range(llm.max_attempts):
            seed = spec.seed * 1_000_003 + j * 97 + attempt
            text = clean_reply(writer.write(instruction, seed, llm.temperature, llm.max_tokens))[:max_length]
            if text and all(any(names_word(text, w) for w in c.prompt_words) for c in chosen):
                prompts.append(text)
                break
        else:
            missing = ", ".join(repr(w) for w in words)
            raise LLMError(f"prompts.llm: the language model did not write a prompt naming {missing} in "
                           f"{llm.max_attempts} attempts; raise max_attempts, reword the instruction, or use "
                           "prompts.source templates")
    generated_by = {**writer.lineage(), "temperature": llm.temperature, "count": llm.count}
    new_llm = llm.model_copy(update={"generated": prompts, "generated_by": generated_by})
    return spec.model_copy(update={"prompts": spec.prompts.model_copy(update={"llm": new_llm})})


def without_generated(spec: JobSpec) -> JobSpec:
    """The spec as its author wrote it (to compare a stored, resolved spec with a new request)."""
    llm = spec.prompts.llm
    if llm is None or llm.generated is None:
        return spec
    bare = llm.model_copy(update={"generated": None, "generated_by": None})
    return spec.model_copy(update={"prompts": spec.prompts.model_copy(update={"llm": bare})})


def endpoint_writer(settings, llm) -> EndpointWriter:
    """The server's configured endpoint (DSGEN_LLM_URL, DSGEN_LLM_MODEL, DSGEN_LLM_API_KEY)."""
    if settings is None:
        from shared.config import Settings

        settings = Settings()
    if not settings.llm_url:
        raise LLMError("prompts.source: llm needs a language model endpoint, and none is configured here "
                       "(set DSGEN_LLM_URL, e.g. http://127.0.0.1:8000/v1)", field="prompts.source")
    model = llm.model or settings.llm_model
    if not model:
        raise LLMError("prompts.llm.model: name the served model, or configure DSGEN_LLM_MODEL", field="prompts.llm.model")
    return EndpointWriter(settings.llm_url, model, settings.llm_api_key, settings.llm_timeout_s)
