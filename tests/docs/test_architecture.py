"""docs/architecture.md stays true: every folder and module it names exists."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"


def named_paths() -> set[str]:
    text = DOC.read_text()
    found = set(re.findall(r"\b((?:shared|worker|api|tests)/[\w./]*)", text))
    return {p.rstrip(".") for p in found}


def test_every_path_named_in_the_architecture_exists():
    paths = named_paths()
    assert len(paths) > 25
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_stage_names_its_folder():
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"\| \d \w+ \|", line)]
    assert [r.split("|")[1].strip().split()[0] for r in rows] == [str(i) for i in range(1, 8)]
    assert all(re.search(r"`(shared|worker|api)/", r) for r in rows)
