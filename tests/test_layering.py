"""The floors of docs/architecture.md, held against the code's own imports.

Every module of ``src/mlops_lab`` must stand on exactly one floor of the doc's table; an import may only reach a module
on the importer's floor or below; no chain of imports may come back to where it started. Function-level imports count
too: importing late saves start-up time, it does not make a dependency go away.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mlops_lab"
DOC = ROOT / "docs" / "architecture.md"
FLOOR_ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*?)\|")


def floors_from_doc(text: str) -> dict[str, int]:
    """``{unit: floor}`` from the table under "## Floors" (a unit: a top-level module or package of mlops_lab)."""
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors: dict[str, int] = {}
    for line in section.splitlines():
        if match := FLOOR_ROW.match(line):
            for unit in re.findall(r"`([\w.]+)`", match.group(2)):
                assert unit not in floors, f"{unit} stands on two floors of {DOC.name}"
                floors[unit] = int(match.group(1))
    return floors


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The lab's modules ``path`` imports, anywhere in the file (``from mlops_lab import x`` names module x)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mlops_lab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "mlops_lab":
                continue
            submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself (not its submodules)
                found.add(base)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_stands_on_one_floor() -> None:
    floors = floors_from_doc(DOC.read_text())
    units = {unit_of(name) for name in import_graph()}
    assert sorted(units - set(floors)) == [], f"modules on no floor of {DOC.name}: add them to its table"
    assert sorted(set(floors) - units) == [], f"{DOC.name} names modules that do not exist"


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    floors = floors_from_doc(DOC.read_text())
    upward = [
        f"{importer} (floor {floors[unit_of(importer)]}) imports {imported} (floor {floors[unit_of(imported)]})"
        for importer, imported_modules in sorted(import_graph().items())
        for imported in sorted(imported_modules)
        if floors.get(unit_of(imported), -1) > floors.get(unit_of(importer), 99)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_checks_see_a_violation() -> None:
    """The two checks are not vacuous: an upward import and a cycle drawn by hand are both found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    floors = floors_from_doc(DOC.read_text())
    assert floors["errors"] == 0 and floors["ops"] > floors["services"] > floors["emulator"] > floors["aws"]
    graph = import_graph()
    assert "mlops_lab.settings" in graph["mlops_lab.aws"] or graph["mlops_lab.aws"] == set()
    assert "mlops_lab.services" in graph["mlops_lab.ops"], "the graph must see ops importing services"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_why(path: Path) -> None:
    """No module over ~400 lines without a reason in its docstring ("Why this is one module of N lines: ...")."""
    lines = len(path.read_text().splitlines())
    if lines <= 420:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "one module" in docstring.lower(), f"{path.name} has {lines} lines and its docstring does not say why"
