"""DESIGN §1: api/ and runner/ never import each other; shared/ imports neither (except the
CLI, the composition root, which imports them lazily inside commands); SQL stays in shared/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        top.add(id(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_api_and_runner_never_import_each_other():
    for path in _files("api"):
        assert not [m for m, _ in _imports(path) if m.split(".")[0] == "runner"], path
    for path in _files("runner"):
        assert not [m for m, _ in _imports(path) if m.split(".")[0] == "api"], path


def test_shared_imports_neither_except_the_cli_lazily():
    for path in _files("shared"):
        for module, top_level in _imports(path):
            if module.split(".")[0] in ("api", "runner"):
                assert "cli" in path.parts and not top_level, f"{path} imports {module}"


def test_no_sql_outside_shared():
    words = ("select(", "update(", "insert(", "delete(", "text(", "exec_driver_sql")
    for package in ("api", "runner"):
        for path in _files(package):
            source = path.read_text()
            assert "sqlalchemy" not in source, f"{path} uses SQLAlchemy directly"
            for word in words:
                assert f"sa.{word}" not in source, path
