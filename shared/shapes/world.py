"""The shapes world as data: palette, shape classes, vocabulary and captions.

Everything here is plain data that other code reads (the renderer, the tokenizer builder,
the model's `dsgen.json`, the quality benchmark). No torch.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: Shape classes in category-id order (id = position + 1; 0 is background).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Named colours (sRGB 0..255). Saturated, so they stand out of the low-contrast backgrounds.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 30),
    "purple": (160, 50, 200),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

#: Function words and punctuation the captions use. ";" introduces the optional class-name
#: suffix of Dataset-Diffusion style prompts ("a red circle and a blue square; circle square").
FUNCTION_WORDS: tuple[str, ...] = ("a", "and", ",", ";")

#: Every word a prompt may contain, in a fixed order (the tokenizer's ids follow it).
VOCABULARY: tuple[str, ...] = FUNCTION_WORDS + COLOURS + SHAPES

MAX_OBJECTS = 3

_WORD_RE = re.compile(r"\w+|[^\w\s]")


class UnknownWordError(ValueError):
    """A prompt uses words the model has never seen."""

    def __init__(self, words: Sequence[str], vocabulary: Sequence[str]):
        self.words = list(words)
        self.vocabulary = list(vocabulary)
        super().__init__(
            f"unknown word(s) {', '.join(repr(w) for w in self.words)} in prompt; "
            f"this model knows only: {' '.join(self.vocabulary)}"
        )


def split_words(text: str) -> list[str]:
    """Split a prompt the way the word-level tokenizer does (lower case, punctuation apart)."""
    return _WORD_RE.findall(text.lower())


def validate_prompt(text: str, vocabulary: Iterable[str] = VOCABULARY) -> list[str]:
    """Return the prompt's words; raise UnknownWordError naming the unknown ones and the vocabulary."""
    vocab = list(vocabulary)
    known = set(vocab)
    words = split_words(text)
    unknown = list(dict.fromkeys(w for w in words if w not in known))
    if unknown:
        raise UnknownWordError(unknown, vocab)
    return words


def object_phrase(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def make_caption(objects: Sequence[tuple[str, str]], class_suffix: bool = False) -> str:
    """`[(colour, shape), ...]` -> "a red circle, a blue square and a green star".

    With `class_suffix` the distinct shape names follow after "; " in first-mention order,
    the prompt form Dataset Diffusion reads class attention from.
    """
    phrases = [object_phrase(c, s) for c, s in objects]
    if not phrases:
        text = ""
    elif len(phrases) == 1:
        text = phrases[0]
    else:
        text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if class_suffix and objects:
        text += " ; " + " ".join(dict.fromkeys(s for _, s in objects))
    return text


def category_id(shape: str) -> int:
    return SHAPES.index(shape) + 1
