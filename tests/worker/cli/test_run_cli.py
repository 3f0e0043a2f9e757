"""The CLI turns every user mistake into one line on stderr and exit code 2."""
import json

import pytest
from click.testing import CliRunner

from worker.cli import _register, cli


@pytest.fixture(scope="module")
def runner():
    _register()
    return CliRunner()


def test_invalid_field_is_one_line_naming_the_field(runner, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("model: builtin:tiny-random\nclasses: [{name: cat}]\nnum_images: 2\ngeneration: {steps: 0}\n")
    result = runner.invoke(cli, ["run", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: generation.steps: Input should be greater than or equal to 1 (got 0)"
    ]
    assert not (tmp_path / "o").exists()


def test_unknown_model_lists_builtin_models(runner, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"model": "builtin:sd99", "classes": [{"name": "cat"}], "num_images": 1}))
    result = runner.invoke(cli, ["run", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown builtin model 'builtin:sd99'" in result.output and "builtin:tiny-random" in result.output
    assert "Traceback" not in result.output


def test_resolution_the_model_lacks_is_a_clear_error(runner, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({
        "model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 1,
        "generation": {"width": 32, "height": 32, "steps": 1},
        "labels": {"cross_resolutions": [64]},
    }))
    result = runner.invoke(cli, ["run", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "labels.cross_resolutions" in result.output and "available" in result.output


def test_size_not_multiple_of_the_model_stride():
    from types import SimpleNamespace

    from shared.formats.spec import GenerationSpec, SpecError
    from worker.engine.generate import check_size

    # An SD-like model: VAE /8 and a 4-level UNet -> sides must be multiples of 64.
    model = SimpleNamespace(vae_scale=8, unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(1, 2, 3, 4))),
                            info=SimpleNamespace(id="sd"))
    check_size(model, GenerationSpec(width=512, height=640))
    with pytest.raises(SpecError, match="generation.width: must be a multiple of 64"):
        check_size(model, GenerationSpec(width=520, height=512))


def test_missing_spec_file(runner, tmp_path):
    result = runner.invoke(cli, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "spec file not found" in result.output
