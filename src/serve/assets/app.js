// The page of `convnet serve`: draw or drop an image, send it to /api/predict, show the
// classes, every layer's feature maps, the first filters, the summary and the curves.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null; // GET /api/model
let latest = 0;   // sequence number of the newest request; older answers are dropped
let shown = 0;    // sequence number of the prediction on screen

// Kinds whose output is drawn as feature maps.
const MAP_KINDS = ["conv2d", "maxpool2d", "avgpool2d", "adaptiveavgpool2d", "adaptivemaxpool2d",
  "subsample", "residual"];

function status(text) { $("status").textContent = text || ""; }

// ---- the drawing canvas -------------------------------------------------------------
const draw = $("draw");
const pen = draw.getContext("2d");
let drawn = false;

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, draw.width, draw.height);
  drawn = false;
}

function canvasPoint(e) {
  const r = draw.getBoundingClientRect();
  return [(e.clientX - r.left) * draw.width / r.width, (e.clientY - r.top) * draw.height / r.height];
}

let stroking = false;
let last = null;
let pending = null;
draw.addEventListener("pointerdown", (e) => {
  if (!drawn) clearCanvas();
  stroking = true;
  drawn = true;
  draw.setPointerCapture(e.pointerId);
  last = canvasPoint(e);
  stroke(last, last);
  e.preventDefault();
});
draw.addEventListener("pointermove", (e) => {
  if (!stroking) return;
  const p = canvasPoint(e);
  stroke(last, p);
  last = p;
  // Classify while drawing, at most every 150 ms.
  if (!pending) pending = setTimeout(() => { pending = null; classifyDrawing(); }, 150);
});
const endStroke = () => {
  if (!stroking) return;
  stroking = false;
  classifyDrawing();
};
draw.addEventListener("pointerup", endStroke);
draw.addEventListener("pointercancel", endStroke);

function stroke(a, b) {
  pen.strokeStyle = "#fff";
  pen.lineWidth = 20;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(a[0], a[1]);
  pen.lineTo(b[0], b[1]);
  pen.stroke();
}

// A w×h canvas whose scaled drawing is antialiased, and its context.
function smoothCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  return [c, ctx];
}

// The drawing as MNIST digits are made: the ink's bounding box scaled (anti-aliased) into a
// box of 20/28 of the input, placed so that its centre of mass is at the input's centre.
function drawingToInput() {
  const [c, h, w] = model.input;
  const src = pen.getImageData(0, 0, draw.width, draw.height).data;
  let x0 = draw.width, y0 = draw.height, x1 = -1, y1 = -1;
  for (let y = 0; y < draw.height; y++) {
    for (let x = 0; x < draw.width; x++) {
      if (src[(y * draw.width + x) * 4] > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  if (x1 < 0) return null;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const box = Math.max(1, Math.round(Math.min(w, h) * 20 / 28));
  const s = box / Math.max(bw, bh);
  const tw = Math.max(1, Math.round(bw * s)), th = Math.max(1, Math.round(bh * s));
  const [t, tc] = smoothCanvas(tw, th);
  tc.drawImage(draw, x0, y0, bw, bh, 0, 0, tw, th);
  const td = tc.getImageData(0, 0, tw, th).data;
  let m = 0, mx = 0, my = 0;
  for (let y = 0; y < th; y++) {
    for (let x = 0; x < tw; x++) {
      const v = td[(y * tw + x) * 4];
      m += v; mx += v * (x + 0.5); my += v * (y + 0.5);
    }
  }
  const cx = m ? mx / m : tw / 2, cy = m ? my / m : th / 2;
  const out = document.createElement("canvas");
  out.width = w;
  out.height = h;
  const oc = out.getContext("2d");
  oc.fillStyle = "#000";
  oc.fillRect(0, 0, w, h);
  oc.drawImage(t, Math.round(w / 2 - cx), Math.round(h / 2 - cy));
  return out;
}

function classifyDrawing() {
  if (!model || !drawn) return;
  const input = drawingToInput();
  if (!input) return;
  input.toBlob((blob) => send(blob, "image/png", input), "image/png");
}

// ---- images: dropped, picked, examples ------------------------------------------------
function showOnCanvas(img) {
  clearCanvas();
  const s = Math.min(draw.width / img.width, draw.height / img.height);
  const dw = img.width * s, dh = img.height * s;
  pen.imageSmoothingEnabled = s < 1;
  pen.drawImage(img, (draw.width - dw) / 2, (draw.height - dh) / 2, dw, dh);
  drawn = false; // a new stroke starts a new drawing
}

// An image of another size than the model's: shorter side to the input size, centre crop.
function fitToInput(img) {
  const [, h, w] = model.input;
  const [out, oc] = smoothCanvas(w, h);
  const s = Math.max(w / img.width, h / img.height);
  const dw = img.width * s, dh = img.height * s;
  oc.drawImage(img, (w - dw) / 2, (h - dh) / 2, dw, dh);
  return out;
}

function loadImage(blob) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot read this image"));
    img.src = URL.createObjectURL(blob);
  });
}

