// spoolbox's web page: the status table live over Server-Sent Events, Send/Receive
// with progress and Cancel, the queue, the inbox, the reports, the scheduler.
// Everything a message or a row holds goes into textContent: never live HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
// This node (the one serving the page): its rows have Send/Receive; the others' are shown.
const LOCAL = document.querySelector('meta[name="node"]').content;
const GONE = "Gone";
const BITS = [
  ["AVAILABLE", "online"], ["OFFLINE", "offline"], ["FAILURE", "failure"],
  ["OUTBOUND_ENABLED", "sends"], ["INBOUND_ENABLED", "receives"],
  ["OUTBOUND_ACTIVE", "sending"], ["INBOUND_ACTIVE", "receiving"],
  ["OUTBOUND_FLUSH", "outbound flush"], ["INBOUND_FLUSH", "inbound flush"],
  ["REMOTE_ACCESS", "remote access"],
];
let currentFlush = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, opts);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const why = body.error ? body.error.message : response.statusText;
    throw new Error(why);
  }
  return body;
}

// -- the status table -----------------------------------------------------------------
function words(bits) {
  const found = BITS.filter(([bit]) => bits.includes(bit)).map(([, word]) => word);
  return found.length ? found.join(", ") : "offline";
}

function counterText(counters) {
  return Object.keys(counters).sort().filter((k) => counters[k])
    .map((k) => k + "=" + counters[k]).join(" ");
}

function flushButtons(cell, name) {
  if (cell.childElementCount) return;
  for (const [mode, label] of [["upload", "Send"], ["download", "Receive"], ["both", "Both"]]) {
    const button = el("button", label);
    button.type = "button";
    button.dataset.mode = mode;
    button.dataset.transport = name;
    button.addEventListener("click", () => startFlush(mode, name));
    cell.appendChild(button);
  }
}

function findRow(node, name) {
  const body = document.querySelector("#status tbody");
  for (const tr of body.rows) if (tr.dataset.node === node && tr.dataset.row === name) return tr;
  return null;
}

// A row is keyed by its node and its name (several nodes may share one store); this
// node's rows come first, then the other nodes'.
function rowElement(node, name) {
  const found = findRow(node, name);
  if (found) return found;
  const body = document.querySelector("#status tbody");
  const tr = document.createElement("tr");
  tr.dataset.node = node;
  tr.dataset.row = name;
  for (const cls of ["node", "name", "status", "bits", "progress", "counters", "slices", "detail", "actions"]) {
    tr.appendChild(el("td", null, cls));
  }
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  bar.hidden = true;
  const cell = tr.querySelector(".progress");
  cell.appendChild(bar);
  cell.appendChild(el("span", "", "progress-text"));
  const before = node === LOCAL
    ? Array.from(body.rows).find((other) => other.dataset.node !== LOCAL) : null;
  body.insertBefore(tr, before || null);
  return tr;
}

function showRow(row) {
  const node = row.node || LOCAL;
  const tr = rowElement(node, row.name);
  const gone = row.status === GONE;
  tr.classList.toggle("gone", gone);
  tr.querySelector(".node").textContent = node;
  tr.querySelector(".name").textContent = row.name;
  tr.querySelector(".status").textContent = row.status;
  tr.querySelector(".bits").textContent = gone ? "" : words(row.status_bits || []);
  const counters = row.counters || {};
  tr.querySelector(".counters").textContent = counterText(counters);
  tr.querySelector(".slices").textContent = (counters.slices || 0) + " / " + (counters.slow_slices || 0);
  tr.querySelector(".detail").textContent = row.detail || "";
  const progress = row.progress;
  const bar = tr.querySelector("progress");
  if (gone) bar.hidden = true;
  if (!progress) {
    tr.querySelector(".progress-text").textContent = "";
  } else {
    bar.hidden = false;
    let percent = progress.percent;
    if (percent === null || percent === undefined) {
      percent = progress.total ? (100 * progress.done) / progress.total : null;
    }
    if (percent !== null) bar.value = percent;
    tr.querySelector(".progress-text").textContent = progress.text || "";
  }
  if (node === LOCAL && row.resource_type === "transport_provider") {
    flushButtons(tr.querySelector(".actions"), row.name);
  }
  tr.dataset.updates = String(Number(tr.dataset.updates || 0) + 1);
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live"; });
  source.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    for (const row of data.rows) showRow(row);
    for (const gone of data.removed) {
      const tr = findRow(gone.node, gone.name);
      if (tr) tr.remove();
    }
  });
  source.addEventListener("reload", () => { source.close(); window.location.reload(); });
  source.addEventListener("bye", () => { source.close(); live.textContent = "stopped"; });
}

