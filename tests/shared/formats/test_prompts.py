from collections import Counter

import pytest

from shared.formats.prompts import plan_sample, sample_seed
from shared.formats.spec import SpecError, parse_spec
from tests.support.processes import in_fresh_process


def make_spec(**prompts):
    return parse_spec({
        "model": "builtin:tiny-random",
        "classes": [{"name": "cat"}, {"name": "dog", "words": ["dog", "puppy"]}, {"name": "car"}],
        "num_images": 300,
        "seed": 11,
        "prompts": prompts or {"templates": ["a {class} and a {class_2} in the {place}", "a photo of a {class}"],
                               "slots": {"place": ["park", "city"]}},
    })


def test_seed_is_a_pure_function_of_job_seed_and_index():
    assert in_fresh_process("from shared.formats.prompts import sample_seed", "[sample_seed(11, i) for i in range(5)]") == [
        sample_seed(11, i) for i in range(5)]
    seeds = {sample_seed(11, i) for i in range(1000)}
    assert len(seeds) == 1000  # no collisions in a job's first thousand samples
    assert sample_seed(12, 5) != sample_seed(11, 5)


def test_plans_do_not_depend_on_order_or_on_other_samples():
    spec = make_spec()
    forward = [plan_sample(spec, i) for i in range(50)]
    backward = [plan_sample(spec, i) for i in reversed(range(50))][::-1]
    assert forward == backward


def test_class_spans_point_at_the_class_words():
    spec = make_spec()
    for i in range(100):
        plan = plan_sample(spec, i)
        assert plan.mentions, plan
        for m in plan.mentions:
            words = {"cat": {"cat"}, "dog": {"dog", "puppy"}, "car": {"car"}}[m.name]
            assert all(plan.prompt[a:b] in words for a, b in m.spans)
        assert len({m.name for m in plan.mentions}) == len(plan.mentions)


def test_first_class_slot_cycles_so_classes_are_balanced():
    spec = make_spec(templates=["a photo of a {class}"])
    counts = Counter(plan_sample(spec, i).classes[0] for i in range(300))
    assert counts == {"cat": 100, "dog": 100, "car": 100}


def test_list_prompts_find_classes_and_append_class_words():
    spec = make_spec(source="list", prompts=["a puppy in a toy car", "an empty road"])
    p0, p1 = plan_sample(spec, 0), plan_sample(spec, 1)
    assert p0.prompt == "a puppy in a toy car; puppy car"
    assert [m.name for m in p0.mentions] == ["dog", "car"]
    # labels read the appended words (Dataset Diffusion)
    assert [p0.prompt[a:b] for m in p0.mentions for a, b in m.spans] == ["puppy", "car"]
    assert p0.mentions[0].spans[0][0] > len("a puppy in a toy car")
    assert p1.prompt == "an empty road" and p1.mentions == ()


def test_list_prompts_without_appending_point_into_the_caption():
    spec = make_spec(source="list", prompts=["a dog chasing a car"], append_class_names=False)
    plan = plan_sample(spec, 0)
    assert plan.prompt == "a dog chasing a car"
    assert [plan.prompt[a:b] for m in plan.mentions for a, b in m.spans] == ["dog", "car"]


def test_captions_file_gives_each_sample_a_caption_in_order_with_its_classes(tmp_path):
    captions = tmp_path / "caps.txt"
    captions.write_text("a puppy on a sofa\n\n  a red car in the rain  \na bowl of fruit\n", encoding="utf-8")
    spec = make_spec(source="captions_file", captions_file=str(captions), append_class_names=False)
    plans = [plan_sample(spec, i) for i in range(5)]
    # Blank lines skipped, whitespace stripped, the file cycled by index.
    assert [p.prompt for p in plans] == ["a puppy on a sofa", "a red car in the rain", "a bowl of fruit",
                                         "a puppy on a sofa", "a red car in the rain"]
    assert plans[0].classes == ["dog"] and plans[1].classes == ["car"] and plans[2].classes == []
    (span,) = plans[0].mentions[0].spans
    assert plans[0].prompt[span[0]:span[1]] == "puppy"
    assert len({p.seed for p in plans}) == 5  # the caption repeats, the sample does not


def test_captions_file_errors_name_the_field(tmp_path):
    spec = make_spec(source="captions_file", captions_file=str(tmp_path / "missing.txt"))
    with pytest.raises(SpecError, match="prompts.captions_file"):
        plan_sample(spec, 0)


def test_index_outside_the_job_is_refused():
    with pytest.raises(IndexError):
        plan_sample(make_spec(), 300)
