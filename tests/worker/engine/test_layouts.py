"""SD 2.x and SDXL folder layouts load through the loader and label end to end."""
import numpy as np
import pytest
from tiny_pipelines import save_sd2, save_sdxl

from shared.formats.spec import parse_spec
from worker.engine.loading import load_model
from worker.engine.session import EngineSession


@pytest.mark.parametrize("kind, save", [("sd", save_sd2), ("sdxl", save_sdxl)])
def test_layout_loads_and_generates_labeled_samples(tmp_path, kind, save):
    path = save(tmp_path / kind)
    model = load_model(str(path))
    assert model.kind == kind
    assert (model.text_encoder_2 is not None) == (kind == "sdxl")
    spec = parse_spec({
        "model": str(path),
        "classes": [{"name": "cat"}, {"name": "dog"}],
        "prompts": {"templates": ["a {class} and a {class_2}"]},
        "num_images": 2,
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2, "guidance_scale": 3.0},
        "labels": {"cross_resolutions": [8], "self_resolution": 8},
    })
    samples = list(EngineSession(spec).generate([0, 1]))
    assert [s.record.index for s in samples] == [0, 1]
    for s in samples:
        assert s.image.size == (32, 32)
        assert s.semantic.shape == (32, 32)
        assert set(s.record.quality["peak_attention"]) == {"cat", "dog"}
        assert np.asarray(s.image).std() > 0
