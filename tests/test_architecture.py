"""The allowed import directions (docs/architecture.md), checked by import-linter on every run;
and the checker itself shown to catch a forbidden import."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "agents", "billing", "users", "core")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.fixture
def copy_of_the_code(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("billing/ledger/spending.py", "from agents.models import AgentRun", "Layers"),
        ("core/errors.py", "import billing.ledger", "Layers"),
        ("users/models.py", "from billing.models import Wallet", "Layers"),
        ("agents/tools/profile.py", "from django.conf import settings", "plain data code"),
        ("agents/runner.py", "import stripe", "Stripe"),
    ],
    ids=["billing-imports-agents", "core-imports-billing", "users-imports-billing", "tool-imports-django", "stripe"],
)
def test_a_forbidden_import_breaks_a_contract(copy_of_the_code, module, line, broken):
    path = copy_of_the_code / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode == 1
    assert "1 broken" in result.stdout
    broken_section = result.stdout.split("Broken contracts", 1)[1]
    assert broken in broken_section


def _function_level_imports(path: Path):
    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    yield function.name, node.lineno


def test_no_import_hides_inside_a_function():
    """Imports sit at the top of their module, where the contracts see them for what they are;
    only an AppConfig's `ready()` registers its signals, checks and tasks (Django's place for it)."""
    hidden = [
        f"{path.relative_to(ROOT)}:{line} in {function}()"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        for function, line in _function_level_imports(path)
        if not (path.name == "apps.py" and function == "ready")
    ]
    assert hidden == []