// -- Send/Receive ---------------------------------------------------------------------
async function startFlush(mode, transport) {
  const result = document.getElementById("flush-result");
  try {
    const started = await api("/api/flush", {
      method: "POST", body: JSON.stringify({ mode: mode, transport: transport || null }),
    });
    currentFlush = started.id;
    document.getElementById("flush-cancel").disabled = false;
    result.textContent = "flushing " + started.transports.join(", ") + "…";
    for (const name of started.transports) {
      const bar = rowElement(LOCAL, name).querySelector("progress");
      bar.value = 0;
      bar.hidden = false;
    }
    watchFlush(started.id);
  } catch (error) {
    result.textContent = "Send/Receive refused: " + error.message;
  }
}

async function watchFlush(id) {
  const state = await api("/api/flush/" + id);
  if (state.running) {
    setTimeout(() => watchFlush(id), 250);
    return;
  }
  if (currentFlush === id) {
    currentFlush = null;
    document.getElementById("flush-cancel").disabled = true;
  }
  const report = state.report;
  const totals = report.totals || {};
  let text = "recipients delivered " + (totals.delivered || 0) + ", deferred "
    + (totals.deferred || 0) + ", failed " + (totals.failed || 0)
    + "; messages still queued " + (totals.queued || 0);
  if (report.cancelled) text += " (cancelled)";
  if (report.timed_out) text += " (timed out)";
  for (const result of report.results || []) {
    if (result.held) text += "; " + result.transport + ": " + result.held;
  }
  document.getElementById("flush-result").textContent = "Send/Receive done: " + text;
  for (const result of report.results || []) {
    const bar = rowElement(LOCAL, result.transport).querySelector("progress");
    if (!report.cancelled && !result.error) bar.value = 100;
  }
  loadQueue();
  loadInbox();
}

// -- the queue ------------------------------------------------------------------------
async function loadQueue() {
  const form = document.getElementById("queue-filter");
  const params = new URLSearchParams();
  for (const name of ["state", "transport", "recipient"]) {
    const value = form.elements[name].value;
    if (value) params.append(name, value);
  }
  const list = await api("/api/queue?" + params.toString());
  const body = document.querySelector("#queue tbody");
  body.replaceChildren();
  for (const message of list.messages) {
    const tr = document.createElement("tr");
    tr.dataset.id = message.id;
    const link = el("a", message.short_id || message.id);
    link.href = "#";
    link.addEventListener("click", (event) => { event.preventDefault(); showMessage(message.id); });
    const idCell = el("td");
    idCell.appendChild(link);
    tr.appendChild(idCell);
    tr.appendChild(el("td", message.state, "state"));
    tr.appendChild(el("td", message.sender || "<>"));
    tr.appendChild(el("td", message.subject, "subject"));
    tr.appendChild(el("td", message.recipients.map((r) => r.address + " (" + r.state + ")").join(", ")));
    const actions = el("td");
    for (const action of ["hold", "release", "retry", "cancel"]) {
      const button = el("button", action);
      button.type = "button";
      button.dataset.action = action;
      button.addEventListener("click", () => queueAction(message.id, action));
      actions.appendChild(button);
    }
    tr.appendChild(actions);
    body.appendChild(tr);
  }
  document.getElementById("queue-total").textContent = list.total + " message(s)";
}

async function queueAction(id, action) {
  if (action === "cancel" && !window.confirm("Cancel message " + id + "? It will not be sent.")) {
    return;
  }
  try {
    await api("/api/queue/" + encodeURIComponent(id) + "/" + action, { method: "POST", body: "{}" });
  } catch (error) {
    window.alert(action + " refused: " + error.message);
  }
  await loadQueue();
}

async function showMessage(id) {
  const message = await api("/api/queue/" + encodeURIComponent(id));
  const box = document.getElementById("message-detail");
  box.querySelector(".id").textContent = id;
  const body = box.querySelector("tbody");
  body.replaceChildren();
  for (const r of message.recipients) {
    const tr = document.createElement("tr");
    // RFC 3461 ORCPT: the address as the first system had it (reports name it too)
    const address = r.original ? r.address + " (originally " + r.original + ")" : r.address;
    for (const value of [r.index, address, r.state, r.route || "", r.attempts,
      r.diagnostic || r.status || "", when(r.retry_at)]) {
      tr.appendChild(el("td", value));
    }
    body.appendChild(tr);
  }
  box.hidden = false;
}

