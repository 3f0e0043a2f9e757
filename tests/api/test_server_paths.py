"""Over the API a spec names only what the server offers or the tenant owns, never a path on
the server, and the refusal never tells whether the path exists."""
import copy

import pytest
from api_spec import SPEC
from pydantic import Field

from shared.formats.spec import SERVER_PATH, JobSpec, StrictModel
from shared.formats.spec_paths import check_api_paths, path_fields


def spec(**over):
    s = copy.deepcopy(SPEC)
    s.update(over)
    return s


def i2i(images, coco=None):
    block = {"images": images} | ({"coco": coco} if coco else {})
    return spec(method="image2image", image2image=block)


@pytest.mark.parametrize("body, field", [
    (i2i("/etc"), "image2image.images"),
    (i2i("/usr/share"), "image2image.images"),
    (i2i("relative/folder"), "image2image.images"),
    (i2i("/tmp", coco="/etc/passwd"), "image2image.images"),
    (spec(labels={"boxes": "adaptor", "adaptor": "builtin:../../../../tmp"}), "labels.adaptor"),
    (spec(labels={"boxes": "adaptor", "adaptor": "builtin:/etc"}), "labels.adaptor"),
    (spec(labels={"boxes": "adaptor", "adaptor": "/tmp/my-adaptor"}), "labels.adaptor"),
    (spec(labels={"boxes": "both", "adaptor": "builtin:shapes-v1-adaptor/../tiny-random"}), "labels.adaptor"),
    (spec(model="/tmp"), "model.id"),
    (spec(model="builtin:../builtin/tiny-random"), "model.id"),
    (spec(model="../../worker/engine/builtin/tiny-random"), "model.id"),
    (spec(prompts={"source": "captions_file", "captions_file": "/etc/hostname"}), "prompts.captions_file"),
])
def test_server_paths_are_refused_naming_the_field(client, headers, body, field):
    r = client.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert "traceback" not in r.text.lower()


def test_refusals_do_not_tell_whether_a_server_path_exists(client, headers, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"x")
    answers = set()
    for folder in (str(tmp_path / "real"), str(tmp_path / "missing"), "/etc", "/nonexistent/x"):
        r = client.post("/v1/jobs", json=i2i(folder), headers=headers)
        assert r.status_code == 422
        answers.add(r.text.replace(folder, "<path>"))
    assert len(answers) == 1
    assert "not accepted over the API" in answers.pop()
    for adaptor in (str(tmp_path / "real"), str(tmp_path / "missing")):
        r = client.post("/v1/jobs", json=spec(labels={"boxes": "adaptor", "adaptor": adaptor}), headers=headers)
        answers.add(r.text.replace(adaptor, "<path>"))
    assert len(answers) == 1


def test_what_the_server_offers_is_accepted(client, headers):
    ok = {"model": "builtin:shapes-v1", "classes": ["circle", "square"], "num_images": 4,
          "prompts": {"templates": ["a {class}"]},
          "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
          "labels": {"boxes": "adaptor", "adaptor": "builtin:shapes-v1-adaptor", "mode": "none"},
          "export": {"formats": ["coco"]}}
    r = client.post("/v1/jobs", json=ok, headers=headers)
    assert r.status_code == 201, r.text


def test_schedules_refuse_server_paths_too(client, headers):
    body = {"name": "nightly", "cron": "@daily", "spec": i2i("/etc")}
    r = client.post("/v1/schedules", json=body, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "spec.image2image.images", r.text


def test_every_marked_field_is_walked_and_one_without_a_rule_is_refused():
    parsed = JobSpec.model_validate(i2i("/a", coco="/b.json") | {"labels": {"boxes": "adaptor", "adaptor": "/c"}})
    assert dict(path_fields(parsed)) == {"model.id": "builtin:tiny-random", "labels.adaptor": "/c",
                                         "image2image.images": "/a", "image2image.coco": "/b.json"}

    class Future(StrictModel):  # a path field added later, with no rule yet
        mask_folder: str = Field(json_schema_extra=SERVER_PATH)

    errors = check_api_paths(Future(mask_folder="/srv/masks"), models=[], adaptors=[])
    assert errors and errors[0][0] == "mask_folder" and "not accepted over the API" in errors[0][1]
