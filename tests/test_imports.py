"""Imports flow one way (docs/architecture.md): cli -> train / analysis -> model -> physics, train ->
distributed and data; nothing imports a package above it. Read from the source, so a reversed import fails
here before it becomes a cycle."""

import ast
import pathlib

import hetrec_dist

PACKAGE = pathlib.Path(hetrec_dist.__file__).parent
SHARED = {"errors", "__init__"}  # hetrec_dist.errors and the version: every package may use them
MAY_IMPORT = {  # sub-package: the other sub-packages its modules may import
    "physics": set(),
    "model": {"physics"},
    "simulate": {"physics"},
    "data": {"physics"},
    "distributed": {"physics"},
    "train": {"model", "physics", "data", "distributed"},
    "analysis": {"model", "physics", "data"},
    "cli": {"train", "analysis", "model", "physics", "data", "distributed", "simulate"},
}


def imported_subpackages(path):
    """The hetrec_dist sub-packages a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "hetrec_dist" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_subpackage_imports_only_those_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # errors.py, __init__.py
        package = relative.parts[0]
        allowed = MAY_IMPORT[package] | {package} | SHARED
        wrong += [f"{relative} imports hetrec_dist.{other}" for other in imported_subpackages(path) - allowed
                  if (PACKAGE / other).is_dir() or (PACKAGE / f"{other}.py").exists()]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_reversed_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from hetrec_dist.train.trainer import Trainer\nimport hetrec_dist.cli\n")
    assert imported_subpackages(module) == {"train", "cli"}
