"""Every shipped example spec is one its model can run: `check_spec_fits_model` (the submit-time
check) finds nothing, so `make demo`, `make demo-methods` and `make demo-augment` are not refused."""
from pathlib import Path

import pytest

from shared.formats.model_meta import check_spec_fits_model, model_meta
from shared.formats.spec import load_spec, parse_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_fits_its_model(path):
    spec = load_spec(path)
    meta = model_meta(spec.model.id)
    if not spec.model.id.startswith("builtin:"):
        assert meta is None  # a hub model: nothing known before it is downloaded, nothing refused
        return
    assert meta is not None, f"{path.name}: model {spec.model.id} has no metadata"
    assert check_spec_fits_model(spec, meta) == []


def test_method_prompt_texts_are_checked_against_the_vocabulary():
    meta = model_meta("builtin:shapes-v2")
    base = {"model": "builtin:shapes-v2", "classes": [{"name": "circle"}], "num_images": 1,
            "generation": {"width": 32, "height": 32, "steps": 2}}
    layout = parse_spec({**base, "method": "layout", "layout": {
        "objects": [{"class": "circle", "box": [0.1, 0.1, 0.5, 0.5]}], "phrase": "a shiny {class}"}})
    assert [f for f, _ in check_spec_fits_model(layout, meta)] == ["layout.phrase"]
    edit = parse_spec({**base, "method": "edit", "edit": {"source": {"path": "x"}, "inside": ["a teal {class}"]}})
    assert [f for f, _ in check_spec_fits_model(edit, meta)] == ["edit.inside"]
    # the default text2image templates ("a photo of a {class}") are not read by other methods
    assert check_spec_fits_model(parse_spec({**base, "method": "layout", "layout": {
        "objects": [{"class": "circle", "box": [0.1, 0.1, 0.5, 0.5]}], "phrase": "a red {class}"}}), meta) == []


def test_layout_first_checks_the_jobs_prompts_not_the_layout_phrase():
    meta = model_meta("builtin:shapes-v2")
    base = {"model": "builtin:shapes-v2", "classes": [{"name": "circle"}], "num_images": 1,
            "generation": {"width": 48, "height": 48, "steps": 2}, "method": "layout"}
    layout = {"from_prompts": True, "random": {"size": [0.3, 0.5]}, "phrase": "a shiny {class}"}
    ok = parse_spec({**base, "prompts": {"templates": ["a {colour} {class}"], "slots": {"colour": ["red"]}}, "layout": layout})
    assert check_spec_fits_model(ok, meta) == []  # the phrase is not used: the prompts are
    bad = parse_spec({**base, "prompts": {"templates": ["a {colour} {class}"], "slots": {"colour": ["teal"]}}, "layout": layout})
    assert [f for f, _ in check_spec_fits_model(bad, meta)] == ["prompts.slots.colour"]


def test_concept_tokens_pass_the_vocabulary_check_only_with_concepts():
    """A word-level model's vocabulary has no "<cyan>": with `concepts:` listed the token is the
    concepts' to define (checked where they load); without, the error says to list the concept."""
    meta = model_meta("builtin:shapes-v2")
    base = {"model": "builtin:shapes-v2", "classes": [{"name": "cross", "words": ["<cross>"]}], "num_images": 1,
            "prompts": {"templates": ["a <cyan> {class}"]}, "generation": {"width": 48, "height": 48, "steps": 2}}
    assert check_spec_fits_model(parse_spec({**base, "concepts": ["upload:c1"]}), meta) == []
    errors = check_spec_fits_model(parse_spec(base), meta)
    assert errors[0][0] == "classes.0.words" and "'<cross>'" in errors[0][1]
    assert "add the concept that defines it to `concepts:`" in errors[0][1]
    # an ordinary unknown word next to a concept token is still refused, naming that word only
    spelled = parse_spec({**base, "concepts": ["upload:c1"], "prompts": {"templates": ["a shiny <cyan> {class}"]}})
    (field, message), = check_spec_fits_model(spelled, meta)
    assert message.startswith("'shiny' in")
