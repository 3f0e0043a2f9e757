"""The same spec gives byte-identical datasets: every file of a small `dsgen run` on each
builtin model is compared with the sha256s committed beside this test (written by the code
before the issue-14 refactor). Regenerate deliberately with DSGEN_WRITE_GOLDEN=1 when a change
is *meant* to alter the bytes, and say so in the commit."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SPECS = sorted(p.stem for p in HERE.glob("*.json") if not p.name.endswith(".sha256.json"))
# CPU kernels are bit-identical only for the same thread count: pin it in the child.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _dsgen(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]


def tree_hashes(root: Path, tmp: Path) -> dict[str, str]:
    """sha256 of every file; the run's own temporary folder (resolved source paths in spec.json
    and manifest.json) is replaced by a placeholder first."""
    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes().replace(str(tmp.resolve()).encode(), b"<tmp>")).hexdigest()
    return {p.relative_to(root).as_posix(): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_dataset_bytes_match_the_golden_manifest(tmp_path, name):
    spec = json.loads((HERE / f"{name}.json").read_text())
    if spec.get("method") == "mask2image":
        # A real source folder, rendered deterministically, at a path relative to the spec.
        _dsgen("shapes", "render", "--out", "real", "--n", "2", "--seed", "4", "--formats", "coco", cwd=tmp_path)
        spec["mask2image"]["source"]["path"] = "real"
    (tmp_path / "job.json").write_text(json.dumps(spec))
    _dsgen("run", "job.json", "--out", "data", cwd=tmp_path)
    got = tree_hashes(tmp_path / "data", tmp_path)
    golden = HERE / f"{name}.sha256.json"
    if os.environ.get("DSGEN_WRITE_GOLDEN") == "1":
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(golden.read_text())
    assert sorted(got) == sorted(want), "the set of files differs"
    changed = [f for f in want if got[f] != want[f]]
    assert not changed, f"{len(changed)} files differ, e.g. {changed[:5]}"
