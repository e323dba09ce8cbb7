// chyvae_ext explorer: plain JavaScript, no build step, no network beyond this server.
"use strict";

const state = { runs: [], link: true, animate: false, animDim: null, animPhase: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmt(v, digits = 3) {
  return typeof v === "number" ? (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(digits)) : String(v);
}

function setStatus(text) {
  document.getElementById("status").textContent = text || "";
}

// ---- decoding: the newest slider position wins, no queue of stale frames -------------------------------------
function requestDecode(run) {
  if (run.inFlight) { run.pending = true; return; }
  run.inFlight = true;
  run.pending = false;
  const z = run.z.map((v) => v.toFixed(5)).join(",");
  fetch(`/api/runs/${run.info.id}/decode?z=${z}`)
    .then((r) => (r.ok ? r.blob() : r.json().then((e) => Promise.reject(new Error(e.error)))))
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      const old = run.decoded.src;
      run.decoded.src = url;
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      run.decoded.dataset.frames = String(Number(run.decoded.dataset.frames || 0) + 1);
    })
    .catch((e) => setStatus(`run ${run.info.id}: ${e.message}`))
    .finally(() => {
      run.inFlight = false;
      if (run.pending) requestDecode(run);
      else if (run.traversalPending) requestTraversal(run);
    });
}

function requestTraversal(run) {
  const dim = run.hoverDim;
  if (dim === null || dim === undefined) return;
  if (run.inFlight) { run.traversalPending = true; return; }
  run.traversalPending = false;
  const z = run.z.map((v) => v.toFixed(5)).join(",");
  run.traversal.src = `/api/runs/${run.info.id}/traversal?z=${z}&dim=${dim}&steps=9`;
  run.traversalLabel.textContent = `traversal of z${dim} (${fmt(run.info.dims[dim].low)} .. ${fmt(run.info.dims[dim].high)})`;
}

function setValue(run, dim, value, fromUser) {
  run.z[dim] = value;
  const slider = run.sliders[dim];
  slider.input.value = String(value);
  slider.value.textContent = fmt(value, 3);
  requestDecode(run);
  if (fromUser && state.link) {
    for (const other of state.runs) {
      if (other !== run && dim < other.z.length) {
        const d = other.info.dims[dim];
        setValue(other, dim, Math.min(d.high, Math.max(d.low, value)), false);
      }
    }
  }
}

// ---- a clicked dataset image: its code becomes the starting point ---------------------------------------------
async function chooseImage(run, index) {
  const r = await fetch(`/api/runs/${run.info.id}/encode/${index}`);
  const post = await r.json();
  if (!r.ok) { setStatus(post.error); return; }
  run.strip.querySelectorAll("img").forEach((img, i) => img.classList.toggle("chosen", i === index));
  run.original.src = `/api/runs/${run.info.id}/images/${index}.png`;
  run.reconstruction.src = `/api/runs/${run.info.id}/reconstruction/${index}.png`;
  post.mu.forEach((v, k) => setValue(run, k, v, false));
  if (run.heatmap) drawHeatmap(run.heatmap, post.corr, run.heatmapLabel, post.nu);
}

function drawHeatmap(canvas, corr, label, nu) {
  const d = corr.length;
  const cell = Math.floor(canvas.width / d);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      const c = Math.max(-1, Math.min(1, corr[i][j]));
      const r = c > 0 ? 255 : Math.round(255 * (1 + c));
      const b = c < 0 ? 255 : Math.round(255 * (1 - c));
      const g = Math.round(255 * (1 - Math.abs(c)));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
  }
  label.textContent = `posterior correlation of the chosen image (L L^T); red +1, blue -1; nu = ${fmt(nu, 4)}`;
}

function drawCurves(canvas, curves) {
  const ctx = canvas.getContext("2d");
  const keys = Object.keys(curves).filter((k) => k !== "step");
  const steps = curves.step;
  if (!steps || steps.length < 2) return;
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  const W = canvas.width, H = canvas.height, pad = 4;
  keys.forEach((key, n) => {
    const ys = curves[key].filter((v) => typeof v === "number" && isFinite(v));
    if (ys.length < 2) return;
    const lo = Math.min(...ys), hi = Math.max(...ys);
    ctx.strokeStyle = colours[n % colours.length];
    ctx.beginPath();
    let drawing = false;
    curves[key].forEach((v, i) => {
      if (typeof v !== "number" || !isFinite(v)) { drawing = false; return; }  // a non-finite loss: a gap
      const x = pad + ((W - 2 * pad) * (steps[i] - steps[0])) / (steps[steps.length - 1] - steps[0]);
      const y = H - pad - ((H - 2 * pad) * (v - lo)) / (hi - lo || 1);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    });
    ctx.stroke();
  });
  return keys.map((k, n) => `<span style="color:${colours[n % colours.length]}">${k}</span>`).join(" ");
}

function table(obj) {
  const t = el("table");
  for (const [k, v] of Object.entries(obj || {})) {
    t.append(el("tr", {}, el("td", {}, k), el("td", {}, v === null ? "-" : fmt(v, 4))));
  }
  return t;
}

