"""The package's floors: a module imports only from lower floors (or its own package), so there are no circles."""

from __future__ import annotations

import ast
from pathlib import Path

import unigap

FLOORS = {
    "world": 0, "model": 1, "data": 1, "train": 2, "evaluate": 2, "prefs": 3, "diagnose": 3, "selfimprove": 3,
    "refine": 3, "pretrain": 3, "unimrg": 3, "study": 4, "report": 5, "cli": 6,
}  # fmt: skip


def _imports(path: Path) -> list[str]:
    """Every `unigap.*` module the file imports, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unigap."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("unigap.")]
    return found


def test_every_package_imports_only_from_lower_floors() -> None:
    root = Path(unigap.__file__).parent
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(FLOORS), f"packages without a floor: {packages - set(FLOORS)}"
    upward = []
    for path in root.rglob("*.py"):
        package = path.relative_to(root).parts[0]
        if package not in FLOORS:
            continue  # top-level modules (errors, atomic, arms, ...) are shared utilities
        for module in _imports(path):
            target = module.split(".")[1]
            if target in FLOORS and target != package and FLOORS[target] >= FLOORS[package]:
                upward.append(f"{path.relative_to(root)} imports {module}")
    assert not upward, "\n".join(upward)
