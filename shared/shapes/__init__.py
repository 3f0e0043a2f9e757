"""The shapes world: a procedurally rendered scene family with exact ground truth.

Used to train and measure the builtin `shapes-v1` and `shapes-v2` models. numpy/PIL only (no torch).
"""
from shared.shapes.render import Scene, ShapeObject, render_batch, render_scene
from shared.shapes.world import (
    COLOURS,
    FUNCTION_WORDS,
    MAX_OBJECTS,
    PALETTE,
    SHAPES,
    VOCABULARY,
    UnknownWordError,
    category_id,
    make_caption,
    split_words,
    validate_prompt,
)

__all__ = [
    "COLOURS", "FUNCTION_WORDS", "MAX_OBJECTS", "PALETTE", "SHAPES", "VOCABULARY", "Scene", "ShapeObject",
    "UnknownWordError", "category_id", "make_caption", "render_batch", "render_scene", "split_words", "validate_prompt",
]
