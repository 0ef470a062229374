"""Imports flow one way: a module may import only from its own layer or the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import topoclass

PACKAGE = Path(topoclass.__file__).parent

# Lowest first. Modules of one layer may import each other; nothing imports upward.
LAYERS: list[set[str]] = [
    {"errors"},
    {"config", "files", "metrics", "memory", "distributed", "calibration", "threads", "tensorfile", "logs"},
    {"tasks"},
    {"features"},
    {"data"},
    {"model", "checkpoint"},
    {"trainer"},
    {"inference"},  # serving without PyTorch: nothing it imports at module level may import torch
    {"app"},
    {"screen"},
    {"api"},
    {"serve"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("topoclass."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("topoclass."))
    return found


def test_every_module_belongs_to_a_layer():
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert tops <= set(RANK), f"modules without a layer: {sorted(tops - set(RANK))}"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in _imports(path):
            if RANK[_top(module)] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, "\n".join(upward)
