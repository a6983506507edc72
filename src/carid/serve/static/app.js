// The carid web page: upload or drop a photo, POST it to /predict, show every car it answers.
// Plain JavaScript, no build step, nothing loaded from elsewhere. The answer lists the cars
// largest box first (`cars`; one entry for a model without a detector, none when no car was
// found); each is drawn as a numbered box over the photo and listed with the same number beside
// it. Boxes come back in the photo's own pixels (xyxy, EXIF orientation applied) and are scaled
// to the displayed image. The photo is shown at the column's width (small photos are scaled up,
// large ones down, never taller than 75% of the window).
// A server started with an API key answers 401 until the page sends the key: the page then asks
// for it and sends it in X-API-Key. The key stays in this page's memory only (never stored).
"use strict";

const TOP_K = 5;
// Answers whose probability is under this get a visible "low confidence" warning. It is a reading
// aid, not the model's unknown threshold (the server applies that one and answers "unknown").
const LOW_CONFIDENCE = 0.5;
const $ = (id) => document.getElementById(id);

const state = {
  model: null, // GET /model
  file: null, // the photo on show
  objectUrl: null,
  result: null, // the /predict answer for `file`
  explanation: null, // the Grad-CAM part of an answer with explain=true
  request: 0, // increases per upload; late answers for an older photo are dropped
  apiKey: "", // typed by the user when the server asks for one
};

function keyHeaders() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

// Ask for the key (401): `message` says why (no key yet, or the key was wrong).
function askForKey(message) {
  $("key-form").hidden = false;
  const error = $("key-error");
  error.textContent = message;
  error.hidden = !message;
  $("key-input").focus();
}

// The same text as carid.serve.api.percent (the Grad-CAM caption must match the answer).
function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function megabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const error = $("error");
  error.textContent = text;
  error.hidden = !text;
}

// The server's reasons are sentence bodies ("the top class's probability ..."): capitalized here.
function sentence(text) {
  return text ? `${text.charAt(0).toUpperCase()}${text.slice(1)}` : "";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function explainAvailable() {
  return Boolean(state.model && state.model.explain && state.model.explain.available);
}

function isPipeline() {
  return Boolean(state.model && state.model.pipeline);
}

async function loadModel() {
  try {
    const response = await fetch("/model", { headers: keyHeaders() });
    if (response.status === 401) {
      $("model-summary").textContent = "This server needs an API key.";
      askForKey(state.apiKey ? "The server did not accept this key." : "");
      return;
    }
    if (!response.ok) throw new Error(`status ${response.status}`);
    const model = await response.json();
    state.model = model;
    $("key-form").hidden = true;
    const parts = [
      model.pipeline ? "finds every car (detector), then names each" : model.with_box ? "finds the car's box" : "no box",
      `${model.num_classes} classes`,
      `${model.backend} backend`,
      `input ${model.input_size.width}×${model.input_size.height}`,
    ];
    $("model-summary").textContent = `Model: ${parts.join(" · ")}`;
    $("limits-note").textContent =
      `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${megabytes(model.limits.max_upload_bytes)}`;
    $("explain-control").hidden = !explainAvailable();
    const note = $("explain-note");
    const reason = model.explain && !model.explain.available ? model.explain.reason : "";
    note.textContent = reason ? `${sentence(reason)}.` : "";
    note.hidden = !reason;
  } catch (error) {
    $("model-summary").textContent = `Cannot reach the model server (${error.message}).`;
  }
}

async function postPhoto(file, explain) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const query = new URLSearchParams({ top_k: String(TOP_K) });
  if (explain) query.set("explain", "true");
  const response = await fetch(`/predict?${query}`, { method: "POST", body: form, headers: keyHeaders() });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `the server answered ${response.status}`;
    if (response.status === 401) askForKey(message);
    throw new Error(message);
  }
  return body;
}

function clearAnswer() {
  for (const id of ["timing", "figure-caption", "no-car"]) $(id).textContent = "";
  $("result-heading").textContent = "Cars in this photo";
  $("cars").replaceChildren();
  $("boxes").replaceChildren();
  $("no-car").hidden = true;
}

