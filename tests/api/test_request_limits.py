"""Denial of service at the edge: YAML aliases are refused (no expansion bombs) and the body
limit holds for chunked bodies as well as for announced ones."""
import copy
import json
import time

from api_spec import SPEC

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_yaml_aliases_are_refused_without_expanding(client, headers):
    started = time.perf_counter()
    r = client.post("/v1/specs/parse", json={"text": BOMB}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "text"
    assert "aliases" in r.json()["detail"] and "line 2" in r.json()["detail"]
    assert len(r.content) < 1000 and time.perf_counter() - started < 5


def test_a_spec_file_with_aliases_is_refused(tmp_path):
    import pytest

    from shared.formats.spec import SpecError, load_spec

    path = tmp_path / "bomb.yaml"
    path.write_text("model: builtin:tiny-random\nclasses: &c [cat]\nnum_images: 1\nprompts: {templates: *c}\n")
    with pytest.raises(SpecError, match="aliases .* line 4"):
        load_spec(path)


def chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_chunked_body_over_the_limit_is_413(client, headers, settings):
    big = json.dumps({**SPEC, "name": "x", "pad": "y" * (settings.max_request_bytes + 10)}).encode()
    r = client.post("/v1/jobs", content=chunks(big), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = client.post("/v1/specs/parse", content=chunks(json.dumps({"text": "a: " + "b" * 2_000_000}).encode()),
                    headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_chunked_body_under_the_limit_is_served(client, headers):
    body = json.dumps(copy.deepcopy(SPEC)).encode()
    r = client.post("/v1/jobs", content=chunks(body, 7), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text


def test_announced_body_over_the_limit_is_413(client, headers, settings):
    r = client.post("/v1/jobs", content=b"{" + b" " * (settings.max_request_bytes + 1) + b"}",
                    headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/jobs", content=b"{}", headers={**headers, "Content-Type": "application/json",
                                                         "Content-Length": "²".encode("utf-8")})
    assert r.status_code in (400, 413)
