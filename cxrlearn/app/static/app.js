// cxrlearn app: the page's behaviour, in plain JavaScript (no framework, no download).
//
// 1. Ask the server which model it runs and how good it is (GET /api/model): show its
//    scores against chance, and its warning when the quality is unknown or near chance.
//    Ask which sample X-rays it offers (GET /api/samples).
// 2. When an image is chosen, dropped or picked from the samples: show it, send it
//    (POST /api/predict, multipart field "file"), then draw the answer: the class, one bar
//    per class, the Grad-CAM overlay. A browser cannot draw DICOM: then the page shows the
//    image as the server read it (image_png).
// 3. When the server says no (4xx, {"error": "..."}), show its message.
// 4. On a small screen the answer is below the image: scroll it into view.
//
// Where the answer comes from is one function, `askServer` (send the file, get the JSON
// answer or an error). The other way to answer, the network run in the browser itself, is
// another page: the one `cxrlearn export --format web` writes, which the app serves for its
// model at /api/model's `device_url` (cxrlearn/app/device.py). The link to it is offered
// here, or the sentence that says why it cannot be.
//
// Text from the server or the user's file name goes in with textContent, never innerHTML,
// so a file called "<img onerror=...>.png" is shown, not run.
"use strict";

const $ = (id) => document.getElementById(id);
let maxBytes = null;      // from /api/model; checked here too, so a huge file is not sent
let imageSize = null;     // S, the side of the image the network sees
let warning = null;       // the model's warning, repeated next to every answer
let latest = 0;           // number of the latest request: older answers are ignored
let browserPreview = "";  // "ok", "failed" or "" (not decided yet) for the current image
let serverPreview = null; // the current answer's image_png
let previewName = "";     // the current image's file name
let modelClasses = [];    // the model's class names, from /api/model

const SCORE_NAMES = { macro_f1: "macro-F1", accuracy: "accuracy" };

function scoreLine(info) {
  // "Validation (epoch 3): macro-F1 0.82, accuracy 0.84. Test (60 images): ... Chance: 0.25."
  const parts = [];
  for (const [prefix, title] of [["val", "Validation"], ["test", "Test"]]) {
    const values = Object.entries(SCORE_NAMES)
      .filter(([key]) => `${prefix}_${key}` in info.scores)
      .map(([key, name]) => `${name} ${info.scores[`${prefix}_${key}`].toFixed(2)}`);
    if (values.length === 0) continue;
    const where = prefix === "val"
      ? (info.epoch ? ` (epoch ${info.epoch})` : "")
      : (info.scores.test_images ? ` (${info.scores.test_images} images)` : "");
    parts.push(`${title}${where}: ${values.join(", ")}.`);
  }
  parts.push(`Chance for ${info.classes.length} classes: ${info.chance.toFixed(2)}.`);
  return parts.join(" ");
}

async function describeModel() {
  try {
    const response = await fetch("/api/model");
    const info = await response.json();
    maxBytes = info.limits.max_bytes;
    imageSize = info.preprocess.image_size;
    modelClasses = info.classes;
    warning = info.warning;
    $("limit").textContent = `, up to ${size(maxBytes)}`;
    $("model").textContent =
      `Model: ${info.file} (${info.kind}, ${info.classes.length} classes: ` +
      `${info.classes.join(", ")}; sha256 ${info.sha256.slice(0, 12)}…)`;
    $("scores").textContent = scoreLine(info);
    $("warning").hidden = !warning;
    if (warning) $("warning").textContent = `Do not trust this model: ${warning}.`;
    if (!info.gradcam) {
      $("gradcam-note").textContent = info.gradcam_note;
    }
    offerDevice(info);
  } catch (err) {
    $("model").textContent = "The server did not describe its model: is it still running?";
  }
}

function offerDevice(info) {
  // The other mode: a link to the on-device page, or why there is none (one sentence).
  $("server-name").textContent = window.location.host;
  if (info.device_url) {
    const link = $("device-link");
    link.href = `${info.device_url}?from=app`;  // the page then offers the way back
    link.hidden = false;
    $("device-note").textContent = ": your browser runs the model itself, and the image " +
      "never leaves this device (the first time, the app needs up to a minute to export " +
      "the model for the browser).";
  } else {
    $("device-note").textContent = `${info.device_note}.`;
  }
}

async function listSamples() {
  const select = $("sample");
  try {
    const samples = await (await fetch("/api/samples")).json();
    const groups = new Map();
    for (const sample of samples) {
      if (!groups.has(sample.class_name)) {
        const group = document.createElement("optgroup");
        group.label = sample.class_name;
        groups.set(sample.class_name, group);
        select.append(group);
      }
      const option = document.createElement("option");
      option.value = sample.url;
      option.textContent = sample.file;
      option.dataset.class = sample.class_name;
      option.dataset.file = sample.file;
      groups.get(sample.class_name).append(option);
    }
    select.disabled = samples.length === 0;
    if (samples.length === 0 && modelClasses.length > 0) {
      // The bundled X-rays are of other classes than this model's: none is offered.
      $("samples").hidden = true;
      $("samples-note").textContent =
        `No sample X-rays to try: the bundled ones are of other classes than this model's ` +
        `(${modelClasses.join(", ")}). Choose an X-ray of your own.`;
      $("samples-note").hidden = false;
    }
  } catch (err) {
    select.disabled = true;
  }
}

