// The run page: the table and the chart from /api/run/<tag>, then live from server-sent events.
// Everything the agent, the run or the evaluator wrote is set with textContent, never as HTML.
"use strict";

const TAG = document.body.dataset.tag;
const MINIMIZE = document.body.dataset.direction !== "maximize";
const BASE = "/api/run/" + encodeURIComponent(TAG);
const CSRF = document.querySelector('meta[name="ouroboros-csrf"]').content;
const SVG = "http://www.w3.org/2000/svg";
const rows = new Map();   // n -> experiment row
let sortKey = "n", sortAsc = false, selected = null, scheduled = false, since = 0;

function fmt(v, sign) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  const s = Number(v).toPrecision(6).replace(/\.?0+(e|$)/, "$1");
  return sign && v > 0 ? "+" + s : s;
}

function baseline() {
  const b = rows.get(0);
  return b && b.status === "keep" ? b.metric : null;
}

function gainOf(r, base) {
  if (r.metric === null || base === null) return null;
  return MINIMIZE ? base - r.metric : r.metric - base;
}

function upsert(table) {
  const cols = table.columns;
  for (const values of table.rows) {
    const r = {};
    cols.forEach((c, i) => { r[c] = values[i]; });
    rows.set(r.n, r);
    if (r.finished && r.finished > since) since = r.finished;
  }
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; renderTable(); renderChart(); });
  }
}

// -- the table ----------------------------------------------------------------------------------
function shown() {
  const on = new Set([...document.querySelectorAll("#filters input:checked")].map((i) => i.value));
  const base = baseline();
  const list = [...rows.values()].filter((r) => on.has(r.status)).map((r) => ({...r, gain: gainOf(r, base)}));
  list.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
    return sortAsc ? c : -c;
  });
  return list;
}

function td(tr, text, cls) {
  const el = document.createElement("td");
  el.textContent = text;
  if (cls) el.className = cls;
  tr.appendChild(el);
}

function renderTable() {
  const list = shown();
  const out = list.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.n = r.n;
    tr.id = "exp-" + r.n;
    if (r.n === selected) tr.className = "selected";
    td(tr, String(r.n));
    td(tr, r.status, r.status);
    td(tr, fmt(r.metric));
    td(tr, fmt(r.gain, true));
    td(tr, r.wall_s ? r.wall_s.toFixed(1) + " s" : "");
    td(tr, r.model || r.agent || "", "text");
    td(tr, r.cost_usd ? "$" + r.cost_usd.toFixed(4) : "");
    td(tr, r.description || "", "desc");
    return tr;
  });
  document.querySelector("#exps tbody").replaceChildren(...out);
  document.getElementById("count").textContent = list.length + " of " + rows.size + " shown";
}

document.querySelector("#exps thead").addEventListener("click", (ev) => {
  const th = ev.target.closest("th[data-key]");
  if (!th) return;
  sortAsc = th.dataset.key === sortKey ? !sortAsc : th.dataset.key !== "n";
  sortKey = th.dataset.key;
  document.querySelectorAll("#exps th").forEach((h) => h.classList.remove("sorted", "asc"));
  th.classList.add("sorted");
  if (sortAsc) th.classList.add("asc");
  renderTable();
});
document.getElementById("filters").addEventListener("change", renderTable);
document.querySelector("#exps tbody").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr[data-n]");
  if (tr) showExperiment(Number(tr.dataset.n));
});

// -- the chart: attempts by verdict, the best-so-far line ---------------------------------------
function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  parent.appendChild(e);
  return e;
}

