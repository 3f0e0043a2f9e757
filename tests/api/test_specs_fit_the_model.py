"""A spec the model can never run is refused at submit (422 naming the field), from the
model's own metadata read without torch: vocabulary, default size, attention resolutions."""
import pytest

SHAPES = {"model": "builtin:shapes-v1", "classes": ["circle", "square"], "num_images": 4,
          "prompts": {"templates": ["a {colour} {class}"], "slots": {"colour": ["red", "blue"]}},
          "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}, "export": {"formats": ["coco"]}}


def shapes(**over):
    return {**SHAPES, **over}


@pytest.mark.parametrize("body, field, words", [
    (shapes(classes=["circle", "dog"]), "classes.1.name", ["'dog'", "circle square triangle star"]),
    (shapes(classes=[{"name": "ring", "words": ["donut"]}]), "classes.0.words", ["'donut'"]),
    (shapes(prompts={"templates": ["a shiny {class}"]}), "prompts.templates", ["'shiny'"]),
    (shapes(prompts={"templates": ["a {colour} {class}"], "slots": {"colour": ["red", "teal"]}}),
     "prompts.slots.colour", ["'teal'"]),
    (shapes(prompts={"source": "list", "prompts": ["a red circle", "a photo of a square"]}), "prompts.prompts",
     ["'photo'", "'of'"]),
    (shapes(prompts={"templates": ["a {class}"], "negative": "blurry"}), "prompts.negative", ["'blurry'"]),
    ({k: v for k, v in SHAPES.items() if k != "generation"}, "generation", ["32x32", "512x512"]),
    (shapes(generation={"steps": 2, "batch_size": 2}), "generation", ["32x32"]),
    (shapes(labels={"cross_resolutions": [64]}), "labels.cross_resolutions", ["[8, 16, 32]"]),
    (shapes(labels={"self_resolution": 4}), "labels.self_resolution", ["[8, 16, 32]"]),
    ({"model": "builtin:tiny-random", "classes": ["cat"], "num_images": 2,
      "generation": {"width": 32, "height": 32, "steps": 2}, "labels": {"cross_resolutions": [32]}},
     "labels.cross_resolutions", ["[8, 16]"]),
])
def test_what_the_model_cannot_do_is_422(client, headers, body, field, words):
    r = client.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    for w in words:
        assert w in r.json()["detail"], r.json()["detail"]


def test_what_the_model_can_do_is_accepted(client, headers):
    assert client.post("/v1/jobs", json=SHAPES, headers=headers).status_code == 201
    explicit = shapes(generation={"width": 64, "height": 64, "steps": 2, "batch_size": 2})  # asked for: allowed
    assert client.post("/v1/jobs", json=explicit, headers=headers).status_code == 201
    case = shapes(classes=[{"name": "Circle", "words": ["Circle"]}])  # the vocabulary is lower-cased
    assert client.post("/v1/jobs", json=case, headers=headers).status_code == 201
