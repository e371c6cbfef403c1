"""The layering rule of docs/design.md, enforced: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import spoolbox

ROOT = Path(spoolbox.__file__).parent

#: package -> spoolbox packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "routing": set(),
    "contract": {"model"},
    "status": {"model"},
    "store": {"model"},
    "reports": {"model"},
    "transports": {"contract", "model", "smtp"},
    "ingress": {"model", "smtp"},
    "smtp": set(),
}


def _imports(path: Path, package: str) -> set[str]:
    """The top-level spoolbox packages a module imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT).parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "spoolbox" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "spoolbox" and len(parts) > 1:
                    found.add(parts[1])
            else:
                # Resolve a relative import against the module's own location.
                base = list(rel[:-1])
                up = node.level - 1
                target = base[: len(base) - up] if up else base
                mod = (node.module or "").split(".") if node.module else []
                full = target + mod
                if full:
                    found.add(full[0])
    found.discard(package)
    return found


def test_each_layer_imports_only_what_it_may() -> None:
    problems = []
    checked = 0
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            checked += 1
            bad = _imports(path, package) - allowed
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert checked > 15
    assert problems == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = ROOT / "model" / "address.py"
    assert "model" not in _imports(bad, "model")
    assert _imports(ROOT / "_core" / "hosts" / "outbound.py", "_core") >= {
        "contract",
        "model",
        "store",
    }
