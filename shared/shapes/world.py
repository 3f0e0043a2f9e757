"""The shapes world as data: worlds (palette, shape classes, layout statistics), vocabulary, captions.

Everything here is plain data that other code reads (the renderer, the tokenizer builder,
the model's `dsgen.json`, the quality benchmark). No torch.

A `World` fixes what a model is trained on: its colours and shapes (which make its
vocabulary), the background, how many objects a scene has and how big they are. It also names
*held-out* concepts: a colour and a shape the renderer can draw but that are never in a
training caption nor in the vocabulary, so that learning a new concept from a handful of
images (textual inversion) can be measured against a model that has truly never seen it.
`WORLDS["v2"]` is the world of `builtin:shapes-v2` (chosen by the ablations in
docs/shapes-model.md); `WORLDS["v1"]` is kept so shapes-v1-era numbers stay reproducible.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: Every shape the renderer can draw, in category-id order (id = position + 1; 0 is background).
#: Trained worlds use a prefix of this tuple, so category ids never change between worlds.
ALL_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Every colour the renderer can draw (sRGB 0..255). Saturated, far apart in RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 30),
    "purple": (160, 50, 200),
    "cyan": (20, 205, 215),
}

#: Function words and punctuation the captions use. ";" introduces the optional class-name
#: suffix of Dataset-Diffusion style prompts ("a red circle and a blue square; circle square").
FUNCTION_WORDS: tuple[str, ...] = ("a", "and", ",", ";")

MAX_OBJECTS = 3

Background = Literal["flat", "gradient", "texture"]


@dataclass(frozen=True)
class World:
    """What a shapes model is trained on; `to_json`/`from_json` travel in the model's dsgen.json."""

    name: str
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    held_out_colours: tuple[str, ...] = ()
    held_out_shapes: tuple[str, ...] = ()
    background: Background = "flat"
    #: P(1 object), P(2), P(3): the layout a scene is drawn with (normalised).
    count_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    size_frac: tuple[float, float] = (0.28, 0.50)  # object extent as a fraction of the side
    min_visible: float = 0.6  # each object keeps at least this share of itself visible
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours + self.held_out_colours if c not in PALETTE]
        unknown += [s for s in self.shapes + self.held_out_shapes if s not in ALL_SHAPES]
        if unknown:
            raise ValueError(f"world {self.name!r}: unknown colour/shape {unknown}")
        if set(self.colours) & set(self.held_out_colours) or set(self.shapes) & set(self.held_out_shapes):
            raise ValueError(f"world {self.name!r}: a held-out concept is also a training concept")
        if not 1 <= len(self.count_weights) <= MAX_OBJECTS or min(self.count_weights) < 0:
            raise ValueError(f"world {self.name!r}: count_weights must be 1..{MAX_OBJECTS} non-negative weights")

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Every word a prompt to a model of this world may contain (held-out concepts excluded)."""
        return FUNCTION_WORDS + self.colours + self.shapes

    @property
    def drawable_colours(self) -> tuple[str, ...]:
        return self.colours + self.held_out_colours

    @property
    def drawable_shapes(self) -> tuple[str, ...]:
        return self.shapes + self.held_out_shapes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "World":
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**kw)

    def with_(self, **changes: Any) -> "World":
        return replace(self, **changes)


WORLDS: dict[str, World] = {
    # The world shapes-v1 was trained on: textured grey backgrounds, 1-3 objects uniformly.
    "v1": World(name="v1", colours=("red", "green", "blue", "yellow", "purple"),
                shapes=("circle", "square", "triangle", "star"), background="texture"),
    # shapes-v2: flat backgrounds, one to three larger objects (uniform: the ablations found
    # v2's first 0.45/0.40/0.15 no better), four far-apart colours; cyan and cross are never
    # trained (textual inversion learns them from a few renders).
    "v2": World(name="v2", colours=("red", "green", "blue", "yellow"), shapes=("circle", "square", "triangle", "star"),
                held_out_colours=("cyan",), held_out_shapes=("cross",), background="flat",
                count_weights=(1.0, 1.0, 1.0), size_frac=(0.34, 0.55), min_visible=0.7),
}
DEFAULT_WORLD = WORLDS["v2"]


def get_world(spec: str | dict[str, Any] | World | None) -> World:
    """A world from its name, its JSON (a model's dsgen.json `world`), or None (the v1 world:
    models exported before worlds were recorded were trained on it)."""
    if spec is None:
        return WORLDS["v1"]
    if isinstance(spec, World):
        return spec
    if isinstance(spec, str):
        if spec not in WORLDS:
            raise ValueError(f"unknown shapes world {spec!r}; choose from {', '.join(WORLDS)}")
        return WORLDS[spec]
    return World.from_json(spec)


#: The default world's classes and words (what most callers mean by "the shapes world").
SHAPES: tuple[str, ...] = DEFAULT_WORLD.shapes
COLOURS: tuple[str, ...] = DEFAULT_WORLD.colours
VOCABULARY: tuple[str, ...] = DEFAULT_WORLD.vocabulary

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
    return ALL_SHAPES.index(shape) + 1
