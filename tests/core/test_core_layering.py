"""The shape of _core, enforced: no module writes another object's private attribute.

(No import circle and nothing in _core importing spooler.py: tests/test_layering.py,
which reads the whole tree's imports.)"""

from __future__ import annotations

import ast
from pathlib import Path

import spoolbox._core

CORE = Path(spoolbox._core.__file__).parent


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
