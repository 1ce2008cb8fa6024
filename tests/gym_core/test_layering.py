"""The kernel stands alone: no gym_core module imports rollout/, servers/ or environments/ at module level
(the CLI and the demo reach the collector inside their commands), and model/ never imports gym_core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def top_level_imports(path: Path) -> set[str]:
    """Packages a module imports when it is imported (not inside functions; TYPE_CHECKING blocks excluded)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ():
            if isinstance(sub, ast.Import):
                found.update(alias.name.split(".")[0] for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                found.add(sub.module.split(".")[0])
    return found


def test_gym_core_modules_do_not_import_the_layers_above() -> None:
    offenders = {path.name: top_level_imports(path) & {"rollout", "servers", "environments"}
                 for path in sorted((ROOT / "gym_core").glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_model_does_not_import_gym_core() -> None:
    offenders = [path.name for path in (ROOT / "model").rglob("*.py") if "gym_core" in top_level_imports(path)]
    assert offenders == []


def test_importing_the_cli_and_demo_loads_no_collector() -> None:
    code = ("import sys, gym_core.cli, gym_core.demo, gym_core.launcher; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rollout', 'servers', 'environments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
