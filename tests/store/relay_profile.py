"""The profile text the daemon tests write: a node relaying its ``SMTP:`` recipients to
a test's SMTP server on loopback, on the store the test gives.  Shared by the
delivery worker tests (:mod:`workers_kit`), the PostgreSQL daemon tests and the
multi-node tests (``tests/cluster/nodes.py``)."""

from __future__ import annotations

from pathlib import Path


def relay_profile(
    node: str,
    store: str,
    port: int,
    *,
    policy: str = "",
    options: str = "",
    tail: str = "",
) -> str:
    """The profile of node ``node``: ``[store]`` holding ``store`` (the table's body),
    ``[policy]`` holding ``policy`` when given, and the ``relay`` transport (SMTP, no
    TLS) to ``127.0.0.1:port`` with ``options`` added to its options; ``tail`` (more
    tables) at the end."""
    policy_table = f"\n[policy]\n{policy}\n" if policy else ""
    return f"""
data_dir = "."
node = "{node}"

[store]
{store}
{policy_table}
[identities]
senders = ["SMTP:postmaster@example.org"]

[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "127.0.0.1"
port = {port}
tls = "none"
{options}
{tail}
"""


def write_relay_profile(directory: Path, node: str, store: str, port: int, **keys: str) -> Path:
    """:func:`relay_profile` written to ``directory/spoolbox.toml`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spoolbox.toml"
    path.write_text(relay_profile(node, store, port, **keys))
    return path
