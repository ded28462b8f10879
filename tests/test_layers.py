"""
The package's layers, as ARCHITECTURE.md draws them: a module imports from its own
package or from a layer below, never from one above or beside it, and no chain of
imports comes back to where it started. Every import counts, inside functions and under
C{TYPE_CHECKING} too: a type is a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "modeltrack"

#: Top to bottom. Packages in one layer may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ops", "cli"),
    ("web", "admin"),
    ("observe",),
    ("accounting",),
    ("controls",),
    ("store",),
    ("providers",),
    ("pricing",),
    ("failures", "__init__"),
)
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """
    The package's own modules that C{module} imports, by their dotted names.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base not in modules:
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    found.discard(module)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_every_package_has_a_layer() -> None:
    assert {_package(name) for name in _modules()} <= set(RANK)


def test_imports_run_down_the_layers() -> None:
    upward = []
    for module, imported in _graph().items():
        for target in imported:
            source, destination = _package(module), _package(target)
            if source != destination and RANK[destination] <= RANK[source]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    """
    The check itself: an import from a layer above is found, relative ones too.
    """
    modules = {"modeltrack.store.index": tmp_path / "index.py", "modeltrack.web.proxy": tmp_path / "proxy.py",
               "modeltrack.store": tmp_path / "__init__.py", "modeltrack.store.journal": tmp_path / "journal.py"}
    (tmp_path / "index.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from modeltrack.web.proxy import Exchange\n"
        "from . import journal\n"
    )
    found = _imports(tmp_path / "index.py", "modeltrack.store.index", modules)
    assert found == {"modeltrack.web.proxy", "modeltrack.store.journal"}


def test_no_module_is_over_500_lines_and_the_exchange_is_its_phases() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
    assert sizes["web/proxy.py"] <= 350
