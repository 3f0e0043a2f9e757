"""`bench/gpu.py --device cpu --quick`: the GPU benchmark's code runs end to end here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_quick_on_cpu_reports_plain_and_capture_per_batch(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--batches", "1,2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"] is True
    assert [r["batch_size"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["images_per_s"]["plain"] > 0 and run["images_per_s"]["capture"] > 0
        ratio = run["images_per_s"]["capture"] / run["images_per_s"]["plain"]
        assert abs(run["capture_vs_plain"] - ratio) < 0.01  # from unrounded rates


def test_gpu_bench_refuses_cuda_where_there_is_none():
    import torch

    if torch.cuda.is_available():
        return  # a GPU machine runs the real benchmark instead
    proc = subprocess.run([sys.executable, "bench/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "--device cpu --quick" in proc.stderr