async function handleFile(file) {
  if (!file) return;
  const request = ++state.request;
  showError("");
  if (state.model && file.size > state.model.limits.max_upload_bytes) {
    showError(`This file is ${megabytes(file.size)}; the limit is ${megabytes(state.model.limits.max_upload_bytes)}.`);
    return;
  }
  state.file = file;
  state.result = null;
  state.explanation = null;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  clearAnswer();
  $("photo").src = state.objectUrl;
  $("result").hidden = false;
  $("result").setAttribute("aria-busy", "true");
  const explain = explainAvailable() && $("explain-toggle").checked;
  const what = isPipeline() ? "Finding and identifying the cars" : "Identifying the car";
  setStatus(explain ? `${what} and computing the heat map…` : `${what}…`);
  try {
    const result = await postPhoto(file, explain);
    if (request !== state.request) return;
    state.result = result;
    state.explanation = result.explanation || null;
    render(result);
    setStatus("");
  } catch (error) {
    if (request !== state.request) return;
    setStatus("");
    showError(`Could not identify this photo: ${error.message}`);
    $("result").hidden = true;
  } finally {
    if (request === state.request) $("result").removeAttribute("aria-busy");
  }
}

function levelText(level, fallback) {
  if (level) return `${level.value} (${percent(level.probability)})`;
  return fallback == null ? "–" : String(fallback);
}

function levels(car) {
  const top1 = car.top_k[0] || null;
  const list = element("dl", "levels");
  const rows = [
    ["Make", levelText(car.make, top1 && top1.make)],
    ["Body type", levelText(car.body_type, top1 && top1.body_type)],
    ["Year", levelText(car.year, top1 && top1.year)],
  ];
  for (const [name, value] of rows) {
    const row = element("div");
    row.append(element("dt", null, name), element("dd", null, value));
    list.append(row);
  }
  return list;
}

function topK(car, open) {
  const details = element("details", "candidates");
  details.open = open;
  details.append(element("summary", null, `Most likely (top ${car.top_k.length})`));
  const list = element("ol", "top-k");
  for (const score of car.top_k) {
    const item = element("li");
    const bar = element("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span");
    fill.style.width = `${Math.max(0, Math.min(1, score.probability)) * 100}%`;
    bar.append(fill);
    item.append(element("span", "name", score.label), element("span", "value", percent(score.probability)), bar);
    if (score.body_type) item.append(element("span", "detail muted", score.body_type));
    list.append(item);
  }
  details.append(list);
  return details;
}

// One car of the list: number, label (or "Not sure" with the best guess and the reason),
// probability with a warning when it is low, make / body type / year, detection score, top-k.
function carItem(car, number, single) {
  const item = element("li", "car");
  item.dataset.number = String(number);
  item.dataset.label = car.label == null ? "" : car.label;
  const top1 = car.top_k[0] || null;
  const head = element("p", "car-head");
  const label = element("span", "car-label", car.unknown ? "Not sure" : car.label);
  head.append(element("span", "number", String(number)), label);
  if (car.probability != null) head.append(element("span", "probability", percent(car.probability)));
  item.append(head);
  if (car.unknown) {
    item.classList.add("unknown");
    const guess = top1 ? `Best guess: ${top1.label} (${percent(top1.probability)}). ` : "";
    item.append(element("p", "note reason", `${guess}${sentence(car.reason)}`.trim()));
  } else if (car.probability != null && car.probability < LOW_CONFIDENCE) {
    item.classList.add("low");
    item.append(
      element(
        "p",
        "warning",
        `⚠ Low confidence: the model gives this answer only ${percent(car.probability)}; treat it as a guess.`,
      ),
    );
  }
  if (car.top_k.length) item.append(levels(car));
  if (car.detection_score != null) {
    item.append(element("p", "detection muted small", `Detection score: ${percent(car.detection_score)}`));
  }
  if (car.top_k.length) item.append(topK(car, single));
  for (const type of ["mouseenter", "focusin"]) item.addEventListener(type, () => highlight(number, true));
  for (const type of ["mouseleave", "focusout"]) item.addEventListener(type, () => highlight(number, false));
  item.tabIndex = 0;
  return item;
}

function highlight(number, on) {
  const box = $("boxes").querySelector(`.box[data-number="${number}"]`);
  if (box) box.classList.toggle("active", on);
}

function render(result) {
  const cars = result.cars || [];
  const heading = $("result-heading");
  if (!cars.length) {
    heading.textContent = "No car found";
    const note = $("no-car");
    note.textContent = sentence(result.reason) || "The model found no car in this photo.";
    note.hidden = false;
  } else {
    heading.textContent = cars.length === 1 ? "1 car" : `${cars.length} cars, largest first`;
  }
  $("cars").replaceChildren(...cars.map((car, index) => carItem(car, index + 1, cars.length === 1)));
  $("timing").textContent = `${result.timing.total_ms.toFixed(0)} ms on the server`;
  sizePhoto();
  drawBoxes();
  updateView();
}

