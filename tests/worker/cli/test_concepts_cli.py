"""`dsgen concepts learn` and `dsgen mix` (real + augmented training lists with lineage)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from shared.formats.spec import parse_spec
from shared.shapes.dataset import write_real_dataset
from worker.cli import _register, cli
from worker.engine.local_run import run_to_folder

_register()
torch.set_num_threads(1)
SHAPES = ("circle", "square", "triangle", "star")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    write_real_dataset(out, 3, seed=2, size=32, formats=["coco"])
    return out


def test_learn_from_a_dataset_class_then_errors(real, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    r = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--source", str(real), "--class", "square",
                            "--token", "<round>", "--init-word", "square", "--out", str(out), "--steps", "2",
                            "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "concept.json").read_text())
    assert meta["tokens"] == ["<round>"] and meta["base_model"]["id"] == "builtin:shapes-v1"
    assert 1 <= meta["training"]["images"] <= 3 and meta["training"]["templates"] == ["a {}"]
    bad = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--images", str(tmp_path),
                              "--token", "round", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "--token: 'round' is not a concept token" in bad.output
    bad = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--source", str(real), "--class", "cat",
                              "--token", "<x>", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "--class: 'cat' is not a class" in bad.output


def test_learn_inside_the_class_masks(real, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    r = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--source", str(real), "--class", "square",
                            "--token", "<sq>", "--init-word", "square", "--out", str(out), "--steps", "2",
                            "--batch-size", "2", "--masked"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "concept.json").read_text())["masked"] is True
    # masks come from a labelled dataset: a folder of bare images has none
    bad = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--images", str(tmp_path),
                              "--token", "<x>", "--out", str(tmp_path / "d"), "--masked"])
    assert bad.exit_code == 2 and "--masked" in bad.output and "--source" in bad.output
    assert not (tmp_path / "d").exists()


def test_learn_with_a_cross_attention_fine_tune(real, tmp_path):
    """--unet-steps: the concept folder gains unet.safetensors, the bar goes on through the fine-tune, and a
    job using it runs; a negative step count is a CLI error naming the option."""
    runner = CliRunner()
    out = tmp_path / "u"
    r = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--source", str(real), "--class", "square",
                            "--token", "<sq>", "--init-word", "square", "--out", str(out), "--steps", "2",
                            "--batch-size", "2", "--masked", "--unet-steps", "2", "--prior-images", "2"])
    assert r.exit_code == 0, r.output
    assert "+ 2 UNet steps (cross-kv)" in r.output and r.output.count("UNet fine-tune (cross-kv) (loss") == 2
    meta = json.loads((out / "concept.json").read_text())
    assert meta["unet"]["steps"] == 2 and (out / meta["unet"]["file"]).is_file()
    spec = parse_spec({"model": "builtin:shapes-v1", "classes": [{"name": "square", "words": ["<sq>"]}], "num_images": 1,
                       "concepts": [str(out)], "prompts": {"templates": ["a red {class}"]},
                       "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 1}})
    report = run_to_folder(spec, tmp_path / "job")  # the shapes model's vocabulary check takes the concept's token
    assert report.generated == 1
    bad = runner.invoke(cli, ["concepts", "learn", "--model", "builtin:shapes-v1", "--source", str(real), "--class", "square",
                              "--token", "<x>", "--out", str(tmp_path / "d"), "--unet-steps", "-1"])
    assert bad.exit_code == 2 and "--unet-steps" in bad.output and not (tmp_path / "d").exists()


def test_mix_replaces_real_samples_by_their_variants(real, tmp_path):
    spec = parse_spec({
        "model": "builtin:shapes-v1", "method": "augment", "num_images": 6, "seed": 1,
        "classes": [{"name": s} for s in SHAPES],
        "prompts": {"templates": ["a {class}"]},  # the model's vocabulary is checked even where augment's template rules
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 6, "guidance_scale": 2.0},
        "labels": {"mode": "refined", "cross_resolutions": [16, 32]},
        "augment": {"source": {"path": str(real), "format": "dsgen"}, "variants": 2, "template": "a {classes}",
                    "mode": "inpaint_inside"},
        "export": {"formats": ["coco", "yolo"]},
    })
    run_to_folder(spec, tmp_path / "syn")
    images = [im for f in (tmp_path / "syn" / "coco" / "annotations").glob("*.json") for im in json.loads(f.read_text())["images"]]
    assert len(images) == 6 and all(im["dsgen_synthetic"] and im["dsgen_source"].startswith("samples/") for im in images)
    runner = CliRunner()
    r = runner.invoke(cli, ["mix", "--real", str(real), "--synthetic", str(tmp_path / "syn"), "--out", str(tmp_path / "m"),
                            "--p", "1"])
    assert r.exit_code == 0, r.output
    lineage = [json.loads(x) for x in (tmp_path / "m" / "lineage.jsonl").read_text().splitlines()]
    assert len(lineage) == 3 and all(x["synthetic"] for x in lineage)
    assert [x["source"] for x in lineage] == [f"samples/{i:06d}/image.png" for i in range(3)]
    for x in lineage:  # the mixed sample is that variant's image and labels
        got = np.asarray(Image.open(tmp_path / "m" / "samples" / f"{x['index']:06d}" / "image.png"))
        want = np.asarray(Image.open(tmp_path / "syn" / "samples" / f"{x['variant_index']:06d}" / "image.png"))
        assert np.array_equal(got, want)
    assert (tmp_path / "m" / "yolo").is_dir()
    mixed = [im for f in (tmp_path / "m" / "coco" / "annotations").glob("*.json") for im in json.loads(f.read_text())["images"]]
    assert len(mixed) == 3 and all(im["dsgen_synthetic"] for im in mixed)
    r = runner.invoke(cli, ["mix", "--real", str(real), "--synthetic", str(tmp_path / "syn"), "--out", str(tmp_path / "m0"),
                            "--p", "0"])
    assert r.exit_code == 0 and not any(json.loads(x)["synthetic"] for x in (tmp_path / "m0" / "lineage.jsonl").read_text().splitlines())
    r = runner.invoke(cli, ["mix", "--real", str(tmp_path / "syn"), "--synthetic", str(real), "--out", str(tmp_path / "m1")])
    assert r.exit_code == 2 and "--synthetic" in r.output
