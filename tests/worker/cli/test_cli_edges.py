"""The CLI's rough edges: every mistake is one line and exit 2, never a traceback."""
import json
import logging
import socket

import pytest
from click.testing import CliRunner

from shared.formats.spec import parse_spec
from worker.cli import _register, cli

_register()

SHAPES = {"model": "builtin:shapes-v1", "classes": ["circle", "dog"], "num_images": 2, "prompts": {"templates": ["a {class}"]},
          "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}, "export": {"formats": ["coco"]}}


@pytest.fixture
def runner():
    return CliRunner()


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w in lines[0], lines[0]


def test_version_and_help_texts(runner):
    r = runner.invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("dsgen ")
    assert "DSGEN_API_KEY" in runner.invoke(cli, ["--help"]).output
    for cmd in ("cancel", "list", "retry", "show"):
        out = runner.invoke(cli, ["jobs", cmd, "--help"]).output
        usage_end = out.index("Options:")
        assert len(out[:usage_end].strip().splitlines()) >= 3, out  # a description under the usage line
        assert "DSGEN_API_KEY" in out


def test_a_spec_that_is_a_folder(runner, tmp_path):
    one_line_error(runner.invoke(cli, ["run", str(tmp_path)]), "is a folder")


def test_yaml_errors_name_line_and_column(runner, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("model: builtin:tiny-random\nclasses: [cat\nnum_images: 2\n")
    one_line_error(runner.invoke(cli, ["run", str(spec)]), "line", "column")
    (tmp_path / "job.json").write_text('{"model": "builtin:tiny-random",\n "classes": [}')
    one_line_error(runner.invoke(cli, ["run", str(tmp_path / "job.json")]), "line 2, column")


def test_a_typo_is_named_with_the_field_it_resembles(runner, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("model: builtin:tiny-random\nclasses: [cat]\nnum_image: 2\n")
    one_line_error(runner.invoke(cli, ["run", str(spec)]), "unknown field `num_image`", "did you mean `num_images`")


def test_classes_as_plain_names():
    spec = parse_spec({"model": "builtin:tiny-random", "classes": ["cat", "dog"], "num_images": 1})
    assert [c.name for c in spec.classes] == ["cat", "dog"]


def test_out_under_a_file(runner, tmp_path):
    (tmp_path / "f").write_text("x")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"model": "builtin:tiny-random", "classes": ["cat"], "num_images": 1,
                                "generation": {"width": 32, "height": 32, "steps": 1}}))
    one_line_error(runner.invoke(cli, ["run", str(spec), "--out", str(tmp_path / "f" / "data")]), "is a file")


def test_run_checks_the_model_metadata_before_loading_weights(tmp_path):
    from shared.formats.spec import SpecError
    from worker.engine.local_run import run_to_folder

    def never(spec):
        raise AssertionError("weights were loaded for a spec the metadata refuses")

    with pytest.raises(SpecError, match="'dog'.*vocabulary"):
        run_to_folder(parse_spec(SHAPES), tmp_path / "o", session_factory=never)
    no_size = {k: v for k, v in SHAPES.items() if k != "generation"} | {"classes": ["circle"]}
    with pytest.raises(SpecError, match="32x32"):
        run_to_folder(parse_spec(no_size), tmp_path / "o", session_factory=never)
    assert not (tmp_path / "o").exists()


def test_run_says_it_is_loading_the_model(tmp_path):
    from tests.support.fakes import FakeEngine
    from worker.engine.local_run import run_to_folder

    phases, loaded = [], []

    def factory(spec):
        loaded.append(list(phases))
        return FakeEngine(spec)

    spec = parse_spec({**SHAPES, "classes": ["circle", "square"], "export": {"formats": ["coco"]},
                       "model": "builtin:tiny-random", "prompts": {"templates": ["a {class}"]}})
    spec = parse_spec({**spec.model_dump(mode="json"), "classes": [{"name": "cat"}]})  # FakeEngine draws cats
    run_to_folder(spec, tmp_path / "o", session_factory=factory, on_phase=phases.append)
    assert loaded == [["loading model builtin:tiny-random"]]


def test_pull_refuses_a_file_or_a_non_empty_folder(runner, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(runner.invoke(cli, ["pull", "abc", "--out", str(tmp_path / "file"), "--server", "http://127.0.0.1:9"]),
                   "is a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    one_line_error(runner.invoke(cli, ["pull", "abc", "--out", str(tmp_path / "full"), "--server", "http://127.0.0.1:9"]),
                   "not empty")
    one_line_error(runner.invoke(cli, ["datasets", "pull", "ds", "--out", str(tmp_path / "full"),
                                       "--server", "http://127.0.0.1:9"]), "not empty")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_serve_on_a_taken_port_fails_before_the_banner(runner, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(cli, ["serve", "--embedded", "--port", str(port), "--data", str(tmp_path / "d")])
    one_line_error(r, f"--port {port}", "another --port")
    assert "dsgen embedded:" not in r.output and not (tmp_path / "d").exists()


def test_polling_is_not_logged_at_info_and_errors_are():
    from shared.logs import QuietPolling, default_format

    quiet = QuietPolling()
    logger = logging.getLogger("uvicorn.access")
    logger.setLevel(logging.INFO)

    def rec(method, status):
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:1", method, "/v1/jobs/x", "1.1", status), None)

    assert not quiet.filter(rec("GET", 200))
    assert quiet.filter(rec("GET", 500)) and quiet.filter(rec("POST", 201)) and quiet.filter(rec("GET", 404))
    logger.setLevel(logging.DEBUG)
    assert quiet.filter(rec("GET", 200))
    logger.setLevel(logging.NOTSET)

    class Tty:
        def isatty(self):
            return True

    assert default_format(None, Tty()) == "text" and default_format("json", Tty()) == "json"
    assert default_format(None, open(__file__)) == "json"


def test_job_id_prefixes_resolve_across_pages_and_ambiguity_is_named():
    import httpx

    from shared.client import ApiError, Client

    ids = ["1234abcd-0000-4000-8000-000000000001", "1234abce-0000-4000-8000-000000000002",
           "99990000-0000-4000-8000-000000000003"]

    def handler(request):
        cursor = request.url.params.get("cursor")
        page, nxt = (ids[:2], "p2") if cursor is None else (ids[2:], None)
        return httpx.Response(200, json={"items": [{"id": i} for i in page], "next_cursor": nxt})

    with Client("http://x", None, transport=httpx.MockTransport(handler)) as c:
        assert c.resolve_job_id("9999") == ids[2]  # found on the second page
        assert c.resolve_job_id("1234ABCD") == ids[0]
        assert c.resolve_job_id(ids[1]) == ids[1]
        with pytest.raises(ApiError, match="several job ids"):
            c.resolve_job_id("1234ab")
        with pytest.raises(ApiError, match="no job"):
            c.resolve_job_id("abcd")
