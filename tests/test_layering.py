"""The layering rule of docs/design.md, enforced on the whole tree.

Two checks, both from the source (``ast``), so that an import hidden under
``TYPE_CHECKING`` or deferred into a function counts like any other:

* every module imports only the spoolbox packages its package may import (``ALLOWED``);
* no module imports itself through others: the module import graph has no circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import spoolbox

ROOT = Path(spoolbox.__file__).parent

_LIBRARY = {"model", "routing", "contract", "status", "store", "reports", "smtp"}

#: package (or top-level module) -> spoolbox packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    # the pure floor
    "model": set(),
    "routing": set(),
    "smtp": set(),
    "contract": {"model"},
    "status": {"model"},
    "store": {"model", "_private"},
    "reports": {"model"},
    # transports see only the public contract (and the shared SMTP machines)
    "transports": {"contract", "model", "smtp"},
    # the built-in spooler hooks, like transports, see only the public contract
    "hooks": {"contract", "model"},
    "ingress": {"model", "smtp"},
    # the scheduler
    "_core": {"model", "routing", "contract", "status", "store", "reports"},
    # the public test kit runs a real spooler
    "testing": {"_core", "model", "routing", "contract", "status", "store", "reports"},
    # the package's face (spoolbox/__init__.py): the library's public names, never the program
    "__init__": _LIBRARY | {"_core"},
    # the program, one package per job ("__init__" is the face above)
    "profile": _LIBRARY | {"__init__", "_core", "_private", "ingress", "transports"},
    "api": _LIBRARY | {"__init__", "_core", "_private", "profile"},
    "daemon": _LIBRARY
    | {"__init__", "_core", "_private", "profile", "api", "ingress", "transports"},
    # the web page: the local API's operations (daemon/api_ops.py) over HTTP
    "web": _LIBRARY | {"__init__", "_core", "_private", "profile", "api", "daemon"},
    "cli": _LIBRARY
    | {"__init__", "_core", "_private", "profile", "api", "daemon", "ingress", "web"},
    "demo": _LIBRARY
    | {"__init__", "_core", "_private", "profile", "api", "ingress", "transports", "testing"},
    # spoolbox.django: Django's e-mail backend, a client of the local API (and the store)
    "django": _LIBRARY | {"profile", "api"},
    # spoolbox.client: the old import path of api/client.py, a re-export
    "client": {"api"},
    # the console script (spoolbox/__main__.py): the command line, or how to install it
    "__main__": {"cli"},
    # leaves
    "_private": set(),
    # frozen values made quickly (spoolbox._quick.quick_init): any layer's values
    "_quick": set(),
}
#: what every layer may import besides: leaves of no layer's own
EVERYWHERE: set[str] = {"_quick"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``spoolbox.x.y``; packages by their
    package name, not ``__init__``)."""
    found: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(["spoolbox", *parts])] = path
    return found


def _imported(path: Path, name: str, modules: Mapping[str, Path]) -> Iterator[str]:
    """The spoolbox modules one module imports (resolved to modules that exist)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("spoolbox"):
                    yield _nearest(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("spoolbox"):
                continue
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub when there is one
                sub = f"{target}.{alias.name}"
                yield sub if sub in modules else _nearest(target, modules)


def _nearest(dotted: str, modules: Mapping[str, Path]) -> str:
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imported(path, name, modules)) - {name} for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # iterative DFS: the graph is a few hundred modules but recursion depth is not ours
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_every_package_has_a_rule() -> None:
    layers = {_layer(m) for m in _modules()}
    assert layers - set(ALLOWED) == set(), "a new package needs its line in ALLOWED"


def test_the_library_never_imports_the_program() -> None:
    program = {"profile", "api", "daemon", "cli", "demo", "client"}
    for layer in _LIBRARY | {"_core", "transports", "ingress", "testing", "__init__"}:
        assert ALLOWED[layer] & program == set(), layer


def test_each_layer_imports_only_what_it_may() -> None:
    problems = []
    for module, imports in sorted(_graph().items()):
        layer = _layer(module)
        bad = {_layer(i) for i in imports} - ALLOWED[layer] - EVERYWHERE - {layer}
        if bad:
            problems.append(f"{module} imports {sorted(bad)}")
    assert problems == []


def test_what_every_layer_may_import_imports_nothing_of_spoolbox() -> None:
    assert all(ALLOWED[leaf] == set() for leaf in EVERYWHERE)


def test_the_rules_themselves_have_no_circle() -> None:
    assert _circles({k: set(v) for k, v in ALLOWED.items()}) == []


def test_no_module_imports_itself_through_others() -> None:
    assert _circles(_graph()) == []


def test_nothing_in_core_imports_the_spooler() -> None:
    """Hosts, flushes and the rest of _core see the spooler through _core/runtime.py."""
    graph = _graph()
    core = [m for m in graph if m == "spoolbox._core" or m.startswith("spoolbox._core.")]
    assert len(core) > 20
    assert [m for m in core if "spoolbox._core.spooler" in graph[m]] == []


# -- the checker checks ---------------------------------------------------------------
def test_the_checker_sees_hidden_and_relative_imports() -> None:
    graph = _graph()
    assert "spoolbox.model" in graph["spoolbox.contract"]
    # a relative ``from . import x`` resolves to the sibling module
    assert any(i.startswith("spoolbox._core.") for i in graph["spoolbox._core.spooler"])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"a"}}, []),
    ],
)
def test_the_circle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _circles(graph) == expected


def test_a_deferred_import_counts(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from spoolbox.model import Address\n"
        "def f():\n    from spoolbox import routing\n"
    )
    modules = _modules()
    found = set(_imported(source, "spoolbox.x.m", modules))
    assert found == {"spoolbox.model", "spoolbox.routing"}