async function classifyFile(blob, type) {
  if (!model) return;
  let img;
  try {
    img = await loadImage(blob);
  } catch (err) {
    status(err.message);
    return;
  }
  showOnCanvas(img);
  const [, h, w] = model.input;
  if (img.width === w && img.height === h && (type === "image/png" || type === "image/jpeg")) {
    send(blob, type, img);
  } else {
    const fitted = fitToInput(img);
    fitted.toBlob((b) => send(b, "image/png", fitted), "image/png");
  }
}

async function loadExample(k) {
  document.querySelectorAll("#examples img").forEach((el) => el.classList.toggle("chosen", el.dataset.k === String(k)));
  const r = await fetch(`/api/examples/${k}`);
  if (!r.ok) {
    status((await r.json()).error);
    return;
  }
  classifyFile(await r.blob(), "image/png");
}

$("file").addEventListener("change", (e) => {
  const f = e.target.files[0];
  if (f) classifyFile(f, f.type);
});
draw.addEventListener("dragover", (e) => { e.preventDefault(); draw.classList.add("dropping"); });
draw.addEventListener("dragleave", () => draw.classList.remove("dropping"));
draw.addEventListener("drop", (e) => {
  e.preventDefault();
  draw.classList.remove("dropping");
  const f = e.dataTransfer.files[0];
  if (f) classifyFile(f, f.type);
});
$("clear").addEventListener("click", clearCanvas);

// ---- prediction -----------------------------------------------------------------------
async function send(blob, type, picture) {
  const seq = ++latest;
  const seen = $("seen");
  seen.width = picture.width;
  seen.height = picture.height;
  seen.getContext("2d").drawImage(picture, 0, 0);
  let answer;
  try {
    const r = await fetch("/api/predict?activations=1", { method: "POST", headers: { "Content-Type": type }, body: blob });
    answer = await r.json();
    if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
  } catch (err) {
    if (seq === latest) status(err.message);
    return;
  }
  if (seq < shown) return;
  shown = seq;
  status("");
  showPrediction(answer, seq);
  showMaps(answer.layers);
}

function percent(p) { return `${(100 * p).toFixed(1)} %`; }