// -- the inbox and the reports ----------------------------------------------------------
async function loadInbox() {
  const list = await api("/api/inbox");
  const body = document.querySelector("#inbox tbody");
  body.replaceChildren();
  for (const entry of list.messages) {
    const tr = document.createElement("tr");
    tr.dataset.id = entry.id;
    const link = el("a", entry.id.slice(0, 12));
    link.href = "#";
    link.addEventListener("click", (event) => { event.preventDefault(); showInbox(entry.id); });
    const cell = el("td");
    cell.appendChild(link);
    tr.appendChild(cell);
    tr.appendChild(el("td", when(entry.received_at)));
    tr.appendChild(el("td", entry.sender || "<>"));
    tr.appendChild(el("td", entry.subject, "subject"));
    tr.appendChild(el("td", entry.size));
    body.appendChild(tr);
  }
  loadReports();
}

async function showInbox(id) {
  const data = await api("/api/inbox/" + encodeURIComponent(id));
  const box = document.getElementById("inbox-message");
  const headers = box.querySelector(".headers");
  headers.replaceChildren();
  for (const header of data.view.headers) {
    headers.appendChild(el("dt", header.name));
    headers.appendChild(el("dd", header.value));
  }
  box.querySelector(".body").textContent = data.view.text;
  const list = box.querySelector(".attachments");
  list.replaceChildren();
  for (const part of data.view.attachments) {
    const item = el("li");
    const link = el("a", part.filename + " (" + part.content_type + ", " + part.size + " bytes)");
    link.href = "/api/inbox/" + encodeURIComponent(id) + "/attachments/" + part.index;
    link.download = part.filename;
    item.appendChild(link);
    list.appendChild(item);
  }
  box.hidden = false;
}

async function loadReports() {
  const data = await api("/api/reports");
  const body = document.querySelector("#reports tbody");
  body.replaceChildren();
  for (const entry of data.inbox) {
    const tr = document.createElement("tr");
    const link = el("a", entry.id.slice(0, 12));
    link.href = "#";
    link.addEventListener("click", (event) => { event.preventDefault(); showInbox(entry.id); });
    const cell = el("td");
    cell.appendChild(link);
    tr.appendChild(cell);
    for (const value of [when(entry.received_at), entry.recipients.join(", "), entry.subject,
      "inbox"]) tr.appendChild(el("td", value));
    body.appendChild(tr);
  }
  for (const message of data.sent) {
    const tr = document.createElement("tr");
    for (const value of [message.id.slice(0, 12), when(message.submitted_at),
      message.recipients.map((r) => r.address).join(", "), message.subject, message.state]) {
      tr.appendChild(el("td", value));
    }
    body.appendChild(tr);
  }
}

// -- the scheduler --------------------------------------------------------------------
function ms(seconds) {
  return seconds === null || seconds === undefined ? "–" : (seconds * 1000).toFixed(1) + " ms";
}

async function loadScheduler() {
  const data = await api("/api/scheduler");
  const list = document.getElementById("scheduler");
  list.replaceChildren();
  const s = data.scheduler;
  const lag = data.loop_lag;
  for (const [name, value] of [
    ["loop lag (latest / p99 / max)", ms(lag.latest) + " / " + ms(lag.p99) + " / " + ms(lag.max)],
    ["slices", s.slices], ["slow slices (over " + ms(s.budget) + ")", s.overruns],
    ["longest slice", ms(s.longest)], ["watchdog stalls", s.stalls],
    ["longest stall", ms(s.longest_stall)],
  ]) {
    list.appendChild(el("dt", name));
    list.appendChild(el("dd", value));
  }
  const body = document.querySelector("#stalls tbody");
  body.replaceChildren();
  for (const stall of data.stalls) {
    const tr = document.createElement("tr");
    tr.appendChild(el("td", stall.transport));
    tr.appendChild(el("td", (stall.seconds * 1000).toFixed(0)));
    body.appendChild(tr);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("flush-all").addEventListener("click", () => startFlush("both", null));
  document.getElementById("flush-cancel").addEventListener("click", async () => {
    if (currentFlush) await api("/api/flush/" + currentFlush + "/cancel", { method: "POST", body: "{}" });
  });
  document.getElementById("queue-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadQueue();
  });
  connect();
  loadQueue();
  loadInbox();
  loadScheduler();
  setInterval(loadScheduler, 2000);
  setInterval(loadQueue, 5000);
});
