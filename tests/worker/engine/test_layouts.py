"""SD 2.x and SDXL folder layouts load through the loader and label end to end."""
import numpy as np
import pytest

from shared.formats.spec import parse_spec
from tests.support.tiny_pipelines import save_sd2, save_sdxl
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
        assert s.semantic.shape == s.instances.shape == (32, 32)
        quality = s.record.quality
        assert set(quality["peak_attention"]) == {"cat", "dog"}
        # The record's numbers describe this semantic map: class fractions and the ignore band.
        for cid, name in ((1, "cat"), (2, "dog")):
            assert quality["class_pixel_fraction"][name] == pytest.approx(float((s.semantic == cid).mean()))
        assert quality["uncertain_fraction"] == pytest.approx(float((s.semantic == 255).mean()))
        # Every annotation is one instance of the mask: inside one class, with its area and box.
        assert s.record.annotations
        for ann in s.record.annotations:
            region = s.instances == ann.instance_id
            assert set(np.unique(s.semantic[region]).tolist()) == {ann.category_id}
            assert ann.area == region.sum()
            ys, xs = np.nonzero(region)
            assert ann.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert not (s.instances[np.isin(s.semantic, (0, 255))]).any()
    # Labels follow each sample's own attention, not a fixed pattern.
    assert not np.array_equal(samples[0].semantic, samples[1].semantic)
    # Per-index determinism: index 1 alone is the same image and labels as inside the batch.
    (alone,) = EngineSession(spec).generate([1])
    assert np.array_equal(np.asarray(alone.image), np.asarray(samples[1].image))
    assert np.array_equal(alone.semantic, samples[1].semantic)
