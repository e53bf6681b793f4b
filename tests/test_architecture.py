"""The architecture stays as docs/architecture.md describes it: layered imports with no cycle (the
contracts in pyproject.toml, checked by import-linter), and modules and functions small enough to read."""

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400  # anywhere but bench/ and tests/
MAX_TOP_LEVEL_MODULES = 12  # of connections/: the rest is in packages named by job
MAX_FUNCTION_LINES = 60  # anywhere but bench/ and tests/
NOT_OURS = {".venv", "var", "migrations", "node_modules", "bench", "tests"}


def _python_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.py") if not NOT_OURS & set(path.relative_to(REPO_ROOT).parts)]


def test_no_import_goes_up_a_layer_or_round_in_a_cycle():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_is_over_400_lines():
    sizes = {
        str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines())
        for folder in ("connections", "providers", "controlroom", "client")
        for path in _python_files(REPO_ROOT / folder)
    }
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
    assert len(sizes) > 60  # the walk found the packages


def test_the_connections_folder_shows_the_architecture():
    top_level = sorted(path.name for path in (REPO_ROOT / "connections").glob("*.py"))
    packages = sorted(path.parent.name for path in (REPO_ROOT / "connections").glob("*/__init__.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level
    for job in ("outbound", "oauth", "engine", "cache", "endpoint", "flows", "audit", "notify", "ops", "config", "web"):
        assert job in packages


def test_no_function_is_over_60_lines():
    too_long = {}
    for path in _python_files(REPO_ROOT):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = lines
    assert too_long == {}


def test_the_test_support_imports_nothing_from_test_packages():
    # tests/support is what tests, benches and tools build on: a test package it imported would drag that package's
    # fixtures and settings along, and a change there would break everything else.
    wrong = {}
    support = sorted((REPO_ROOT / "tests" / "support").glob("*.py"))  # not _python_files: it leaves tests/ out
    assert len(support) > 5, support
    for path in support:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support"):
                    wrong[f"{path.name}:{node.lineno}"] = name
    assert wrong == {}, wrong
