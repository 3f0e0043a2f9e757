"""`dsgen segmenter train`: a real-data segmenter folder with class mean loss and loss quantiles."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from shared.shapes.dataset import write_real_dataset
from worker.cli import _register, cli
from worker.labels.segmenter import calibration_holdout, load_segmenter

_register()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    write_real_dataset(out, 10, seed=3, size=32, formats=[])
    return out


def test_train_holds_out_images_for_the_quantiles_and_writes_a_loadable_folder(real, tmp_path):
    out = tmp_path / "seg"
    r = CliRunner().invoke(cli, ["segmenter", "train", "--source", str(real), "--out", str(out), "--epochs", "1",
                                 "--width", "8", "--calibration-split", "0.2"])
    assert r.exit_code == 0, r.output
    assert "training on 8 images (2 held out for the loss quantiles)" in r.output
    assert "99 % of real pixels under:" in r.output
    meta = json.loads((out / "segmenter.json").read_text())
    assert meta["training"]["images"] == 8 and meta["training"]["quantiles_from"] == "2 held-out images"
    load_segmenter.cache_clear()
    seg = load_segmenter(str(out))
    assert set(seg.class_loss_quantiles) >= {"background"} and set(seg.class_loss_quantiles) == set(seg.class_mean_loss)
    q = seg.class_loss_quantiles["background"]
    assert list(q.values()) == sorted(q.values())


def test_no_holdout_measures_the_quantiles_on_the_training_images(real, tmp_path):
    out = tmp_path / "seg"
    r = CliRunner().invoke(cli, ["segmenter", "train", "--source", str(real), "--out", str(out), "--epochs", "1",
                                 "--width", "8", "--calibration-split", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "segmenter.json").read_text())["training"]["quantiles_from"] == "the training images"
    bad = CliRunner().invoke(cli, ["segmenter", "train", "--source", str(real), "--out", str(tmp_path / "s2"),
                                   "--calibration-split", "0.9"])
    assert bad.exit_code == 2 and "--calibration-split" in bad.output


def test_holdout_is_chosen_by_the_seed_and_never_takes_every_image():
    items = list(range(10))
    train, held = calibration_holdout(items, 0.1, seed=4)
    assert len(held) == 1 and sorted(train + held) == items
    assert calibration_holdout(items, 0.1, seed=4) == (train, held)
    assert calibration_holdout(items, 0.3, seed=5)[1] != calibration_holdout(items, 0.3, seed=6)[1]
    assert calibration_holdout([1], 0.5, seed=0) == ([1], [])
    assert calibration_holdout(items, 0.0, seed=0) == (items, [])


def test_import_wraps_a_torchscript_segmenter_measured_on_the_real_source(real, tmp_path):
    import numpy as np
    from PIL import Image

    from shared.formats.spec import SpecError

    runner = CliRunner()
    trained = tmp_path / "trained"
    assert runner.invoke(cli, ["segmenter", "train", "--source", str(real), "--out", str(trained), "--epochs", "1",
                               "--width", "8"]).exit_code == 0
    load_segmenter.cache_clear()
    seg = load_segmenter(str(trained))
    ts = tmp_path / "mine.pt"
    torch.jit.save(torch.jit.trace(seg.net, torch.rand(1, 3, 32, 32)), str(ts))
    out = tmp_path / "imported"
    r = runner.invoke(cli, ["segmenter", "import", "--torchscript", str(ts), "--source", str(real), "--size", "32",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "segmenter.json").read_text())["format"] == "torchscript"
    mine = load_segmenter(str(out))
    # the same network on the same real data: the same statistics and predictions
    assert mine.class_mean_loss == pytest.approx(seg.class_mean_loss, rel=1e-4)
    assert mine.class_loss_quantiles.keys() == seg.class_loss_quantiles.keys()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    np.testing.assert_array_equal(mine.predict([image]), seg.predict([image]))
    # code from an upload is never run
    with pytest.raises(SpecError, match="TorchScript segmenter is code") as err:
        load_segmenter(str(out), trusted=False)
    assert err.value.field == "labels.filter.segmenter"
    # a network that does not fit the classes, and a file that is not TorchScript
    bad = runner.invoke(cli, ["segmenter", "import", "--torchscript", str(ts), "--source", str(real), "--size", "32",
                              "--classes", "circle", "--out", str(tmp_path / "b1")])
    assert bad.exit_code != 0 and "expected logits [B, 2, H, W]" in bad.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    bad = runner.invoke(cli, ["segmenter", "import", "--torchscript", str(junk), "--source", str(real), "--size", "32",
                              "--out", str(tmp_path / "b2")])
    assert bad.exit_code != 0 and "not a TorchScript file" in bad.output and "Traceback" not in bad.output
