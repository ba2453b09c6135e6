// The runs page: the table is rebuilt from /api/runs every two seconds. Text goes in by textContent only.
"use strict";

function fmt(v, sign) {
  if (v === null || v === undefined) return "-";
  const s = Number(v).toPrecision(6).replace(/\.?0+(e|$)/, "$1");
  return sign && v > 0 ? "+" + s : s;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

async function refresh() {
  const res = await fetch("/api/runs", {credentials: "same-origin"});
  if (!res.ok) return;
  const runs = await res.json();
  const body = document.querySelector("#runs tbody");
  const rows = runs.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.tag = r.tag;
    const a = document.createElement("a");
    a.href = "/run/" + encodeURIComponent(r.tag);
    a.textContent = r.tag;
    cell(tr, "", "text").appendChild(a);
    cell(tr, r.agent, "text");
    cell(tr, r.status, "status-" + r.status);
    cell(tr, String(r.experiments));
    cell(tr, r.left === null ? "-" : String(r.left));
    cell(tr, fmt(r.best));
    cell(tr, fmt(r.gain, true));
    cell(tr, Math.round(r.elapsed_s) + " s");
    cell(tr, r.current ? "#" + r.current.n + ": " + Math.round(r.current.elapsed_s) + " s" +
      (r.budget_s ? " / " + r.budget_s + " s" : "") : "");
    return tr;
  });
  if (rows.length) body.replaceChildren(...rows);
}

setInterval(refresh, 2000);