// The photo's displayed width: the column's, but no taller than 75% of the window; small photos
// are scaled up to it (a 165 px photo shown at 165 px is too small to see its box).
function sizePhoto() {
  const photo = $("photo");
  const size = state.result && state.result.image_size;
  const [width, height] = size || [photo.naturalWidth, photo.naturalHeight];
  if (width > 0 && height > 0) $("figure").style.setProperty("--aspect", String(width / height));
}

// Boxes are in the photo's pixels; the image is shown scaled, so scale each axis by its own ratio.
function drawBoxes() {
  const layer = $("boxes");
  const photo = $("photo");
  const result = state.result;
  if (!result || !result.image_size || !photo.complete || photo.naturalWidth === 0) {
    layer.replaceChildren();
    return;
  }
  const [width, height] = result.image_size;
  const scaleX = photo.clientWidth / width;
  const scaleY = photo.clientHeight / height;
  const boxes = [];
  (result.cars || []).forEach((car, index) => {
    if (!car.box) return;
    const box = element("div", car.unknown ? "box unknown" : "box");
    box.dataset.number = String(index + 1);
    box.style.left = `${car.box.x1 * scaleX}px`;
    box.style.top = `${car.box.y1 * scaleY}px`;
    box.style.width = `${(car.box.x2 - car.box.x1) * scaleX}px`;
    box.style.height = `${(car.box.y2 - car.box.y1) * scaleY}px`;
    const tag = element("span", "box-number", String(index + 1));
    if (car.box.y1 * scaleY < 22) tag.classList.add("inside"); // no room above the box
    box.append(tag);
    boxes.push(box);
  });
  // Smaller boxes on top, so a car inside a larger box stays visible and its number readable.
  layer.replaceChildren(...boxes);
}

function updateView() {
  const wantOverlay = explainAvailable() && $("explain-toggle").checked;
  const explanation = state.explanation;
  const showOverlay = Boolean(wantOverlay && explanation && explanation.available);
  const overlay = $("overlay");
  if (showOverlay) overlay.src = `data:${explanation.media_type};base64,${explanation.png_base64}`;
  overlay.hidden = !showOverlay;
  $("photo-frame").hidden = showOverlay;
  let caption = "";
  if (showOverlay) {
    // The server's caption: the class explained and the ANSWER's probability (as listed beside it).
    const said = explanation.caption || `Grad-CAM for ${explanation.target_label}`;
    caption = `${said}: warm colours mark what decided the answer.`;
  } else if (wantOverlay && explanation && !explanation.available) caption = `No heat map: ${explanation.reason}`;
  $("figure-caption").textContent = caption;
}

async function onExplainToggle() {
  if ($("explain-toggle").checked && state.file && state.result && !state.explanation) {
    const request = state.request;
    setStatus("Computing the heat map…");
    try {
      const result = await postPhoto(state.file, true);
      if (request !== state.request) return;
      state.explanation = result.explanation || null;
      setStatus("");
    } catch (error) {
      if (request !== state.request) return;
      setStatus("");
      showError(`Could not compute the heat map: ${error.message}`);
    }
  }
  updateView();
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const stop = (event) => {
    event.preventDefault();
    event.stopPropagation();
  };
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      stop(event);
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    stop(event);
    zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    stop(event);
    zone.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) handleFile(files[0]);
  });
  // A photo dropped next to the zone must not make the browser leave the page to show it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
}

function onKeySubmit(event) {
  event.preventDefault();
  state.apiKey = $("key-input").value.trim();
  $("key-error").hidden = true;
  loadModel();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("file-input").addEventListener("change", (event) => {
    handleFile(event.target.files[0]);
    event.target.value = ""; // choosing the same file again still triggers a change
  });
  $("explain-toggle").addEventListener("change", onExplainToggle);
  $("photo").addEventListener("load", () => {
    sizePhoto();
    drawBoxes();
  });
  if ("ResizeObserver" in window) new ResizeObserver(drawBoxes).observe($("photo"));
  else window.addEventListener("resize", drawBoxes);
  setUpDropZone();
  loadModel();
});
