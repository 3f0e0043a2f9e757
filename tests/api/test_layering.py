"""Who may import whom: the API never loads torch or the worker package, shared/ never loads
torch, fastapi or celery (checked in fresh interpreters)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO)})
    return {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}


def test_the_api_loads_neither_torch_nor_the_worker():
    mods = loaded_after("from api.app import create_app; app = create_app(); app.openapi()")
    assert "fastapi" in mods
    assert not mods & {"torch", "worker", "diffusers"}


def shared_modules() -> list[str]:
    """Every module of the shared/ package (found on disk, so a new one is covered at once)."""
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in (REPO / "shared").rglob("*.py"))


def test_shared_loads_no_web_framework_queue_or_torch():
    modules = shared_modules()
    assert len(modules) > 40 and "shared.jobs.repository" in modules
    mods = loaded_after("import " + ", ".join(modules))
    # ... nor the tests' doubles (tests/support): production code never needs them.
    assert not mods & {"torch", "fastapi", "celery", "starlette", "worker", "api", "tests"}


def test_the_celery_app_does_not_load_torch_in_the_parent():
    mods = loaded_after("import worker.celery_app")
    assert "celery" in mods and "torch" not in mods
