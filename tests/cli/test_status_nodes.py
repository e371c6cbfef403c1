"""``spoolbox status`` with several nodes: a node column when rows of more than one
node are shown, and ``node/name`` for another node's rows in the plain watch lines."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from spoolbox.cli.status_cmds import status_line, status_table


def _row(node: str, name: str, status: str = "Available") -> dict[str, Any]:
    return {"node": node, "name": name, "status": status, "progress": None, "counters": {}}


def _text(rows: list[dict[str, Any]]) -> str:
    console = Console(width=200, record=True)
    console.print(status_table(rows))
    return console.export_text()


def test_a_node_column_only_with_several_nodes() -> None:
    one = _text([_row("mail1", "spooler"), _row("mail1", "relay")])
    assert "node" not in one.splitlines()[1] + one.splitlines()[2]
    two = _text([_row("mail1", "spooler"), _row("mail2", "spooler", "Gone")])
    header = next(line for line in two.splitlines() if "name" in line)
    assert header.split("┃")[1].strip() == "node"
    assert any("mail2" in line and "Gone" in line for line in two.splitlines())


def test_plain_lines_name_other_nodes() -> None:
    assert status_line(_row("mail1", "relay"), "mail1") == "relay: Available"
    assert status_line(_row("mail2", "relay", "Gone"), "mail1") == "mail2/relay: Gone"
