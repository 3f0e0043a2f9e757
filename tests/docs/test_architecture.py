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


QUERY_NAMES = re.compile(r"\b(select|update|delete|insert|text|func|and_|or_|tuple_)\b")


def test_queries_live_only_in_repositories():
    """Every SQL statement is built in a domain's repository.py (or the db infrastructure)."""
    offenders = []
    for path in sorted((REPO / "shared").rglob("*.py")) + sorted((REPO / "worker").rglob("*.py")) + sorted(
            (REPO / "api").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.name == "repository.py" or rel.startswith("shared/db/"):
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("from sqlalchemy") and " import " in stripped:
                if QUERY_NAMES.search(stripped.split(" import ", 1)[1]):
                    offenders.append(f"{rel}: {stripped}")
    assert not offenders, offenders
    assert (REPO / "shared" / "jobs" / "repository.py").exists()


def test_the_domains_of_shared_each_have_a_folder():
    for domain in ("jobs", "datasets", "schedules", "tenants", "sources", "metrics", "formats", "db", "storage",
                   "dispatch"):
        assert (REPO / "shared" / domain / "__init__.py").exists(), domain
    top = sorted(p.name for p in (REPO / "shared").glob("*.py"))
    assert top == ["__init__.py", "client.py", "config.py", "engine.py", "errors.py", "logs.py"], top
