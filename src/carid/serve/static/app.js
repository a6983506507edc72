// The carid web page: upload or drop a photo, POST it to /predict, show the answer.
// Plain JavaScript, no build step, nothing loaded from elsewhere. The box comes back in the
// photo's own pixels (xyxy, EXIF orientation applied) and is scaled to the displayed image.
// A server started with an API key answers 401 until the page sends the key: the page then asks
// for it and sends it in X-API-Key. The key stays in this page's memory only (never stored).
"use strict";

const TOP_K = 5;
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

function explainAvailable() {
  return Boolean(state.model && state.model.explain && state.model.explain.available);
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
      `${model.num_classes} classes`,
      model.with_box ? "finds the car's box" : "no box",
      `${model.backend} backend`,
      `input ${model.input_size.width}×${model.input_size.height}`,
    ];
    $("model-summary").textContent = `Model: ${parts.join(" · ")}`;
    $("limits-note").textContent =
      `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${megabytes(model.limits.max_upload_bytes)}`;
    $("top-k-heading").textContent = `Most likely (top ${Math.min(TOP_K, model.num_classes)})`;
    $("explain-control").hidden = !explainAvailable();
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
  for (const id of ["label", "probability", "timing", "figure-caption"]) $(id).textContent = "";
  for (const id of ["make", "body-type", "year"]) $(id).textContent = "–";
  $("top-k").replaceChildren();
  $("unknown-note").hidden = true;
  $("box").hidden = true;
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
  setStatus(explain ? "Identifying the car and computing the heat map…" : "Identifying the car…");
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

function render(result) {
  const top1 = result.top_k[0] || null;
  $("label").textContent = result.unknown ? "Unknown car" : result.label;
  $("label").dataset.label = result.label;
  $("probability").textContent = result.unknown ? "" : percent(result.probability);
  const note = $("unknown-note");
  note.hidden = !result.unknown;
  if (result.unknown && top1) {
    note.textContent =
      `The model does not know this car well enough to name it. Closest: ${top1.label} (${percent(top1.probability)}).`;
  }
  $("make").textContent = levelText(result.make, top1 && top1.make);
  $("body-type").textContent = levelText(result.body_type, top1 && top1.body_type);
  $("year").textContent = levelText(result.year, top1 && top1.year);

  const list = $("top-k");
  list.replaceChildren(
    ...result.top_k.map((score) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = score.label;
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent(score.probability);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, score.probability)) * 100}%`;
      bar.append(fill);
      item.append(name, value, bar);
      if (score.body_type) {
        const detail = document.createElement("span");
        detail.className = "detail muted";
        detail.textContent = score.body_type;
        item.append(detail);
      }
      return item;
    }),
  );
  $("timing").textContent = `${result.timing.total_ms.toFixed(0)} ms on the server`;
  drawBox();
  updateView();
}

// The box is in the photo's pixels; the image is shown scaled, so scale each axis by its own ratio.
function drawBox() {
  const box = $("box");
  const photo = $("photo");
  const result = state.result;
  if (!result || !result.box || !result.image_size || !photo.complete || photo.naturalWidth === 0) {
    box.hidden = true;
    return;
  }
  const [width, height] = result.image_size;
  const scaleX = photo.clientWidth / width;
  const scaleY = photo.clientHeight / height;
  box.style.left = `${result.box.x1 * scaleX}px`;
  box.style.top = `${result.box.y1 * scaleY}px`;
  box.style.width = `${(result.box.x2 - result.box.x1) * scaleX}px`;
  box.style.height = `${(result.box.y2 - result.box.y1) * scaleY}px`;
  box.hidden = false;
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
  if (showOverlay) caption = `Grad-CAM for ${explanation.target_label}: warm colours mark what decided the answer.`;
  else if (wantOverlay && explanation && !explanation.available) caption = `No heat map: ${explanation.reason}`;
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
  $("photo").addEventListener("load", drawBox);
  if ("ResizeObserver" in window) new ResizeObserver(drawBox).observe($("photo"));
  else window.addEventListener("resize", drawBox);
  setUpDropZone();
  loadModel();
});
