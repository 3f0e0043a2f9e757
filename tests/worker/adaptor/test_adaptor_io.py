"""Adaptor folders: reload gives identical boxes; another base model is refused by name."""
import json

import pytest
import torch
from helpers import saved_tiny_adaptor, tiny_adaptor

from worker.adaptor.io import CONFIG_FILE, AdaptorError, check_adaptor_fits, load_adaptor, resolve_adaptor_path
from worker.adaptor.model import decode
from worker.engine.loading import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("builtin:tiny-random")


def test_saved_adaptor_reloads_and_gives_identical_boxes(model, tmp_path):
    from shared.formats.spec import GenerationSpec
    from worker.engine.features import FeatureConfig
    from worker.engine.generate import generate

    a = tiny_adaptor(model, ["cat", "dog"], seed=3)
    saved_tiny_adaptor(model, ["cat", "dog"], tmp_path / "ad", seed=3)
    b = load_adaptor(tmp_path / "ad")
    out = generate(model, ["a cat", "a dog"], [1, 2], GenerationSpec(width=32, height=32, steps=2), features=FeatureConfig())
    da = decode(*a(out.features), a.config.out_stride, (32, 32), 0.3, 0.5)
    db = decode(*b(out.features), b.config.out_stride, (32, 32), 0.3, 0.5)
    assert sum(len(d) for d in da) > 0
    for x, y in zip(da, db):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) and torch.equal(x.labels, y.labels)
    cfg = json.loads((tmp_path / "ad" / CONFIG_FILE).read_text())
    assert cfg["base_model"] == {"id": "builtin:tiny-random", "revision": model.info.revision}
    assert cfg["classes"] == ["cat", "dog"] and cfg["timestep"] == 1 and cfg["blocks"][0]["name"] == "down_blocks.0"


def test_an_adaptor_for_another_base_model_is_refused_naming_both(model):
    other = tiny_adaptor(model, ["cat"], base={"id": "builtin:shapes-v1", "revision": "abc123"})
    with pytest.raises(AdaptorError) as err:
        check_adaptor_fits(other, model.info, model.unet)
    msg = str(err.value)
    assert "builtin:shapes-v1" in msg and "abc123" in msg and "builtin:tiny-random" in msg and model.info.revision in msg
    assert err.value.field == "labels.adaptor"
    same_id = tiny_adaptor(model, ["cat"], base={"id": "builtin:tiny-random", "revision": "old"})
    with pytest.raises(AdaptorError, match="revision 'old'"):
        check_adaptor_fits(same_id, model.info, model.unet)
    check_adaptor_fits(tiny_adaptor(model, ["cat"]), model.info, model.unet)  # its own model: fine
    with pytest.raises(AdaptorError, match="does not have"):
        check_adaptor_fits(tiny_adaptor(model, ["cat"]), model.info, _other_unet())


def _other_unet():
    from tests.support.tiny_unets import build

    return build("sd1")[0]


def test_unknown_adaptor_references_say_what_exists(tmp_path):
    with pytest.raises(AdaptorError, match="unknown builtin adaptor"):
        resolve_adaptor_path("builtin:nope")
    with pytest.raises(AdaptorError, match="not an adaptor folder"):
        resolve_adaptor_path(str(tmp_path))
