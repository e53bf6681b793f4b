"""The architecture stays as the README's Architecture section describes it: layered imports with no cycle (the
contracts in pyproject.toml, checked by import-linter), and modules and functions small enough to read."""

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 460  # in connections/ (the move into packages wrapped a few imports; lowered after it)
MAX_FUNCTION_LINES = 60  # anywhere but bench/
NOT_OURS = {".venv", "var", "migrations", "node_modules", "bench"}


def _python_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.py") if not NOT_OURS & set(path.relative_to(REPO_ROOT).parts)]


def test_no_import_goes_up_a_layer_or_round_in_a_cycle():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_of_connections_is_too_long():
    sizes = {
        str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines())
        for path in _python_files(REPO_ROOT / "connections")
    }
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
    assert len(sizes) > 20  # the walk found the package


def test_no_function_is_over_60_lines():
    too_long = {}
    for path in _python_files(REPO_ROOT):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = lines
    assert too_long == {}