async function trySample() {
  const option = $("sample").selectedOptions[0];
  if (!option || !option.value) return;
  let blob;
  try {
    blob = await (await fetch(option.value)).blob();
  } catch (err) {
    showError("No answer from the server: is `cxrlearn app` running?");
    return;
  }
  const file = new File([blob], option.dataset.file, { type: "image/png" });
  classify(file, option.dataset.class);
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
  bringIntoView($("result-panel"));
}

function useServerPreview() {
  // The browser could not draw the file (DICOM); the server read it: show its picture.
  if (browserPreview !== "failed" || !serverPreview) return;
  const img = $("preview");
  img.onload = img.onerror = null;
  img.src = `data:image/png;base64,${serverPreview}`;
  serverPreview = null;  // shown once
  img.hidden = false;
  $("preview-caption").textContent =
    `${previewName}, as the server read it (the browser cannot draw this file)`;
}

function showPreview(file, label) {
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  browserPreview = "";
  serverPreview = null;
  previewName = file.name;
  $("preview-caption").textContent = label ? `${file.name} (sample labelled ${label})` : file.name;
  img.hidden = false;
  img.onload = () => { browserPreview = "ok"; };
  img.onerror = () => {
    // Browsers cannot draw DICOM; the server can still read it, and sends a picture back.
    browserPreview = "failed";
    img.hidden = true;
    $("preview-caption").textContent = `${file.name} (no preview in the browser)`;
    useServerPreview();
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
    fill.style.width = `${(100 * p).toFixed(1)}%`;  // CSSOM: allowed by the page's CSP
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)} %`;
    item.append(label, track, value);
    list.append(item);
  }
}

function showAnswer(answer, label) {
  $("predicted").textContent = answer.predicted;
  $("truth").hidden = !label;
  if (label) $("truth").textContent = `The data set labels this X-ray ${label}.`;
  drawBars(answer);
  // A model of unknown or near-chance quality: grey bars and the warning again.
  $("result").classList.toggle("untrusted", Boolean(answer.warning));
  $("answer-warning").hidden = !answer.warning;
  if (answer.warning) {
    $("answer-warning").textContent =
      "These percentages are not evidence: see the warning at the top of the page.";
  }
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
  serverPreview = answer.image_png;
  useServerPreview();
  $("status").hidden = true;
  $("error").hidden = true;
  $("result").hidden = false;
  bringIntoView($("result-panel"));
}

function bringIntoView(element) {
  // On a phone the answer sits under the image, screens below where the user chose it:
  // scroll its top into view, unless it is in view already (a wide screen, side by side).
  const box = element.getBoundingClientRect();
  if (box.top >= 0 && box.top < window.innerHeight / 2) return;
  const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  element.scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
}

async function askServer(file) {
  // The file -> {answer} or {error}: what the server says (POST /api/predict).
  const form = new FormData();
  form.append("file", file, file.name);
  let response, answer;
  try {
    response = await fetch("/api/predict?gradcam=true", { method: "POST", body: form });
    answer = await response.json();
  } catch (err) {
    return { error: "No answer from the server: is `cxrlearn app` running?" };
  }
  if (!response.ok) return { error: answer.error || `The server answered ${response.status}.` };
  return { answer };
}

async function classify(file, label = null) {
  const request = ++latest;
  $("error").hidden = true;
  showPreview(file, label);
  if (maxBytes !== null && file.size > maxBytes) {
    showError(`${file.name}: the file is ${size(file.size)}; the limit is ${size(maxBytes)}. ` +
              "Choose a smaller image.");
    return;
  }
  $("status").textContent = `Classifying ${file.name}…`;
  $("status").hidden = false;
  const { answer, error } = await askServer(file);
  if (request !== latest) return;  // the user chose another file meanwhile
  if (error) {
    showError(error);
    return;
  }
  showAnswer(answer, label);
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => {
    $("sample").value = "";
    if (input.files.length > 0) classify(input.files[0]);
  });
  $("sample").addEventListener("change", trySample);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();  // without this the browser opens the dropped file itself
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    $("sample").value = "";
    const files = event.dataTransfer.files;
    if (files.length > 0) classify(files[0]);
  });
  // The samples are listed once the model's classes are known (the note names them).
  describeModel().then(listSamples);
}

document.addEventListener("DOMContentLoaded", setUp);
