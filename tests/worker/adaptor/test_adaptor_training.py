"""Training on a tiny set: the loss falls, evaluation runs COCOeval, resume is exact."""
import json

import pytest
from tiny_data import write_tiny_coco

from worker.adaptor.data import load_coco
from worker.adaptor.train import CHECKPOINT, TrainConfig, Trainer, TrainingError, check_out_folder


def config(tmp_path, coco, images, **kw):
    base = dict(model="builtin:tiny-random", coco=str(coco), images=str(images), out=str(tmp_path / "ad"),
                val_fraction=0.25, epochs=4, batch_size=4, lr=5e-3, width=16, head_convs=1, cache_features=True,
                feature_batch=8, seed=1)
    return TrainConfig(**{**base, **kw})


def test_loss_decreases_and_each_epoch_is_evaluated(tmp_path):
    coco, images = write_tiny_coco(tmp_path / "data", n=12)
    trainer = Trainer(config(tmp_path, coco, images, epochs=6))
    assert len(trainer.train_items) == 9 and len(trainer.val_items) == 3
    history = trainer.run()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert all(h["n_images"] == 3 and h["n_detections"] > 0 for h in history)
    # The numbers are COCOeval on the current weights: they move with training, detection improves, and
    # evaluating the saved adaptor again gives exactly the last epoch's numbers.
    assert len({h["AP"] for h in history}) > 1
    assert history[-1]["AP50"] > history[0]["AP50"]
    again = Trainer(config(tmp_path, coco, images, epochs=6))
    assert again.resume() and again.epoch == 6
    last = {k: v for k, v in history[-1].items() if k not in ("epoch", "loss", "seconds")}
    assert again.evaluate() == last
    cfg = json.loads((tmp_path / "ad" / "adaptor.json").read_text())
    assert cfg["training"]["epochs"] == 6 and cfg["training"]["data"]["caption_sources"] == ["field"]
    assert cfg["timestep"] == trainer.timestep and cfg["classes"] == ["cat", "dog"]


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    coco, images = write_tiny_coco(tmp_path / "data", n=8)
    full = Trainer(config(tmp_path / "a", coco, images, epochs=3, cache_features=False)).run()
    first = Trainer(config(tmp_path / "b", coco, images, epochs=3, cache_features=False))
    first.run(stop_after=2)  # as if interrupted after epoch 2
    assert (tmp_path / "b" / "ad" / CHECKPOINT).is_file()
    again = Trainer(config(tmp_path / "b", coco, images, epochs=3, cache_features=False))
    assert again.resume() and again.epoch == 2
    resumed = again.run()
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]
    with pytest.raises(TrainingError, match="different settings"):
        Trainer(config(tmp_path / "b", coco, images, epochs=3, lr=1e-2, cache_features=False)).resume()
    with pytest.raises(TrainingError, match="--resume"):
        check_out_folder(tmp_path / "b" / "ad", resume=False, overwrite=False)


def test_captions_fall_back_to_class_names(tmp_path):
    coco, images = write_tiny_coco(tmp_path / "data", n=3, with_captions=False)
    data = load_coco(coco, images)
    assert all(it.caption_source == "classes" and it.caption.startswith("a ") for it in data.items)
    assert data.classes == ["cat", "dog"]
