// cxrlearn app: the page's behaviour, in plain JavaScript (no framework, no download).
//
// 1. Ask the server which model it runs (GET /api/model) and what it accepts.
// 2. When an image is chosen or dropped: show it, send it (POST /api/predict, multipart
//    field "file"), then draw the answer: the class, one bar per class, the Grad-CAM overlay.
// 3. When the server says no (4xx, {"error": "..."}), show its message.
//
// Text from the server or the user's file name goes in with textContent, never innerHTML,
// so a file called "<img onerror=...>.png" is shown, not run.
"use strict";

const $ = (id) => document.getElementById(id);
let maxBytes = null;      // from /api/model; checked here too, so a huge file is not sent
let imageSize = null;     // S, the side of the image the network sees
let latest = 0;           // number of the latest request: older answers are ignored

async function describeModel() {
  try {
    const response = await fetch("/api/model");
    const info = await response.json();
    maxBytes = info.limits.max_bytes;
    imageSize = info.preprocess.image_size;
    $("limit").textContent = `, up to ${size(maxBytes)}`;
    $("model").textContent =
      `Model: ${info.file} (${info.kind}, ${info.classes.length} classes: ` +
      `${info.classes.join(", ")}; sha256 ${info.sha256.slice(0, 12)}…)`;
    if (!info.gradcam) {
      $("gradcam-note").textContent = info.gradcam_note;
    }
  } catch (err) {
    $("model").textContent = "The server did not describe its model: is it still running?";
  }
}

function size(bytes) {
  // 1536 -> "1.5 KiB", as the server writes sizes.
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}

function showError(message) {
  $("result").hidden = true;
  $("status").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

function showPreview(file) {
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  $("preview-caption").textContent = file.name;
  img.hidden = false;
  img.onerror = () => {
    // Browsers cannot draw DICOM; the server can still read it.
    img.hidden = true;
    $("preview-caption").textContent = `${file.name} (no preview in the browser)`;
  };
  img.src = URL.createObjectURL(file);
  $("preview-box").hidden = false;
}

function drawBars(answer) {
  const list = $("bars");
  list.replaceChildren();
  for (const name of answer.classes) {
    const p = answer.probabilities[name];
    const item = document.createElement("li");
    item.dataset.class = name;
    item.dataset.probability = String(p);
    if (name === answer.predicted) item.classList.add("best");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)} %`;
    item.append(label, track, value);
    list.append(item);
  }
}

function showAnswer(answer) {
  $("predicted").textContent = answer.predicted;
  drawBars(answer);
  if (answer.gradcam_png) {
    $("overlay").src = `data:image/png;base64,${answer.gradcam_png}`;
    $("overlay-caption").textContent =
      `Grad-CAM for ${answer.predicted}: where the evidence for this class lies, drawn ` +
      `on the ${imageSize}×${imageSize} image the network saw. A question to ask of ` +
      "the model, not a finding.";
    $("overlay-box").hidden = false;
    $("gradcam-note").hidden = true;
  } else {
    $("overlay-box").hidden = true;
    $("gradcam-note").hidden = !answer.gradcam_note;
    if (answer.gradcam_note) $("gradcam-note").textContent = answer.gradcam_note;
  }
  $("status").hidden = true;
  $("error").hidden = true;
  $("result").hidden = false;
}

async function classify(file) {
  const request = ++latest;
  $("error").hidden = true;
  showPreview(file);
  if (maxBytes !== null && file.size > maxBytes) {
    showError(`${file.name}: the file is ${size(file.size)}; the limit is ${size(maxBytes)}. ` +
              "Choose a smaller image.");
    return;
  }
  $("status").textContent = `Classifying ${file.name}…`;
  $("status").hidden = false;
  const form = new FormData();
  form.append("file", file, file.name);
  let response, answer;
  try {
    response = await fetch("/api/predict?gradcam=true", { method: "POST", body: form });
    answer = await response.json();
  } catch (err) {
    if (request === latest) showError("No answer from the server: is `cxrlearn app` running?");
    return;
  }
  if (request !== latest) return;  // the user chose another file meanwhile
  if (!response.ok) {
    showError(answer.error || `The server answered ${response.status}.`);
    return;
  }
  showAnswer(answer);
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files.length > 0) classify(input.files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();  // without this the browser opens the dropped file itself
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = event.dataTransfer.files;
    if (files.length > 0) classify(files[0]);
  });
  describeModel();
}

document.addEventListener("DOMContentLoaded", setUp);