function showPrediction(p, seq) {
  const el = $("prediction");
  el.textContent = `${p.top.class} (${percent(p.top.probability)})`;
  el.dataset.seq = String(seq);
  el.dataset.index = String(p.top.index);
  const order = p.probabilities.map((v, i) => i).sort((a, b) => p.probabilities[b] - p.probabilities[a]).slice(0, 10);
  const bars = $("bars");
  bars.replaceChildren(...order.map((i) => {
    const row = document.createElement("div");
    row.className = i === p.top.index ? "bar top" : "bar";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.classes[i];
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p.probabilities[i]).toFixed(2)}%`;
    track.appendChild(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(p.probabilities[i]);
    row.append(name, track, pct);
    return row;
  }));
}

// One grey image of an h×w map, black at its lowest value and white at its highest.
function mapCanvas(values, offset, h, w, scale) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  c.style.width = `${w * scale}px`;
  c.style.height = `${h * scale}px`;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < h * w; i++) {
    const v = values[offset + i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi > lo ? hi - lo : 1;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const g = Math.round(255 * (values[offset + i] - lo) / span);
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = g;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function tileScale(h, w) { return Math.max(1, Math.min(8, Math.floor(64 / Math.max(h, w)))); }

function showMaps(layers) {
  const maps = $("maps");
  let k = 0;
  const blocks = [];
  for (const l of layers) {
    if (!MAP_KINDS.includes(l.kind) || l.shape.length !== 3 || !l.activations) continue;
    k++;
    const [c, h, w] = l.shape;
    const block = document.createElement("div");
    block.className = "layer";
    const title = document.createElement("h3");
    title.textContent = `h${superscript(k)}: layer ${l.name}, ${c}×${h}×${w}`;
    const grid = document.createElement("div");
    grid.className = "grid";
    const scale = tileScale(h, w);
    for (let ch = 0; ch < c; ch++) grid.appendChild(mapCanvas(l.activations, ch * h * w, h, w, scale));
    block.append(title, grid);
    blocks.push(block);
  }
  maps.replaceChildren(...blocks);
}

function superscript(n) {
  const digits = "⁰¹²³⁴⁵⁶⁷⁸⁹";
  return String(n).split("").map((d) => digits[+d]).join("");
}

// ---- the model: filters, summary, curves, examples -----------------------------------
function showFilters(f) {
  const box = $("filters");
  if (!f) {
    box.textContent = "This model has no convolution at the top level.";
    return;
  }
  const [oc, ic, kh, kw] = f.shape;
  const grid = document.createElement("div");
  grid.className = "grid";
  const scale = Math.max(4, Math.floor(48 / Math.max(kh, kw)));
  for (let o = 0; o < oc; o++) {
    // The first input channel's weights (the only one of a grey model).
    grid.appendChild(mapCanvas(f.data, o * ic * kh * kw, kh, kw, scale));
  }
  const note = document.createElement("p");
  note.className = "hint";
  note.textContent = `Layer ${f.layer}: ${oc} filters of ${kh}×${kw}` + (ic > 1 ? ` (input channel 1 of ${ic} shown)` : "");
  box.replaceChildren(grid, note);
}

function thousands(n) { return n.toLocaleString("en-US"); }

function showSummary(m) {
  const t = $("summary");
  const head = document.createElement("tr");
  for (const h of ["index", "layer", "output shape", "params", "buffers"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const rows = m.layers.map((r) => {
    const tr = document.createElement("tr");
    const depth = (r.index.match(/\./g) || []).length / 2;
    const cells = [r.index, "\u00a0\u00a0".repeat(depth) + r.kind, r.output_shape.join("×"), thousands(r.params), r.buffers ? thousands(r.buffers) : ""];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  });
  const total = document.createElement("tr");
  const td = document.createElement("td");
  td.colSpan = 5;
  td.textContent = `${thousands(m.params)} parameters; input ${m.input.join("×")}`;
  total.appendChild(td);
  t.replaceChildren(head, ...rows, total);
}

function showCurves(metrics) {
  const c = $("curves");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!metrics.length) {
    $("curves-note").textContent = "No metrics.csv: serve a run directory to see its training curves.";
    return;
  }
  const L = 50, R = c.width - 50, T = 20, B = c.height - 35;
  const n = metrics.length;
  const x = (e) => L + (n > 1 ? (e - 1) / (n - 1) : 0.5) * (R - L);
  const losses = metrics.flatMap((m) => [m.train_loss, m.test_loss]).filter((v) => v != null);
  const maxLoss = Math.max(...losses) * 1.05 || 1;
  const yl = (v) => B - (v / maxLoss) * (B - T);
  const ya = (v) => B - v * (B - T);
  ctx.strokeStyle = "#9aa3b5";
  ctx.strokeRect(L, T, R - L, B - T);
  ctx.fillStyle = "#1d2330";
  ctx.font = "12px sans-serif";
  ctx.textAlign = "center";
  ctx.fillText("epoch", (L + R) / 2, c.height - 5);
  for (const e of [1, Math.ceil(n / 2), n]) ctx.fillText(String(e), x(e), B + 15);
  ctx.textAlign = "right";
  ctx.fillText(maxLoss.toFixed(2), L - 4, T + 4);
  ctx.fillText("0", L - 4, B + 4);
  ctx.textAlign = "left";
  ctx.fillText("100 %", R + 4, T + 4);
  ctx.fillText("0 %", R + 4, B + 4);
  const line = (key, y, colour) => {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const m of metrics) {
      if (m[key] == null) continue;
      if (started) ctx.lineTo(x(m.epoch), y(m[key]));
      else ctx.moveTo(x(m.epoch), y(m[key]));
      started = true;
    }
    ctx.stroke();
  };
  line("train_loss", yl, "#3b82f6");
  line("test_loss", yl, "#f59e0b");
  line("test_accuracy", ya, "#16a34a");
  const lastAcc = metrics[n - 1].test_accuracy;
  $("curves-note").textContent = "blue: training loss, orange: test loss (left axis); green: test accuracy (right axis)" +
    (lastAcc != null ? `; last epoch ${percent(lastAcc)}` : "");
}

function showExamples(labels) {
  const box = $("examples");
  if (!labels.length) return;
  box.replaceChildren(...labels.map((label, k) => {
    const img = document.createElement("img");
    img.src = `/api/examples/${k}`;
    img.alt = img.title = `example ${k}: ${label}`;
    img.dataset.k = String(k);
    img.addEventListener("click", () => loadExample(k));
    return img;
  }));
}

async function start() {
  clearCanvas();
  try {
    const r = await fetch("/api/model");
    model = await r.json();
  } catch (err) {
    status(`cannot load the model: ${err.message}`);
    return;
  }
  $("model-name").textContent = `${model.name}: input ${model.input.join("×")}, ${model.classes.length} classes`;
  showSummary(model);
  showFilters(model.filters);
  showCurves(model.metrics);
  showExamples(model.examples);
  const k = new URLSearchParams(location.search).get("example");
  if (k !== null) loadExample(k);
}

start();
