"""The shape of _core, enforced: no import circle between its modules (imports under
TYPE_CHECKING and inside functions count too), nothing below the Spooler imports
spooler.py, and no module writes another object's private attribute."""

from __future__ import annotations

import ast
from pathlib import Path

import spoolbox._core

CORE = Path(spoolbox._core.__file__).parent
PACKAGE = "spoolbox._core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imports(path: Path, name: str | None = None) -> set[str]:
    """The _core modules ``path`` (the module ``name``) imports, wherever the import
    statement is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = (name or _module_name(path)).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package a relative import starts from
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from . import deadline`` imports a module, not a name.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith(PACKAGE + ".")}


def _graph() -> dict[str, set[str]]:
    paths = sorted(CORE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): (_imports(p) & modules) - {_module_name(p)} for p in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_circle_inside_core() -> None:
    graph = _graph()
    assert len(graph) > 20
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_type_checking_and_deferred_imports(tmp_path: Path) -> None:
    graph = _graph()
    # ``from .. import deadline`` in a subpackage, ``from .runtime import ...``
    assert f"{PACKAGE}.deadline" in graph[f"{PACKAGE}.hosts.base"]
    assert f"{PACKAGE}.runtime" in graph[f"{PACKAGE}.flush"]
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from spoolbox._core.spooler import Spooler\n"
        "def f():\n    from spoolbox._core import flush\n"
    )
    assert _imports(hidden, f"{PACKAGE}.hidden") >= {f"{PACKAGE}.spooler", f"{PACKAGE}.flush"}


def test_only_the_package_root_imports_the_spooler() -> None:
    importers = sorted(m for m, deps in _graph().items() if f"{PACKAGE}.spooler" in deps)
    assert importers == []


def _private_writes(source: str) -> list[str]:
    """Writes of a private attribute (``x._name = ...``) of an object other than
    ``self``, where the module does not define that attribute itself."""
    tree = ast.parse(source)
    attributes: list[tuple[int, ast.Attribute]] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        attributes += [(node.lineno, t) for t in targets if isinstance(t, ast.Attribute)]
    own = {t.attr for _, t in attributes if isinstance(t.value, ast.Name) and t.value.id == "self"}
    return [
        f"{line} {ast.unparse(t)}"
        for line, t in attributes
        if t.attr.startswith("_") and not t.attr.startswith("__") and t.attr not in own
    ]


def test_no_module_writes_another_objects_private_attribute() -> None:
    writes = [
        f"{path.relative_to(CORE)}:{write}"
        for path in sorted(CORE.rglob("*.py"))
        for write in _private_writes(path.read_text())
    ]
    assert writes == []


def test_the_private_write_finder_finds_one() -> None:
    source = (
        "class A:\n    def __init__(self):\n        self._mine = 1\n"
        "def f(a, b):\n    a._mine = 2\n    b._table = None\n"
    )
    assert _private_writes(source) == ["6 b._table"]
