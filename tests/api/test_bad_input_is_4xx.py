"""Input that the database, UTF-8 or JSON cannot hold is a 422 naming the field, never a 500."""
import copy
import json

import pytest

from api_spec import SPEC

JSON = {"Content-Type": "application/json"}


def raw(spec_text: str) -> bytes:
    return spec_text.encode("utf-8", "surrogatepass")


def spec_json(**over) -> str:
    s = copy.deepcopy(SPEC)
    s.update(over)
    return json.dumps(s)


NUL = "\\u0000"
SURROGATE = "\\ud800"


@pytest.mark.parametrize("body, field", [
    (spec_json(name="x").replace('"cat"', f'"c{NUL}at"'), "classes.0.name"),
    (spec_json(prompts={"templates": ["a {class} here"]}).replace("here", f"here{NUL}"), "prompts.templates.0"),
    (spec_json(prompts={"negative": "blurry"}).replace("blurry", f"blur{SURROGATE}"), "prompts.negative"),
    (spec_json().replace('"cat"', f'"{SURROGATE}"'), "classes.0.name"),
    (spec_json(prompts={"templates": ["a {class} {c}"], "slots": {"c": ["red"]}}).replace('"red"', f'"r{NUL}"'),
     "prompts.slots.c.0"),
    (spec_json(export={"formats": ["coco"], "splits": {"train": 0.5, "val": 0.5}}).replace("0.5, \"val\"", "NaN, \"val\""),
     "export.splits.train"),
    (spec_json(generation={"width": 16, "height": 16, "steps": 2, "guidance_scale": 1.0}).replace("1.0", "Infinity"),
     "generation.guidance_scale"),
    (spec_json(seed=1).replace('"seed": 1', '"seed": -Infinity'), "seed"),
    (spec_json(num_images=6).replace('"num_images": 6', '"num_images": NaN'), "num_images"),
    (spec_json(model="builtin:tiny-random").replace("builtin:tiny-random", f"builtin:tiny{NUL}"), "model"),
])
def test_unstorable_spec_values_are_422(client, headers, body, field):
    r = client.post("/v1/jobs", content=raw(body), headers={**headers, **JSON})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    assert client.get("/v1/jobs", headers=headers).status_code == 200


def test_schedules_refuse_nan_and_nul_too(client, headers):
    body = json.dumps({"name": "n", "cron": "@daily", "spec": json.loads(spec_json())})
    nan = body.replace('"num_images": 6', '"num_images": NaN')
    r = client.post("/v1/schedules", content=raw(nan), headers={**headers, **JSON})
    assert r.status_code == 422 and r.json()["field"] == "spec.num_images", r.text
    nul = body.replace('"cat"', f'"c{NUL}"')
    r = client.post("/v1/schedules", content=raw(nul), headers={**headers, **JSON})
    assert r.status_code == 422 and r.json()["field"].startswith("spec.classes"), r.text
    tz = body.replace('"@daily"', f'"@daily", "timezone": "U{SURROGATE}"')
    r = client.post("/v1/schedules", content=raw(tz), headers={**headers, **JSON})
    assert r.status_code == 422 and r.json()["field"] == "timezone", r.text


@pytest.mark.parametrize("text", [
    "2020-01-01: x\nmodel: builtin:tiny-random\n",
    "? !!binary aGVsbG8=\n: x\n",
    "name: !!binary aGVsbG8=\n",
    "1: a\n",
    "num_images: .nan\n",
    "seed: .inf\n",
    'name: "\\ud800"\n',
    'name: "\\0"\n',
    "a: !!set {x, y}\n",
    "a: !!timestamp 2001-12-14t21:59:43.10-05:00\nb: [1,\n",
])
def test_spec_parse_refuses_what_json_cannot_hold(client, headers, text):
    r = client.post("/v1/specs/parse", json={"text": text}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "text"


def test_spec_parse_turns_date_values_into_text(client, headers):
    r = client.post("/v1/specs/parse", json={"text": "name: n\ncreated: 2020-01-02\n"}, headers=headers)
    assert r.status_code == 200 and r.json()["spec"]["created"] == "2020-01-02"


@pytest.mark.parametrize("digit", ["²", "٣", "１", "³³"])
def test_unicode_digits_are_not_numbers(client, headers, run_job, digit):
    job = client.post("/v1/jobs?dataset=ds", json=SPEC, headers=headers).json()
    run_job(job["id"])
    r = client.get(f"/v1/jobs/{job['id']}/samples", params={"cursor": digit}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "cursor"
    for ref in (digit, f"v{digit}"):
        r = client.get(f"/v1/datasets/ds/versions/{ref}", headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "version", r.text
    r = client.get("/v1/datasets/ds/diff", params={"base": digit}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "base"
    assert client.get("/v1/datasets/ds/versions/1", headers=headers).status_code == 200


@pytest.mark.parametrize("name", ["nightly\n", "nightly\r\n", "a\nb"])
def test_names_with_a_trailing_newline_are_refused(client, headers, name):
    r = client.post("/v1/jobs", params={"dataset": name}, json=SPEC, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "dataset", r.text
    from urllib.parse import quote

    r = client.get(f"/v1/datasets/{quote(name)}/versions", headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
    r = client.post("/v1/schedules", json={"name": name, "cron": "@daily", "spec": SPEC}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "name"
