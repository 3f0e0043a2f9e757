"""Filters after labelling (segmenter loss threshold, attention gate) and hardness-aware resampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.engine import GeneratedSample
from shared.formats.prompts import ClassMention, SamplePlan
from shared.formats.records import Annotation, ModelInfo, SampleRecord
from shared.formats.spec import parse_spec
from worker.engine.resample import mask_hardness, variants_by_hardness
from worker.labels.filters import AttentionGate, SegmenterFilter
from shared.formats.spec import SpecError
from worker.labels.segmenter import Segmenter, SmallUNet, load_segmenter, real_loss_statistics, train_segmenter

torch.set_num_threads(1)


def _spec(**filt):
    return parse_spec({"model": "m", "classes": [{"name": "cat"}, {"name": "dog"}], "num_images": 4,
                       "labels": {"filter": filt}})


def _sample(index=0, semantic=None, quality=None, annotations=(), classes=("cat",)):
    rec = SampleRecord(index=index, seed=0, prompt="p", classes=list(classes), model=ModelInfo(id="m"),
                       method="text2image", width=4, height=4, quality=quality or {}, annotations=list(annotations))
    sem = semantic if semantic is not None else np.zeros((4, 4), np.uint8)
    inst = sem.astype(np.uint16)  # instance k = class k here
    return GeneratedSample(rec, Image.new("RGB", (4, 4)), sem, inst)


@pytest.fixture
def seg_dir(tmp_path):
    seg = Segmenter(SmallUNet(3, 8), ["cat", "dog"], 4, {"background": 0.1, "cat": 1.0, "dog": 2.0})
    seg.save(tmp_path / "seg")
    load_segmenter.cache_clear()
    return tmp_path / "seg"


def _ce(p_true: float) -> float:
    return -np.log(p_true)


SEM = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)


def _chosen_losses() -> torch.Tensor:
    """Logits giving chosen per-pixel losses for the labelled class of SEM: loss = -log p(true class)."""
    p = np.full((4, 4), 0.99)  # background: loss 0.01 < 0.125, kept
    p[0, 0], p[0, 1] = np.exp(-1.2), np.exp(-1.3)  # cat mean 1.0: 1.2 kept, 1.3 > 1.25 high
    p[0, 2], p[0, 3] = np.exp(-2.4), np.exp(-2.6)  # dog mean 2.0: 2.4 kept, 2.6 > 2.5 high
    logits = torch.full((1, 3, 4, 4), -30.0)
    for y in range(4):
        for x in range(4):
            c = int(SEM[y, x])
            logits[0, c, y, x] = float(np.log(p[y, x]))
            logits[0, (c + 1) % 3, y, x] = float(np.log(1 - p[y, x]))
    return logits


def test_sample_scope_changes_no_pixel_and_drops_by_the_kept_fraction(seg_dir):
    logits = _chosen_losses()
    ann = Annotation(instance_id=1, category="cat", category_id=1, bbox=(0, 0, 2, 2), area=4)
    lenient = SegmenterFilter(_spec(segmenter=str(seg_dir), scope="samples", min_kept=0.8), str(seg_dir))
    lenient.seg.logits = lambda images: logits
    s = lenient([_sample(semantic=SEM.copy(), annotations=[ann])])[0]
    assert (s.semantic == SEM).all() and s.record.annotations[0].area == 4  # labels untouched
    assert s.record.quality["segmenter_filter"] == {"ignored_fraction": 0.0, "kept": pytest.approx(14 / 16),
                                                    "scope": "samples"}
    assert "dropped" not in s.record.quality
    strict = SegmenterFilter(_spec(segmenter=str(seg_dir), scope="samples", min_kept=0.9), str(seg_dir))
    strict.seg.logits = lambda images: logits
    s = strict([_sample(semantic=SEM.copy(), annotations=[ann])])[0]
    assert "min_kept 0.9" in s.record.quality["dropped"] and (s.semantic == SEM).all()


def test_segmenter_filter_ignores_pixels_above_tolerance_times_class_mean(seg_dir):
    flt = SegmenterFilter(_spec(segmenter=str(seg_dir), tolerance=1.25, min_kept=0.1), str(seg_dir))
    sem = SEM
    logits = _chosen_losses()
    flt.seg.logits = lambda images: logits
    ann = Annotation(instance_id=1, category="cat", category_id=1, bbox=(0, 0, 2, 2), area=4)
    s = flt([_sample(semantic=sem, annotations=[ann])])[0]
    assert s.semantic[0, 0] == 1 and s.semantic[0, 1] == 255
    assert s.semantic[0, 2] == 2 and s.semantic[0, 3] == 255
    assert (s.semantic[2:] == 0).all() and (s.semantic[1] == sem[1]).all()
    assert s.record.quality["segmenter_filter"]["kept"] == pytest.approx(14 / 16)
    assert "dropped" not in s.record.quality
    assert s.record.annotations[0].area == 3  # shrunk to the pixels still labelled
    strict = SegmenterFilter(_spec(segmenter=str(seg_dir), tolerance=1.25, min_kept=0.9), str(seg_dir))
    strict.seg.logits = lambda images: logits
    assert "min_kept 0.9" in strict([_sample(semantic=sem)])[0].record.quality["dropped"]


@pytest.fixture
def seg_dir_with_quantiles(tmp_path):
    # 99 % quantiles unlike 1.25 x the means: cat 1.35 (> 1.25), dog 2.3 (< 2.5), background 0.05
    quantiles = {"background": {"0.99": 0.05, "0.9": 0.001}, "cat": {"0.99": 1.35, "0.9": 1.0},
                 "dog": {"0.99": 2.3, "0.9": 2.0}}
    seg = Segmenter(SmallUNet(3, 8), ["cat", "dog"], 4, {"background": 0.1, "cat": 1.0, "dog": 2.0}, quantiles)
    seg.save(tmp_path / "segq")
    load_segmenter.cache_clear()
    return tmp_path / "segq"


def test_real_quantile_reference_thresholds_each_class_at_its_stored_real_quantile(seg_dir_with_quantiles):
    folder = str(seg_dir_with_quantiles)
    flt = SegmenterFilter(_spec(segmenter=folder, reference="real_quantile", min_kept=0.1), folder)
    assert flt.tolerance == 1.0  # the quantile itself unless a tolerance is given
    flt.seg.logits = lambda images: _chosen_losses()
    s = flt([_sample(semantic=SEM.copy())])[0]
    assert s.semantic[0, 0] == 1 and s.semantic[0, 1] == 1  # cat 1.2, 1.3 < 1.35: kept (1.25 x mean drops 1.3)
    assert s.semantic[0, 2] == 255 and s.semantic[0, 3] == 255  # dog 2.4, 2.6 > 2.3: ignored (1.25 x mean keeps 2.4)
    assert (s.semantic[2:] == 0).all()  # background 0.01 < 0.05: kept
    assert s.record.quality["segmenter_filter"]["kept"] == pytest.approx(14 / 16)
    # the level and the tolerance are the spec's
    loose = SegmenterFilter(_spec(segmenter=folder, reference="real_quantile", quantile=0.9, tolerance=1.25,
                                  min_kept=0.1), folder)
    np.testing.assert_allclose(loose.threshold, [0.00125, 1.25, 2.5])
    mean = SegmenterFilter(_spec(segmenter=folder, min_kept=0.1), folder)
    assert mean.tolerance == 1.25 and mean.threshold.tolist() == pytest.approx([0.125, 1.25, 2.5])


def test_real_quantile_with_a_segmenter_stored_without_quantiles_names_the_field_and_the_fix(seg_dir):
    with pytest.raises(SpecError) as err:
        SegmenterFilter(_spec(segmenter=str(seg_dir), reference="real_quantile"), str(seg_dir))
    assert err.value.field == "labels.filter.reference" and "dsgen segmenter train" in str(err.value)
    assert str(seg_dir) not in str(err.value)  # no server path in a message a tenant may read


def test_quantile_must_be_a_level_the_segmenter_stores():
    with pytest.raises(SpecError) as err:
        _spec(segmenter="s", reference="real_quantile", quantile=0.97)
    assert "quantile" in str(err.value) and "0.99" in str(err.value)


def test_real_loss_statistics_match_the_pixel_losses_of_the_real_set():
    torch.manual_seed(0)
    seg = Segmenter(SmallUNet(3, 8), ["a", "b"], 16, {})
    x, y = torch.rand(10, 3, 16, 16), torch.randint(0, 3, (10, 16, 16))
    y[0, 0, 0] = 255  # ignore pixels are no class's
    means, quantiles = real_loss_statistics(seg, x, y, batch=3)  # batches do not divide the set
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(seg.net(x), y.clamp(0, 2), reduction="none")
    for c, name in enumerate(["background", "a", "b"]):
        v = loss[y == c].numpy()
        assert means[name] == pytest.approx(float(v.mean()), rel=1e-5)
        for level in (0.5, 0.9, 0.99):
            exact = float(np.quantile(v, level, method="inverted_cdf"))
            # the upper edge of a 0.005-decade bin: never below the exact quantile, at most 1.2 % above
            assert exact <= quantiles[name][f"{level:g}"] <= exact * 1.012


def test_attention_gate_flags_and_drops(seg_dir):
    plans = {0: ("cat",), 1: ("cat",), 2: ("cat",), 3: ("cat",)}

    def plan(i):
        return SamplePlan(i, 0, "a cat", "", tuple(ClassMention(n, 1, ((2, 5),)) for n in plans[i]))

    two = [Annotation(instance_id=k, category="cat", category_id=1, bbox=(0, 0, 1, 1), area=1) for k in (1, 2)]
    samples = [
        _sample(0, quality={"peak_attention": {"cat": 1.0}, "class_pixel_fraction": {"cat": 0.2}}, annotations=two[:1]),
        _sample(1, quality={"peak_attention": {"cat": 0.9}, "class_pixel_fraction": {"cat": 0.0}}),
        _sample(2, quality={"peak_attention": {"cat": 0.1}, "class_pixel_fraction": {"cat": 0.2}}, annotations=two[:1]),
        _sample(3, quality={"peak_attention": {"cat": 1.1}, "class_pixel_fraction": {"cat": 0.3}}, annotations=two),
    ]
    out = AttentionGate(_spec(attention_gate="drop"), plan)(samples)
    assert "attention_gate" not in out[0].record.quality and "dropped" not in out[0].record.quality
    reasons = [out[i].record.quality["attention_gate"][0]["reason"] for i in (1, 2, 3)]
    assert reasons[0] == "no confident region"
    assert reasons[1].startswith("peak attention below 0.25")
    assert reasons[2] == "2 fragments for 1 mention(s)"
    assert all(out[i].record.quality["dropped"].startswith("attention gate") for i in (1, 2, 3))
    quality = {"peak_attention": {"cat": 0.9}, "class_pixel_fraction": {"cat": 0.0}}
    flagged = AttentionGate(_spec(attention_gate="flag"), plan)([_sample(1, quality=quality)])
    assert flagged[0].record.quality["attention_gate"] and "dropped" not in flagged[0].record.quality


def test_hardness_is_the_pixel_weighted_class_loss():
    sem = np.zeros((4, 4), np.uint8)
    sem[:2] = 1  # 8 px of class 1, 8 px background
    sem[0, 0] = 255
    assert mask_hardness(sem, {0: 0.1, 1: 1.0}) == pytest.approx((8 * 0.1 + 7 * 1.0) / 15)


def test_variants_follow_freemask_formula_and_are_deterministic():
    hard = [0.5, 0.1, 0.9, 0.3]
    v = variants_by_hardness(hard, 20, seed=0)
    # ranks (ascending): 0.1 -> 0, 0.3 -> 1, 0.5 -> 2, 0.9 -> 3; min(1 + round((r+1)/4*20), 20)
    assert v == [16, 6, 20, 11]
    assert variants_by_hardness(hard, 20, seed=0) == v
    ties = variants_by_hardness([0.2] * 5, 5, seed=1)
    assert sorted(ties) == [2, 3, 4, 5, 5] and ties == variants_by_hardness([0.2] * 5, 5, seed=1)
    assert ties != variants_by_hardness([0.2] * 5, 5, seed=2) or ties != variants_by_hardness([0.2] * 5, 5, seed=3)


def test_segmenter_learns_a_separable_toy_task(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for _ in range(32):
        sem = np.zeros((16, 16), np.uint8)
        y, x = rng.integers(0, 8, 2)
        sem[y:y + 8, x:x + 8] = 1
        img = np.where(sem[..., None] == 1, [220, 40, 40], [30, 30, 30]).astype(np.uint8)
        items.append((Image.fromarray(img), sem))
    seg, summary = train_segmenter(items, ["box"], image_size=16, epochs=15, batch_size=8, width=8)
    pred = seg.predict([im for im, _ in items[:4]])
    acc = np.mean([(p == s).mean() for p, (_, s) in zip(pred, items[:4])])
    assert acc > 0.95 and set(seg.class_mean_loss) == {"background", "box"}
    q = seg.class_loss_quantiles["box"]
    assert list(q) == ["0.5", "0.75", "0.9", "0.95", "0.98", "0.99", "0.995", "0.999"]
    assert list(q.values()) == sorted(q.values())
    seg.save(tmp_path / "s")
    load_segmenter.cache_clear()
    again = load_segmenter(str(tmp_path / "s"))
    np.testing.assert_array_equal(again.predict([items[0][0]]), seg.predict([items[0][0]]))
    assert again.class_loss_quantiles == seg.class_loss_quantiles


@pytest.mark.parametrize("damage", ["not json", "quantile not a number", "no classes", "weights of another net",
                                    "weights not a checkpoint"])
def test_a_damaged_segmenter_folder_is_a_spec_error_naming_the_field(tmp_path, damage):
    import json as _json

    folder = tmp_path / "seg"
    Segmenter(SmallUNet(3, 8), ["cat", "dog"], 4, {"background": 0.1, "cat": 1.0, "dog": 2.0},
              {"cat": {"0.99": 1.0}}).save(folder)
    meta = _json.loads((folder / "segmenter.json").read_text())
    if damage == "not json":
        (folder / "segmenter.json").write_text("{classes: [")
    elif damage == "quantile not a number":
        meta["class_loss_quantiles"]["cat"]["0.99"] = "high"
        (folder / "segmenter.json").write_text(_json.dumps(meta))
    elif damage == "no classes":
        meta["classes"] = []
        (folder / "segmenter.json").write_text(_json.dumps(meta))
    elif damage == "weights of another net":
        torch.save(SmallUNet(5, 8).state_dict(), folder / "segmenter.pt")
    else:
        (folder / "segmenter.pt").write_bytes(b"\x80\x04not a checkpoint")
    load_segmenter.cache_clear()
    with pytest.raises(SpecError) as err:
        load_segmenter(str(folder))
    assert err.value.field == "labels.filter.segmenter" and "dsgen segmenter train" in str(err.value)
    assert str(tmp_path) not in str(err.value)
