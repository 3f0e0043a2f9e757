"""`bench/fleet.py` at toy size: a real API, Postgres, Redis, moto and one stand-in worker;
both finalize seedings (through the shards, and direct) end in a succeeded finalisation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_fleet_bench_runs_end_to_end_and_reports_the_data_plane_and_finalize(tmp_path):
    out = tmp_path / "fleet.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DSGEN_BENCH_REDIS_URL": "redis://127.0.0.1:6379/12"}
    proc = subprocess.run([sys.executable, "bench/fleet.py", "--workers", "1", "--samples-per-worker", "64",
                           "--shard-size", "16", "--finalize", "48,64", "--direct-from", "64", "--size", "32",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    plane = result["data_plane"]["1"]
    assert plane["samples"] == 64 and plane["shards"] == {"succeeded": 4}
    assert plane["data_plane_samples_per_s"] > 0
    assert {"generate", "encode", "s3_put", "db_rows", "fragment"} <= set(plane["stage_ms_per_sample"])
    assert plane["broker_messages_per_sample"] == round(5 / 64, 4)  # one per shard + finalize
    # 64 is seeded directly (only the fragments stored): finalize merges fragments and never
    # reads a sample's objects, so it succeeds with the same archives as a seeding through shards.
    small, large = result["finalize"]["48"], result["finalize"]["64"]
    assert small["seeding"].startswith("shards") and large["seeding"].startswith("direct")
    for run in (small, large):
        assert run["finalize_s"] > 0 and run["finalize_peak_rss_mib"] > 0
        assert 0 < run["finalize_cpu_s"]  # the finalising process's own CPU time (robust to a loaded machine)
        assert set(run["export_bytes"]) == {"coco", "yolo", "voc", "hf", "masks"}


def test_single_pass_seeding_measures_the_design_before_fragments(tmp_path):
    """--single-pass stores no fragment: finalize exports every shard from its downloaded
    samples (the baseline beside the fragment merge), with the same archives."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DSGEN_BENCH_REDIS_URL": "redis://127.0.0.1:6379/12"}
    runs = {}
    for mode in ("--single-pass", None):
        out = tmp_path / f"{mode or 'fragments'}.json"
        args = [sys.executable, "bench/fleet.py", "--workers", "", "--shard-size", "16", "--finalize", "40",
                "--size", "32", "--out", str(out)] + ([mode] if mode else [])
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = json.loads(out.read_text())["finalize"]["40"]
    assert runs["--single-pass"]["seeding"].startswith("shards, no fragments")
    assert runs[None]["seeding"] == "shards (all objects)"
    assert runs["--single-pass"]["export_bytes"] == runs[None]["export_bytes"]
