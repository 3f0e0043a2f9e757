"""The same spec gives the same dataset: every file of a small `dsgen run` on each builtin model
is compared with the fingerprints committed beside this test (`<spec>.golden.json`). The
fingerprints (tests/golden/fingerprint.py) survive another CPU's float rounding, which moves
a pixel by one level or a score in its seventh digit, and nothing more. Regenerate
deliberately with DSGEN_WRITE_GOLDEN=1 when a change is *meant* to alter the data, and say
so in the commit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fingerprint import compare, fingerprint

HERE = Path(__file__).parent
SPECS = sorted(p.stem for p in HERE.glob("*.json") if not p.name.endswith(".golden.json"))
# Kernels reduce in thread-count-dependent order: pin it in the child.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _dsgen(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]


def tree_fingerprints(root: Path, tmp: Path) -> dict[str, dict]:
    """Fingerprint of every file; the run's own temporary folder (resolved source paths in
    spec.json and manifest.json) is replaced by a placeholder first."""
    here = str(tmp.resolve()).encode()
    return {p.relative_to(root).as_posix(): fingerprint(p.name, p.read_bytes().replace(here, b"<tmp>"))
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_dataset_matches_the_golden_fingerprints(tmp_path, name):
    spec = json.loads((HERE / f"{name}.json").read_text())
    if spec.get("method") == "mask2image":
        # A real source folder, rendered deterministically, at a path relative to the spec.
        _dsgen("shapes", "render", "--out", "real", "--n", "2", "--seed", "4", "--size", str(spec["generation"]["width"]),
               "--formats", "coco", cwd=tmp_path)
        spec["mask2image"]["source"]["path"] = "real"
    (tmp_path / "job.json").write_text(json.dumps(spec))
    _dsgen("run", "job.json", "--out", "data", cwd=tmp_path)
    got = tree_fingerprints(tmp_path / "data", tmp_path)
    golden = HERE / f"{name}.golden.json"
    if os.environ.get("DSGEN_WRITE_GOLDEN") == "1":
        golden.write_text(json.dumps(got, sort_keys=True, separators=(",", ":")) + "\n")
    want = json.loads(golden.read_text())
    assert sorted(got) == sorted(want), "the set of files differs"
    changed = [m for f in want for m in compare(want[f], got[f], f)]
    assert not changed, f"{len(changed)} differences, e.g. {changed[:5]}"
