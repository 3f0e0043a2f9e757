import json

import pytest

from shared.formats.spec import SpecError, load_spec, parse_spec

BASE = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog"}], "num_images": 4}


def spec_with(**changes):
    data = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        target = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return data


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(BASE)
    assert spec.model.id == "builtin:tiny-random"
    assert spec.labels.tau == 4
    assert (spec.labels.class_threshold, spec.labels.uncertain_threshold) == (0.6, 0.5)
    assert spec.export.splits == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert spec.category_ids == {"cat": 1, "dog": 2}


@pytest.mark.parametrize(
    "changes, field, hint",
    [
        ({"generation__steps": 5000}, "generation.steps", "less than or equal to 1000"),
        ({"generation__width": 500}, "generation.width", "multiple of 8"),
        ({"generation__step": 5}, "generation.step", "unknown field"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"method": "paint"}, "method", "paint"),
        ({"method": "paint"}, "method", "text2image"),
        ({"classes": []}, "classes", "at least 1"),
        ({"classes": [{"name": "cat"}, {"name": "cat"}]}, "classes", "listed twice"),
        ({"classes": [{"name": "bad/name"}]}, "classes.0.name", "letters"),
        ({"prompts__templates": ["a {colour} {class}"]}, "prompts.templates", "slots.colour"),
        ({"prompts__templates": ["a photo"]}, "prompts.templates", "{class}"),
        ({"prompts__source": "list"}, "prompts.prompts", "non-empty prompts list"),
        ({"labels__tau": -1}, "labels.tau", "greater than or equal to 0"),
        ({"labels__uncertain_threshold": 0.7}, "labels.uncertain_threshold", "must be <="),
        ({"labels__step_window": [0.5, 0.2]}, "labels.step_window", "start < end"),
        ({"labels__cross_resolutions": [0]}, "labels.cross_resolutions", "sides in cells"),
        ({"export__formats": ["coco", "tfrecord"]}, "export.formats.1", "'coco', 'yolo'"),
        ({"export__splits": {"train": 0.5, "val": 0.1}}, "export.splits", "add up to 1"),
        ({"model": {"id": "x", "dtype": "int8"}}, "model.dtype", "float16"),
    ],
)
def test_invalid_fields_are_named_with_what_is_allowed(changes, field, hint):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(**changes))
    message = str(err.value)
    assert message.startswith(field + ":"), message
    assert hint in message
    assert "\n" not in message  # one line: the CLI prints it as is


def test_templates_naming_more_classes_than_the_job_has_are_refused():
    data = spec_with(prompts__templates=["a {class} and a {class_2} and a {class_3}"])
    with pytest.raises(SpecError, match="names 3 classes but the job has 2"):
        parse_spec(data)


def test_load_yaml_and_json_and_resolve_captions_relative_to_the_spec(tmp_path):
    (tmp_path / "caps.txt").write_text("a cat\n")
    (tmp_path / "job.yaml").write_text(
        "model: builtin:tiny-random\nclasses: [{name: cat}]\nnum_images: 1\n"
        "prompts: {source: captions_file, captions_file: caps.txt}\n"
    )
    spec = load_spec(tmp_path / "job.yaml")
    assert spec.prompts.captions_file == str((tmp_path / "caps.txt").resolve())
    (tmp_path / "job.json").write_text(json.dumps(BASE))
    assert load_spec(tmp_path / "job.json").num_images == 4


@pytest.mark.parametrize("method, options, read", [
    ("mask2image", {"source": {"path": "real"}}, lambda s: s.mask2image.source),
    ("edit", {"source": {"path": "real"}, "inside": ["a blue {class}"]}, lambda s: s.edit.source),
    ("augment", {"source": {"path": "real"}}, lambda s: s.augment.source),
    ("layout", {"objects": [{"class": "cat", "box": [0.1, 0.1, 0.5, 0.5]}], "box_mask": True,
                "shapes": {"path": "real"}}, lambda s: s.layout.shapes),
])
def test_a_methods_source_folder_is_read_relative_to_the_spec_file(tmp_path, method, options, read):
    job = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 1, "method": method, method: options}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert read(load_spec(tmp_path / "job.json")).path == str((tmp_path / "real").resolve())
    job[method] = {**options, **{k: {"path": "/abs/real"} for k in ("source", "shapes") if k in options}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert read(load_spec(tmp_path / "job.json")).path == "/abs/real"  # absolute paths stay as written


@pytest.mark.parametrize("text, suffix, hint", [("model: [unclosed", ".yaml", "not valid YAML"),
                                                ("{", ".json", "not valid JSON"),
                                                ("- a\n- b\n", ".yaml", "mapping")])
def test_unreadable_files_give_one_line_errors(tmp_path, text, suffix, hint):
    path = tmp_path / f"job{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError, match=hint) as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
