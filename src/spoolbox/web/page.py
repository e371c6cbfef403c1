"""The page: server-rendered HTML, every text escaped, no inline script or style.

The status table is rendered with the rows as they are, every node's (so the page
shows something before its script runs; a row is keyed by its node and its name,
and a gone node's rows have the class ``gone``); ``static/app.js`` then keeps it
live over Server-Sent Events and fills the queue, inbox, reports and scheduler
sections from the JSON endpoints, always through ``textContent``.  The CSRF token
the actions need, and this node's name, are in ``<meta>`` elements.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .._core.cluster_view import GONE

__all__ = ["BIT_WORDS", "bits_in_words", "render_page"]

#: PR_STATUS_CODE bits in words, in the order they are shown.
BIT_WORDS = (
    ("AVAILABLE", "online"),
    ("OFFLINE", "offline"),
    ("FAILURE", "failure"),
    ("OUTBOUND_ENABLED", "sends"),
    ("INBOUND_ENABLED", "receives"),
    ("OUTBOUND_ACTIVE", "sending"),
    ("INBOUND_ACTIVE", "receiving"),
    ("OUTBOUND_FLUSH", "outbound flush"),
    ("INBOUND_FLUSH", "inbound flush"),
    ("REMOTE_ACCESS", "remote access"),
)


def bits_in_words(bits: list[str]) -> str:
    words = [word for bit, word in BIT_WORDS if bit in bits]
    return ", ".join(words) if words else "offline"


def _counters(counters: dict[str, int]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(counters.items()) if value)


def _row(row: dict[str, Any]) -> str:
    name = escape(row["name"])
    node = escape(row.get("node") or "")
    gone = ' class="gone"' if row["status"] == GONE else ""
    progress = row.get("progress") or {}
    percent = progress.get("percent")
    value = ' value="0" hidden' if percent is None else f' value="{float(percent):.0f}"'
    counters = row.get("counters") or {}
    return (
        f'<tr data-node="{node}" data-row="{name}"{gone}><td class="node">{node}</td>'
        f'<td class="name">{name}</td>'
        f'<td class="status">{escape(row["status"])}</td>'
        f'<td class="bits">{escape(bits_in_words(row.get("status_bits") or []))}</td>'
        f'<td class="progress"><progress max="100"{value}></progress>'
        f'<span class="progress-text">{escape(progress.get("text") or "")}</span></td>'
        f'<td class="counters">{escape(_counters(counters))}</td>'
        f'<td class="slices">{counters.get("slices", 0)} / {counters.get("slow_slices", 0)}</td>'
        f'<td class="detail">{escape(row.get("detail") or "")}</td>'
        '<td class="actions"></td></tr>'
    )


_STATES = ("", "queued", "active", "deferred", "hold", "sent", "failed", "cancelled")


def render_page(*, rows: list[dict[str, Any]], csrf: str, node: str, version: str) -> str:
    """The whole page for ``rows`` (the ``status`` op's rows)."""
    options = "".join(
        f'<option value="{state}">{state or "unfinished"}</option>' for state in _STATES
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{escape(csrf)}">
<meta name="node" content="{escape(node)}">
<title>spoolbox on {escape(node)}</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header><h1>spoolbox <span class="node">{escape(node)}</span></h1>
<span class="version">{escape(version)}</span>
<span id="live" class="live">connecting…</span></header>
<main>
<section id="status-section">
<h2>Transports</h2>
<div class="toolbar">
<button type="button" id="flush-all" data-mode="both">Send/Receive all</button>
<button type="button" id="flush-cancel" disabled>Cancel</button>
<span id="flush-result" class="result"></span>
</div>
<table id="status"><thead><tr><th>node</th><th>name</th><th>status</th><th>status bits</th>
<th>progress</th><th>counters</th><th>slices / slow</th><th>last error</th>
<th>Send/Receive</th></tr></thead>
<tbody>{"".join(_row(row) for row in rows)}</tbody></table>
</section>
<section id="queue-section">
<h2>Queue</h2>
<form id="queue-filter" class="toolbar">
<label>state <select name="state">{options}</select></label>
<label>transport <input name="transport" size="12"></label>
<label>recipient <input name="recipient" size="20"></label>
<button type="submit">Filter</button>
<span id="queue-total" class="result"></span>
</form>
<table id="queue"><thead><tr><th>id</th><th>state</th><th>sender</th><th>subject</th>
<th>recipients</th><th>actions</th></tr></thead><tbody></tbody></table>
<div id="message-detail" hidden><h3>Recipients of <span class="id"></span></h3>
<table><thead><tr><th>#</th><th>address</th><th>state</th><th>route</th><th>attempts</th>
<th>last response</th><th>next retry</th></tr></thead><tbody></tbody></table></div>
</section>
<section id="inbox-section">
<h2>Inbox</h2>
<table id="inbox"><thead><tr><th>id</th><th>received</th><th>from</th><th>subject</th>
<th>size</th></tr></thead><tbody></tbody></table>
<article id="inbox-message" hidden>
<dl class="headers"></dl>
<pre class="body"></pre>
<ul class="attachments"></ul>
</article>
</section>
<section id="reports-section">
<h2>Delivery reports</h2>
<table id="reports"><thead><tr><th>id</th><th>when</th><th>to</th><th>subject</th>
<th>where</th></tr></thead><tbody></tbody></table>
</section>
<section id="scheduler-section">
<h2>Scheduler</h2>
<dl id="scheduler"></dl>
<h3>The watchdog's last warnings</h3>
<table id="stalls"><thead><tr><th>transport</th><th>held the loop (ms)</th></tr></thead>
<tbody></tbody></table>
</section>
</main>
</body>
</html>
"""
