"""The shipped builtin:shapes-v1: loads offline from package data, generates, and its labels
on real renders clear a floor (a small, fast version of bench/quality.py)."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from shared.shapes.world import get_world
from shared.spec import GenerationSpec

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model():
    os.environ["HF_HUB_OFFLINE"] = "1"  # package data only: no hub access
    from worker.engine.models import builtin_root, load_model

    folder = builtin_root() / "shapes-v1"
    assert (folder / "model_index.json").is_file()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 20 * 1024 * 1024
    return load_model("builtin:shapes-v1")


def test_loads_offline_as_a_pixel_model(model):
    assert model.vae is None and model.pixel_space
    assert model.extras["vocabulary"] == list(get_world(model.extras.get("world")).vocabulary)
    assert model.unet.config.in_channels == 3 and model.unet.config.sample_size == 32


def test_generates_an_image(model):
    from worker.engine.generate import generate

    out = generate(model, ["a red circle"], [1],
                   GenerationSpec(width=32, height=32, steps=4, guidance_scale=3.0, scheduler="ddim", batch_size=1))
    img = np.asarray(out.images[0])
    assert img.shape == (32, 32, 3) and img.std() > 5  # a picture, not a constant


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_quality_benchmark_clears_floor(model, tmp_path):
    q = _bench()
    r = q.run("builtin:shapes-v1", tmp_path, n_real=24, n_synth=16, n_classifier=300, t=100, steps=4, guidance=3.0,
              suffix=False, seg_epochs=4, cls_epochs=3, log=lambda m: None)
    json.dumps(r)  # one JSON object
    att = r["attention_miou_real"]
    # Chance level (a random blob per class) is ~0.1; the shipped model localises class words.
    print(json.dumps(att))
    assert att["refined"] >= FLOOR_REFINED, att
    assert att["daam"] >= FLOOR_DAAM, att
    assert 0.0 <= r["prompt_fidelity"]["colour_and_shape"] <= 1.0
    assert r["synthetic_vs_real"]["miou_real"] > 0.0
    assert {p.name for p in tmp_path.glob("*.png")} == {"samples.png", "generated_overlay.png", "real_attention.png"}


FLOOR_REFINED = 0.45
FLOOR_DAAM = 0.3
