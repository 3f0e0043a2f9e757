"""How many project modules a job's path from spec to exports loads (a structure number, not a speed).

    python bench/path_modules.py [--spec tests/golden/shapes-v2-text2image.json]

Two paths, each measured in a fresh interpreter from `sys.modules` (package `__init__`s not counted):
- local: `dsgen run`'s domain call (`run_to_folder`) on the spec, every export format it asks;
- service: the jobs route and its dependencies (submit, status, exports), the Celery tasks, a shard,
  finalisation, plus the engine modules the same spec loads when a sample is generated.
Prints one JSON object: counts per path and the module lists.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMON = """
import json, sys, tempfile
from pathlib import Path
from shared.formats.spec import load_yaml, parse_spec
spec = parse_spec(load_yaml(Path({spec!r}).read_text()))
"""
LOCAL = COMMON + """
from worker.engine.local_run import run_to_folder
run_to_folder(spec, Path(tempfile.mkdtemp()) / "out")
"""
SERVICE = COMMON + """
import api.deps, api.routes.jobs, worker.service.finalize, worker.service.shards, worker.tasks  # noqa: F401
from worker.engine.session import EngineSession
list(EngineSession(spec).generate([0]))
"""
REPORT = """
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("shared", "worker", "api"))
leaf = [m for m in mods if not hasattr(sys.modules[m], "__path__")]
print(json.dumps(leaf))
"""


def modules_of(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + REPORT], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "tests" / "golden" / "shapes-v2-text2image.json"))
    args = ap.parse_args()
    spec = str(Path(args.spec).resolve())
    result = {"spec": Path(spec).name}
    for name, code in (("local", LOCAL), ("service", SERVICE)):
        mods = modules_of(code.format(spec=spec))
        folders = sorted({m.rsplit(".", 1)[0] for m in mods})
        result[name] = {"modules": len(mods), "folders": len(folders), "list": mods}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