function renderChart() {
  const svg = document.getElementById("chart");
  const list = [...rows.values()].filter((r) => r.status !== "running").sort((a, b) => a.n - b.n);
  const vals = list.filter((r) => r.metric !== null && Number.isFinite(r.metric)).map((r) => r.metric);
  svg.replaceChildren();
  if (!vals.length) return;
  const W = 900, H = 280, L = 64, R = 12, T = 12, B = 30;
  const log = vals.every((v) => v > 0) && Math.max(...vals) / Math.min(...vals) > 100;
  const f = log ? Math.log10 : (v) => v;
  let lo = Math.min(...vals.map(f)), hi = Math.max(...vals.map(f));
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const maxN = Math.max(1, ...list.map((r) => r.n));
  const x = (n) => L + (n / maxN) * (W - L - R);
  const y = (v) => T + (1 - (f(v) - lo) / (hi - lo)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const yy = T + i * (H - T - B) / 4, v = hi - i * (hi - lo) / 4;
    el("line", {x1: L, x2: W - R, y1: yy, y2: yy, class: "grid"}, svg);
    el("text", {x: L - 4, y: yy + 4, "text-anchor": "end"}, svg).textContent = fmt(log ? 10 ** v : v);
  }
  el("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}, svg);
  el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}, svg);
  el("text", {x: (L + W) / 2, y: H - 6, "text-anchor": "middle"}, svg).textContent =
    "experiment (" + Math.max(list.length - 1, 0) + " finished after the baseline)" + (log ? ", log scale" : "");
  let best = null, pts = [];
  for (const r of list) {
    const ok = r.metric !== null && Number.isFinite(r.metric);
    const before = best;
    if (r.status === "keep" && ok && (best === null || (MINIMIZE ? r.metric < best : r.metric > best))) best = r.metric;
    if (before !== null && before !== best) pts.push(x(r.n).toFixed(1) + "," + y(before).toFixed(1));  // a step
    if (best !== null) pts.push(x(r.n).toFixed(1) + "," + y(best).toFixed(1));
  }
  el("polyline", {points: pts.join(" "), class: "best"}, svg);
  const dots = list.length > 2000 ? list.filter((r) => r.status !== "discard" || r.n % 4 === 0) : list;
  for (const r of dots) {
    const ok = r.metric !== null && Number.isFinite(r.metric);
    const c = el("circle", {cx: x(r.n).toFixed(1), cy: ok ? y(r.metric).toFixed(1) : H - B - 3, r: 3.5,
      class: r.status}, svg);
    el("title", {}, c).textContent = "#" + r.n + " " + r.status + " " + fmt(r.metric);
  }
}

// -- one experiment ------------------------------------------------------------------------------
function fillDiff(pre, text) {
  pre.replaceChildren();
  if (!text) { pre.textContent = "(no diff)"; return; }
  for (const line of text.split("\n")) {
    const span = document.createElement("span");
    span.className = line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") ? "meta"
      : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
    span.textContent = line || " ";
    pre.appendChild(span);
  }
}

async function showExperiment(n) {
  selected = n;
  document.querySelectorAll("#exps tr.selected").forEach((t) => t.classList.remove("selected"));
  const tr = document.getElementById("exp-" + n);
  if (tr) tr.classList.add("selected");
  const res = await fetch(BASE + "/exp/" + n, {credentials: "same-origin"});
  if (!res.ok) return;
  const e = await res.json();
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("d-n", String(e.n));
  set("d-status", e.status);
  document.getElementById("d-status").className = "status-" + e.status;
  set("d-description", e.description || "");
  set("d-reason", e.reason ? "reason: " + e.reason : "");
  const guard = document.getElementById("d-guard");
  guard.hidden = !e.guard;
  guard.textContent = e.guard ? "guard: " + e.guard : "";
  fillDiff(document.getElementById("d-diff"), e.diff);
  set("d-metrics", JSON.stringify(e.metrics, null, 1));
  set("d-runlog", e.run_log ?? "(none)");
  set("d-evallog", e.eval_log ?? "(none)");
  set("d-agentlog", e.agent_log ?? "(none)");
  document.getElementById("detail").hidden = false;
}

// -- live ------------------------------------------------------------------------------------------
function summary(r) {
  const parts = [r.agent, r.status, r.experiments + " experiments" + (r.left !== null ? " (" + r.left + " left)" : ""),
    "best " + fmt(r.best) + " (" + fmt(r.gain, true) + " vs baseline " + fmt(r.baseline) + ")",
    Math.round(r.elapsed_s) + " s elapsed", "trust " + r.trust];
  if (r.current) parts.push("experiment " + r.current.n + " running " + Math.round(r.current.elapsed_s) + " s" +
    (r.budget_s ? " of " + r.budget_s + " s budget" : ""));
  document.getElementById("summary").textContent = parts.join(" · ");
}

async function start() {
  const res = await fetch(BASE, {credentials: "same-origin"});
  const data = await res.json();
  summary(data.run);
  upsert(data.table);
  const events = new EventSource(BASE + "/events?since=" + since);
  events.addEventListener("exps", (ev) => upsert(JSON.parse(ev.data)));
  events.addEventListener("run", (ev) => summary(JSON.parse(ev.data)));
  events.addEventListener("tail", (ev) => {
    const t = JSON.parse(ev.data);
    document.getElementById("tail-n").textContent = t.n === null ? "" : "#" + t.n;
    const pre = document.getElementById("tail");
    pre.textContent = t.n === null ? "(nothing running)" : t.text || "(no output yet)";
    pre.scrollTop = pre.scrollHeight;
  });
}

document.getElementById("save-guidance").addEventListener("click", async () => {
  const status = document.getElementById("guidance-status");
  const res = await fetch(BASE + "/guidance", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Ouroboros-CSRF": CSRF},
    body: JSON.stringify({text: document.getElementById("guidance").value}),
  });
  status.textContent = res.ok ? "saved: the next prompt reads it" : "not saved: " + (await res.text());
});

start();
