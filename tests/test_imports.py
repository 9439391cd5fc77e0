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
    "simulate": {"physics", "data"},
    "data": {"physics"},
    "distributed": set(),
    "train": {"model", "physics", "data", "distributed"},
    "analysis": {"model", "physics", "data"},
    "explore": {"analysis", "model", "physics", "data"},
    "cli": {"train", "analysis", "model", "physics", "data", "distributed", "simulate", "explore"},
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


def test_public_functions_of_physics_model_and_distributed_are_annotated():
    """Every argument and the return of a public function or method there has a type hint (the shapes and
    units stay in the docstrings)."""
    bare = []
    for package in ("physics", "model", "distributed"):
        for path in sorted((PACKAGE / package).glob("*.py")):
            bare += [f"{path.relative_to(PACKAGE)}:{line} {name}" for line, name in unannotated_functions(path)]
    assert not bare, "\n".join(bare)


def unannotated_functions(path):
    """(line, name) of public functions and methods of public classes that lack an argument or return hint."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child)
            elif isinstance(child, ast.FunctionDef) and (not child.name.startswith("_") or child.name == "__init__"):
                arguments = [a for a in child.args.args + child.args.kwonlyargs if a.arg not in ("self", "cls")]
                lacks_return = child.returns is None and child.name != "__init__"
                if lacks_return or any(a.annotation is None for a in arguments):
                    found.append((child.lineno, child.name))

    visit(ast.parse(path.read_text()))
    return found


def test_the_annotation_check_sees_a_bare_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(x: int) -> int:\n    return x\ndef g(x):\n    return x\nclass A:\n"
                      "    def __init__(self, y):\n        pass\n    def _private(self, z):\n        pass\n")
    assert unannotated_functions(module) == [(3, "g"), (6, "__init__")]
