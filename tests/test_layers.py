"""Imports point one way (docs/extending.md, "Where a module belongs"): a module imports, at its top level, only
modules of its own layer or of a lower one. Read from the source, so it costs no import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "explainer"

LAYERS = [
    # 0: helpers every layer may use (the package root only defines lazy entry points)
    [
        "explainer",
        "explainer.registry",
        "explainer.atomic",
        "explainer.ops",
        "explainer.trust",
        "explainer.runs",
        "explainer.checkpoint",
        "explainer.viz",
        "explainer.resume",
    ],
    ["explainer.data", "explainer.classifiers", "explainer.nets", "explainer.losses"],
    ["explainer.protocols", "explainer.export", "explainer.export_prototypes", "explainer.export_infiller"],
    ["explainer.methods", "explainer.metrics"],
    ["explainer.modules"],
    ["explainer.callbacks", "explainer.evaluation"],
    ["explainer.cli", "explainer.evaluation.cli", "explainer.demo", "explainer.demo_family", "explainer.api"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of the longest prefix of ``module`` listed in :data:`LAYERS`."""
    best, level = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, level = name, index
    assert level is not None, f"{module} belongs to no layer; add it to LAYERS (and to docs/extending.md)"
    return level


def top_level_imports(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "explainer":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "explainer"]
    return found


def test_every_import_points_down_or_sideways():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for imported in top_level_imports(path):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})")
    assert upward == []


def test_the_check_sees_an_upward_import():
    assert layer_of("explainer.methods.cam") == 3 and layer_of("explainer.evaluation.cli") == 6
    assert layer_of("explainer.modules.explainer_module") > layer_of("explainer.methods.base")
    assert "explainer.protocols.base" in top_level_imports(PACKAGE / "protocols" / "wrappers.py")


def test_no_function_imports_the_package_except_the_lazy_entry_points():
    """A function-local import of the package hides a cycle; only ``explainer/__init__.py`` defers its imports
    (to keep ``import explainer`` free of Lightning)."""
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n and n.split(".")[0] == "explainer" for n in names) and path != PACKAGE / "__init__.py":
                inside.append(f"{module_name(path)}:{node.lineno}")
    assert inside == []
