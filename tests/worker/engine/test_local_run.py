"""`dsgen run` into a folder: resume after a kill gives the same files as an undisturbed run."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.formats.spec import parse_spec
from worker.engine.local_run import OutputFolderError, run_to_folder

SPEC = {
    "name": "resume",
    "model": "builtin:tiny-random",
    "classes": [{"name": "cat"}, {"name": "dog"}],
    "prompts": {"templates": ["a {class} and a {class_2}", "a photo of a {class}"]},
    "num_images": 16,
    "seed": 3,
    "generation": {"width": 32, "height": 32, "steps": 4, "batch_size": 2},
    "labels": {"min_component_area": 4},
    "export": {"splits": {"train": 0.6, "val": 0.2, "test": 0.2}},
}


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An undisturbed run, in its own process like the interrupted ones (CPU kernels give
    bit-identical results only for the same thread count, which tests may change in-process)."""
    tmp = tmp_path_factory.mktemp("ref")
    (tmp / "job.json").write_text(json.dumps(SPEC))
    out = tmp / "data"
    done = subprocess.run([sys.executable, "-m", "worker.cli", "run", str(tmp / "job.json"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_reference_run_has_every_format_and_a_manifest_of_every_file(reference_run):
    files = tree_hashes(reference_run)
    for prefix in ("coco/", "yolo/", "voc/", "hf/", "masks/", "samples/"):
        assert any(f.startswith(prefix) for f in files), prefix
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert len(manifest["samples"]) == 16
    for name, meta in manifest["files"].items():
        assert files[name] == meta["sha256"], name


def _spawn(spec_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", str(spec_path), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        # Ctrl-C as a user's terminal delivers it: a runner started in the background
        # (`make test &`) ignores SIGINT, and the child would inherit that and never stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_records(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out.glob("samples/*/record.json"))) >= count:
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("run did not progress")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_identical_files(tmp_path, reference_run, sig):
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / "data"
    proc = _spawn(spec_path, out)
    _wait_for_records(out, 3, proc)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    done_before = len(list(out.glob("samples/*/record.json")))
    assert 3 <= done_before < 16, "the interruption should land mid-run"
    assert not (out / "manifest.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", str(spec_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{16 - done_before} generated, {done_before} reused" in resumed.stdout
    assert tree_hashes(out) == tree_hashes(reference_run)


def test_folder_of_another_spec_is_never_touched(tmp_path, reference_run):
    other = parse_spec({**SPEC, "seed": 4})
    before = tree_hashes(reference_run)
    with pytest.raises(OutputFolderError, match="different spec"):
        run_to_folder(other, reference_run)
    assert tree_hashes(reference_run) == before


def test_non_dataset_folder_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    spec = parse_spec({**SPEC, "num_images": 2, "export": {"formats": ["coco"]}})
    with pytest.raises(OutputFolderError, match="not a dsgen dataset"):
        run_to_folder(spec, out)
    with pytest.raises(OutputFolderError, match="not made by dsgen"):
        run_to_folder(spec, out, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me" and not (out / "manifest.json").exists()


def test_overwrite_replaces_a_dsgen_dataset(tmp_path, reference_run):
    import shutil

    out = tmp_path / "data"
    shutil.copytree(reference_run, out)
    (out / "samples" / "stray.txt").write_text("from the old run")
    spec = parse_spec({**SPEC, "num_images": 2, "seed": 9, "export": {"formats": ["coco"]}})
    run_to_folder(spec, out, overwrite=True)
    assert not (out / "samples" / "stray.txt").exists() and (out / "manifest.json").is_file()
    assert json.loads((out / "spec.json").read_text())["seed"] == 9


@pytest.mark.parametrize("change", [
    {"model": "builtin:no-such-model"},
    {"model": "/no/such/folder"},
    {"prompts": {"source": "captions_file", "captions_file": "/no/such/captions.txt"}},
    {"labels": {"cross_resolutions": [64]}},
    {"labels": {"boxes": "adaptor"}},  # tiny-random ships no adaptor
    {"method": "image2image", "image2image": {"images": "/no/such/images"}},
])
def test_overwrite_that_cannot_start_deletes_nothing(tmp_path, reference_run, change):
    import shutil

    out = tmp_path / "data"
    shutil.copytree(reference_run, out)
    before = tree_hashes(out)
    from shared.formats.spec import SpecError

    bad = parse_spec({**SPEC, "num_images": 2, **change})
    with pytest.raises(SpecError):
        run_to_folder(bad, out, overwrite=True)
    assert tree_hashes(out) == before


def test_out_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    spec = parse_spec({**SPEC, "num_images": 2})
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        run_to_folder(spec, tmp_path / "file" / "data")


def test_a_spec_the_model_cannot_run_leaves_no_folder_so_the_fixed_spec_can_use_it(tmp_path):
    from shared.formats.spec import SpecError

    out = tmp_path / "data"
    bad = parse_spec({**SPEC, "num_images": 2, "labels": {"boxes": "adaptor"}})  # tiny-random ships no adaptor
    with pytest.raises(SpecError, match="labels.adaptor"):
        run_to_folder(bad, out)
    assert not out.exists()
    good = parse_spec({**SPEC, "num_images": 2, "export": {"formats": ["coco"]}})
    run_to_folder(good, out)
    assert (out / "manifest.json").is_file()