// ---- one panel per run -----------------------------------------------------------------------------------------
function buildRun(info) {
  const run = { info, z: info.dims.map((d) => d.mean), sliders: [], inFlight: false, pending: false, hoverDim: null };
  const title = `${info.name}: ${info.model}` + (info.nu !== null ? `, nu ${fmt(info.nu, 4)}` : "") + `, step ${info.step}`
    + (info.status.state === "failed" ? ` (the run failed at step ${info.status.step}: shown is its last finite checkpoint)` : "");
  run.decoded = el("img", { class: "pixel decoded", id: `decoded-${info.id}`, alt: "decoded image" });
  run.original = el("img", { class: "pixel small", id: `original-${info.id}`, alt: "chosen image" });
  run.reconstruction = el("img", { class: "pixel small", id: `reconstruction-${info.id}`, alt: "its reconstruction" });
  const sliders = el("div", { class: "sliders", id: `sliders-${info.id}` });
  for (const k of info.order) {
    const d = info.dims[k];
    const label = el("span", { class: "label" + (d.active ? " active" : ""), title: `variance of the means ${fmt(d.variance)}` },
      `z${k} KL ${fmt(d.kl, 2)}`);
    const input = el("input", { type: "range", min: String(d.low), max: String(d.high), step: String((d.high - d.low) / 400 || 0.001),
      value: String(d.mean), "data-dim": String(k), id: `slider-${info.id}-${k}` });
    const value = el("span", { class: "value" }, fmt(d.mean, 3));
    input.addEventListener("input", () => { state.animDim = k; setValue(run, k, Number(input.value), true); });
    for (const node of [label, input, value]) {
      node.addEventListener("mouseenter", () => {
        run.hoverDim = k;
        state.animDim = k;
        requestTraversal(run);
      });
    }
    sliders.append(label, input, value);
    run.sliders[k] = { input, value };
  }
  run.strip = el("div", { class: "strip", id: `strip-${info.id}` });
  for (let i = 0; i < info.images; i++) {
    run.strip.append(el("img", { class: "pixel", src: `/api/runs/${info.id}/images/${i}.png`, alt: `image ${i}`,
      onclick: () => chooseImage(run, i) }));
  }
  run.traversal = el("img", { class: "pixel traversal", id: `traversal-${info.id}`, alt: "" });
  run.traversalLabel = el("div", { class: "legend" }, "point at a slider for its traversal");
  const side = el("div", {}, run.decoded,
    el("div", { class: "pair" }, run.original, run.reconstruction, "chosen image | reconstruction"));
  const right = el("div", {});
  if (info.model === "chyvae") {
    const px = Math.max(8, Math.floor(160 / info.z_dim)) * info.z_dim;
    run.heatmap = el("canvas", { class: "heatmap", width: String(px), height: String(px), id: `heatmap-${info.id}` });
    run.heatmapLabel = el("div", { class: "legend" }, `click an image for its posterior correlation; nu = ${fmt(info.nu, 4)}`);
    right.append(el("h3", {}, "posterior correlation"), run.heatmap, run.heatmapLabel);
  }
  const curves = el("canvas", { class: "curves", width: "300", height: "110" });
  const legend = el("div", { class: "legend" });
  const evaluated = info.metrics ? `evaluation at step ${info.metrics.step}` : `no evaluation at step ${info.step}`;
  right.append(el("h3", {}, evaluated), table(info.metrics));
  const panel = el("section", { class: "run", id: `run-${info.id}` },
    el("h2", {}, title),
    el("div", { class: "top" }, side, right),
    el("h3", {}, "latent dimensions (most KL first; bold: active)"), sliders,
    el("h3", {}, "traversal"), run.traversal, run.traversalLabel,
    el("h3", {}, "held-out images (click one to start from it)"), run.strip,
    el("h3", {}, "training curves (each scaled to its own range)"), curves, legend,
    el("details", {}, el("summary", {}, "config"), table(info.config)));
  document.getElementById("runs").append(panel);
  legend.innerHTML = drawCurves(curves, info.curves) || "";
  requestDecode(run);
  chooseImage(run, 0);
  return run;
}

// A run the server could not load (a failed run without a finite checkpoint): its status and why.
function showUnavailable(info) {
  const state_ = info.status.state ? `${info.status.state} at step ${info.status.step}` : "no status";
  document.getElementById("runs").append(el("section", { class: "run unavailable", id: `run-${info.id}` },
    el("h2", {}, `${info.name}: ${info.model || "?"} (${state_})`),
    el("p", {}, info.error),
    info.status.error ? el("p", {}, info.status.error) : ""));
}

function tick() {
  if (!state.animate || state.animDim === null) return;
  state.animPhase = (state.animPhase + 0.04) % 2;
  const t = state.animPhase < 1 ? state.animPhase : 2 - state.animPhase;
  for (const run of state.runs) {
    const k = state.animDim;
    if (k >= run.z.length) continue;
    const d = run.info.dims[k];
    setValue(run, k, d.low + (d.high - d.low) * t, false);
  }
}

async function main() {
  document.getElementById("link").addEventListener("change", (e) => { state.link = e.target.checked; });
  document.getElementById("animate").addEventListener("change", (e) => {
    state.animate = e.target.checked;
    if (state.animate && state.animDim === null && state.runs.length) state.animDim = state.runs[0].info.order[0];
  });
  const r = await fetch("/api/runs");
  const infos = await r.json();
  for (const info of infos) {  // in the order given, each run's panel or, for one that cannot be shown, why
    if (info.available) state.runs.push(buildRun(info));
    else showUnavailable(info);
  }
  setInterval(tick, 80);
  document.body.dataset.ready = "1";
}

main().catch((e) => setStatus(e.message));
