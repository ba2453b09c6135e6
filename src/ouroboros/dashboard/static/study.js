// The study page's chart: each finished run's best-so-far curve, coloured by condition.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

function add(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  parent.appendChild(e);
  return e;
}

async function draw() {
  const svg = document.getElementById("study-chart");
  if (!svg) return;
  const res = await fetch("/api/study", {credentials: "same-origin"});
  if (!res.ok) return;
  const data = await res.json();
  const curves = data.curves.filter((c) => c.best.length);
  const vals = curves.flatMap((c) => c.best);
  if (!vals.length) return;
  const W = 900, H = 260, L = 64, R = 12, T = 10, B = 26;
  const log = vals.every((v) => v > 0) && Math.max(...vals) / Math.min(...vals) > 100;
  const f = log ? Math.log10 : (v) => v;
  let lo = Math.min(...vals.map(f)), hi = Math.max(...vals.map(f));
  if (hi === lo) { hi += 1; lo -= 1; }
  const maxN = Math.max(1, ...curves.map((c) => c.best.length - 1));
  const x = (i) => L + (i / maxN) * (W - L - R);
  const y = (v) => T + (1 - (f(v) - lo) / (hi - lo)) * (H - T - B);
  add("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}, svg);
  add("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}, svg);
  for (const v of [hi, lo]) {
    add("text", {x: L - 4, y: y(log ? 10 ** v : v) + 4, "text-anchor": "end"}, svg).textContent =
      Number(log ? 10 ** v : v).toPrecision(4);
  }
  add("text", {x: (L + W) / 2, y: H - 6, "text-anchor": "middle"}, svg).textContent =
    "experiment" + (log ? " (log scale)" : "");
  const legend = document.getElementById("study-legend");
  legend.replaceChildren();
  data.conditions.forEach((cond, i) => {
    const colour = COLOURS[i % COLOURS.length];
    for (const c of curves.filter((c) => c.condition === cond)) {
      const line = add("polyline", {points: c.best.map((v, k) => x(k).toFixed(1) + "," + y(v).toFixed(1)).join(" "),
        fill: "none", "stroke-width": 1.5, "stroke-opacity": 0.8}, svg);
      line.style.stroke = colour;
      add("title", {}, line).textContent = c.tag;
    }
    const key = document.createElement("span");
    key.className = "line";
    key.style.background = colour;
    legend.append(key, cond + " ");
  });
}

draw();
