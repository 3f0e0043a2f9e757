from click.testing import CliRunner
from pycocotools.coco import COCO

from worker.cli import _register, cli


def test_render_writes_a_coco_set_and_refuses_a_non_empty_folder(tmp_path):
    _register()
    runner = CliRunner()
    out = tmp_path / "real"
    r = runner.invoke(cli, ["shapes", "render", "--out", str(out), "--n", "10", "--seed", "4"])
    assert r.exit_code == 0, r.output
    n_images = sum(len(COCO(str(p)).imgs) for p in (out / "coco" / "annotations").glob("instances_*.json"))
    assert n_images == 10
    again = runner.invoke(cli, ["shapes", "render", "--out", str(out), "--n", "10"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(cli, ["shapes", "render", "--out", str(tmp_path / "x"), "--formats", "coco,png"])
    assert bad.exit_code == 2 and "png" in bad.output


def test_train_cli_runs_and_refuses_to_clobber_a_run(tmp_path):
    _register()
    runner = CliRunner()
    args = ["shapes", "train", "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", "--preset", "tiny",
            "--export", str(tmp_path / "model")]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.output
