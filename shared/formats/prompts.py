"""Seeds and prompts per sample, as pure functions of (spec, index).

Sample i of a job always gets the same seed and the same prompt, whatever the batch size,
the shard it falls in or the order in which work is done: each value comes from its own
random stream keyed by (job seed, index), never from a stream shared across samples.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.formats.spec import CLASS_SLOT, SLOT_PATTERN, JobSpec, SpecError

# A learned concept's token as prompts write it ("<my-part>"): one word, though \w splits it.
CONCEPT_TOKEN = r"<[A-Za-z0-9][A-Za-z0-9_\-]{0,40}>"

# Distinct stream ids so that adding a new random choice never shifts existing ones.
_STREAM_SEED = 0
_STREAM_PROMPT = 1


def sample_seed(job_seed: int, index: int) -> int:
    """The seed of sample `index`: a 32-bit value, stable across versions and platforms."""
    return int(np.random.SeedSequence([job_seed, index, _STREAM_SEED]).generate_state(1)[0])


@dataclass(frozen=True)
class ClassMention:
    """A class named in a prompt, and where its words sit in the prompt text."""

    name: str
    category_id: int
    spans: tuple[tuple[int, int], ...]  # character [start, end) ranges of its word(s)


@dataclass(frozen=True)
class SamplePlan:
    index: int
    seed: int
    prompt: str
    negative_prompt: str
    mentions: tuple[ClassMention, ...] = field(default_factory=tuple)

    @property
    def classes(self) -> list[str]:
        return [m.name for m in self.mentions]


@functools.lru_cache(maxsize=8)
def _read_captions(path: str) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"prompts.captions_file: file not found: {p}", field="prompts.captions_file")
    lines = tuple(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    if not lines:
        raise SpecError(f"prompts.captions_file: {p} has no captions", field="prompts.captions_file")
    return lines


def _fill_template(spec: JobSpec, template: str, rng: np.random.Generator, index: int) -> SamplePlan:
    classes = spec.classes
    slot_names = SLOT_PATTERN.findall(template)
    class_slots = sorted({n for n in slot_names if CLASS_SLOT.fullmatch(n)}, key=lambda n: (n != "class", n))
    # The first class slot cycles through the classes so that every class gets its share of
    # images; the other class slots draw distinct classes at random.
    chosen: dict[str, int] = {}
    first = index % len(classes)
    chosen[class_slots[0]] = first
    others = [i for i in range(len(classes)) if i != first]
    for slot in class_slots[1:]:
        pick = int(rng.integers(len(others)))
        chosen[slot] = others.pop(pick)
    words = {slot: classes[ci].prompt_words[int(rng.integers(len(classes[ci].prompt_words)))] for slot, ci in chosen.items()}
    values = {name: vals[int(rng.integers(len(vals)))] for name, vals in sorted(spec.prompts.slots.items())}

    text, spans_by_class = [], {}
    pos, cursor = 0, 0
    for m in SLOT_PATTERN.finditer(template):
        literal = template[cursor:m.start()]
        text.append(literal)
        pos += len(literal)
        name = m.group(1)
        value = words[name] if name in words else values[name]
        if name in words:
            spans_by_class.setdefault(chosen[name], []).append((pos, pos + len(value)))
        text.append(value)
        pos += len(value)
        cursor = m.end()
    text.append(template[cursor:])
    prompt = "".join(text)
    mentions = tuple(
        ClassMention(classes[ci].name, ci + 1, tuple(spans)) for ci, spans in sorted(spans_by_class.items())
    )
    if spec.prompts.append_class_names:
        named = [(classes[ci].name, ci + 1, words[s]) for s, ci in sorted(chosen.items(), key=lambda kv: kv[1])]
        prompt, mentions = _append_class_names(prompt, named)
    return SamplePlan(index, sample_seed(spec.seed, index), prompt, spec.prompts.negative, mentions)


def _append_class_names(prompt: str, found: list[tuple[str, int, str]]) -> tuple[str, tuple[ClassMention, ...]]:
    """Dataset Diffusion: "<caption>; <class words>" — labels read the appended words."""
    if not found:
        return prompt, ()
    out, mentions = prompt + "; ", []
    for i, (name, cid, word) in enumerate(found):
        if i:
            out += " "
        mentions.append(ClassMention(name, cid, ((len(out), len(out) + len(word)),)))
        out += word
    return out, tuple(mentions)


def _plan_free_text(spec: JobSpec, prompt: str, index: int) -> SamplePlan:
    """A given prompt (list or captions file): find which classes it names."""
    found: list[tuple[str, int, str]] = []
    spans: dict[int, list[tuple[int, int]]] = {}
    for ci, cls in enumerate(spec.classes):
        for word in cls.prompt_words:
            for m in re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", prompt, flags=re.IGNORECASE):
                spans.setdefault(ci, []).append(m.span())
            if ci in spans and all(f[1] != ci + 1 for f in found):
                found.append((cls.name, ci + 1, word))
    append = spec.prompts.append_class_names
    if append is None or append:
        text, mentions = _append_class_names(prompt, found)
    else:
        text = prompt
        mentions = tuple(ClassMention(spec.classes[ci].name, ci + 1, tuple(sorted(s))) for ci, s in sorted(spans.items()))
    return SamplePlan(index, sample_seed(spec.seed, index), text, spec.prompts.negative, mentions)


def plan_free_text(spec: JobSpec, prompt: str, index: int) -> SamplePlan:
    """The plan of sample `index` with a given prompt (e.g. an image2image source's caption)."""
    if not 0 <= index < spec.num_images:
        raise IndexError(f"sample index {index} outside 0..{spec.num_images - 1}")
    return _plan_free_text(spec, prompt, index)


def plan_sample(spec: JobSpec, index: int) -> SamplePlan:
    """Seed, prompt and class mentions of sample `index` of the job."""
    if not 0 <= index < spec.num_images:
        raise IndexError(f"sample index {index} outside 0..{spec.num_images - 1}")
    source = spec.prompts.source
    if source == "templates":
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, _STREAM_PROMPT]))
        templates = spec.prompts.templates
        template = templates[int(rng.integers(len(templates)))]
        return _fill_template(spec, template, rng, index)
    if source == "llm":
        prompts = spec.prompts.llm.generated
        if not prompts:
            raise SpecError("prompts.llm: the prompts are written once when the job starts (dsgen run, or the service); "
                            "resolve them with shared.formats.llm_prompts.resolve_llm_prompts first", field="prompts.llm")
    else:
        prompts = spec.prompts.prompts if source == "list" else _read_captions(spec.prompts.captions_file or "")
    return _plan_free_text(spec, prompts[index % len(prompts)], index)
