"""Values computed in a fresh interpreter: determinism that survives a new process (another hash seed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def in_fresh_process(setup: str, expression: str, hash_seed: str = "12345") -> Any:
    """`expression` (JSON-serialisable) evaluated after `setup` in a new Python with PYTHONHASHSEED=hash_seed."""
    code = f"{setup}\nimport json, sys\nsys.stdout.write(json.dumps({expression}))"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
