"""The module table of docs/design.md, generated from the code: each package of hvdbg/
in layer order, each module with the first line of its docstring (tests/test_docs.py
keeps the document in sync: ``python -m hvdbg.ui.layout_doc`` prints the table)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent

#: the layers, lowest first, and what each is for (imports point down only: tests/test_layers.py)
LAYERS: tuple[tuple[str, str], ...] = (
    ("errors.py", "the exception hierarchy and the run-outcome vocabulary"),
    ("arch", "x86 architecture, pure: registers, segments, paging, events, APIC and CPUID facts"),
    ("vmx", "VMX as data and codecs: VMCS fields, controls, exit reasons and qualifications, EPT, bitmaps"),
    ("platform", "the machine around the CPUs: memory, local APIC + APIC bus, devices, firmware, boot loaders"),
    ("config.py", "the TOML schema (a platform description)"),
    ("engine", "the only code that imports Unicorn"),
    ("hv", "the hypervisor model: typed exits, the VMX vCPU, activity states, the VMM's handlers, the machine"),
    ("run", "who runs when: run control, executors, watchdog, schedulers"),
    ("debug", "the debug session (every breakpoint, watchpoint and exit break) and the gdb target"),
    ("api", "the public entry points (run, open_debug) and the diagnosis of a run"),
    ("ui", "text front-ends: cli, shell, command registry, rendering"),
)


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    sentence = first.split(". ")[0].rstrip(".")
    return sentence.replace("|", "/")


def module_table() -> str:
    rows = ["| layer | module | what it is |", "|---|---|---|"]
    for name, what in LAYERS:
        target = PACKAGE / name
        files = [target] if target.suffix == ".py" else sorted(
            p for p in target.rglob("*.py") if p.name != "__init__.py" or p.parent != target)
        rows.append(f"| **{name.removesuffix('.py')}** | | {what} |")
        for f in files:
            rel = f.relative_to(PACKAGE.parent).as_posix()
            if f.name == "__init__.py":
                rel = f.parent.relative_to(PACKAGE.parent).as_posix() + "/"
            rows.append(f"| | `{rel}` | {summary(f)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(module_table(), end="")
