"""bench/label_sweep.py: label settings chosen on a validation stream, from one capture."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sweep():
    spec = importlib.util.spec_from_file_location("label_sweep", ROOT / "bench" / "label_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_names_every_combination_with_the_uncertain_band_below_the_threshold():
    grid = _sweep().sweep_grid((0.3, 0.5), (0.1,), (1, 2), ("guided", "none"))
    assert len(grid) == 8
    assert grid["ct0.3-u0.2-tau1-guided"] == {"class_threshold": 0.3, "uncertain_threshold": 0.2, "tau": 1,
                                              "edges": "guided"}
    assert all(f["uncertain_threshold"] < f["class_threshold"] for f in grid.values())


def test_the_current_setting_scores_as_itself_and_best_is_the_maximum(tmp_path):
    from worker.engine.loading import builtin_root

    mod = _sweep()
    model = tmp_path / "model"
    shutil.copytree(builtin_root() / "shapes-v2", model)
    rec = json.loads((model / "dsgen.json").read_text())["recommended_labels"]
    same = {k: rec[k] for k in ("class_threshold", "uncertain_threshold", "tau", "edges")}
    other = {**same, "class_threshold": 0.9, "uncertain_threshold": 0.8}
    r = mod.run(str(model), n=4, grid={"same": same, "other": other})
    assert r["stream"] == "validation" and r["n_images"] == 4
    assert r["all"]["same"] == r["current"]["refined"]  # one capture: the same setting, the same score
    assert r["best"]["refined"] == max(r["all"].values())
    assert r["all"]["same"] != r["all"]["other"]
    mod.main(["--model", str(model), "--n", "4", "--write", "--out", str(tmp_path / "sweep.json")])
    best = json.loads((tmp_path / "sweep.json").read_text())["best"]["settings"]
    written = json.loads((model / "dsgen.json").read_text())["recommended_labels"]
    assert {k: written[k] for k in best} == best
