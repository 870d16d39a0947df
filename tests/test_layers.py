"""The layering of hvdbg/, checked the way Cargo checks crate dependencies: imports point
down only (docs/design.md "Layout"), only engine/ touches Unicorn, and only the activity
state machine writes a vCPU's activity state and pending INIT/SIPI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "hvdbg"

#: layer of each top-level module or package of hvdbg, lowest first
LAYERS: dict[str, int] = {
    "errors": 0, "__init__": 0,
    "arch": 1,
    "vmx": 2,
    "platform": 3, "config": 3,
    "engine": 4,
    "hv": 5,
    "run": 6,
    "debug": 7,
    "api": 8,
    "ui": 9,
}
#: modules outside hvdbg that a layer may import (the protocol library is VMX-agnostic)
EXTERNAL_FLOOR = {"gdbstub": 7}
#: vCPU state only hv/activity.py may change (outside constructors)
ACTIVITY_FIELDS = {"activity", "pending_init", "pending_sipi"}


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def layer_of_path(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names (including imports inside functions)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "hvdbg":
                out += [(node.lineno, f"hvdbg.{a.name}") for a in node.names]
    return out


def test_every_module_belongs_to_a_layer():
    unknown = {layer_of_path(p) for p in modules()} - set(LAYERS)
    assert not unknown, f"modules of no layer (add them to LAYERS and docs/design.md): {unknown}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path):
    own = LAYERS[layer_of_path(path)]
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for line, name in imported(tree):
        top = name.split(".")[0]
        if top == "hvdbg" and "." in name:
            target = name.split(".")[1]
            if target in LAYERS and LAYERS[target] > own:
                bad.append(f"line {line}: {name} (layer {LAYERS[target]} above {own})")
        elif top in EXTERNAL_FLOOR and own < EXTERNAL_FLOOR[top]:
            bad.append(f"line {line}: {name} below the layer that may use it")
        elif top in ("unicorn", "unicorn_py3") and layer_of_path(path) != "engine":
            bad.append(f"line {line}: {name}: only hvdbg/engine imports unicorn")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", [p for p in modules() if layer_of_path(p) != "engine"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_engine_handle_outside_engine(path: Path):
    """Nothing above engine/ reaches the Unicorn handle (``x.uc`` / ``x.engine.uc``)."""
    tree = ast.parse(path.read_text(), str(path))
    bad = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "uc"]
    assert not bad, f"{path.name}: .uc at lines {bad}"


def _assignments(tree: ast.AST):
    """(function name, target attribute, line) of every attribute assignment."""
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute):
                        yield func.name, sub.attr, node.lineno


@pytest.mark.parametrize("path", [p for p in modules() if p != PKG / "hv" / "activity.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_activity_state_machine_writes_activity(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    bad = [f"line {line} ({fn}): .{attr} =" for fn, attr, line in _assignments(tree)
           if attr in ACTIVITY_FIELDS and fn != "__init__"]
    assert not bad, f"{path.name} writes vCPU activity state outside hvdbg/hv/activity.py: {bad}"


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
