// cxrlearn on this device: decode an X-ray, run the ONNX model with ONNX Runtime Web
// (WebAssembly, one thread), show each class's probability and the class activation map.
// Nothing is uploaded: the page fetches only its own files, which the service worker keeps.
//
// Every step mirrors cxrlearn's Python code, which the tests check to 1e-4:
//   grey        = PIL's convert("L"): (19595 R + 38470 G + 7471 B + 32768) >> 16, ITU-R 601-2
//   x           = grey / 255 (float32), as cxrlearn.data.load_image
//                 (DICOM: dicom.js, rescaled and min-max scaled as cxrlearn.data.dicom)
//   probs, cams = the ONNX graph (stretch, resize, normalise, ResNet18, T, softmax; CAM)
//   map         = ReLU(cams[top]), bilinear to S x S (align_corners=False), min-max to [0, 1]
"use strict";

const MAX_PIXELS = 4096 * 4096; // cxrlearn app's APP_MAX_PIXELS: a 64-megapixel sort is too much
const state = { session: null, card: null, lastProbs: null, lastMap: null, busy: false };
window.cxrlearn = state; // read by tests (and by the curious, in the console)

class UserError extends Error {}

const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

// Width and height from the file's header, before decoding: a 8000 x 8000 PNG is refused
// without allocating its 256 MB of pixels. null when the bytes are neither PNG nor JPEG.
function imageSize(bytes) {
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length >= 24 && png.every((b, i) => bytes[i] === b)) {
    const v = new DataView(bytes.buffer, bytes.byteOffset);
    return { kind: "PNG", width: v.getUint32(16), height: v.getUint32(20) };
  }
  if (bytes.length >= 4 && bytes[0] === 0xff && bytes[1] === 0xd8) {
    let i = 2;
    while (i + 9 < bytes.length) {
      if (bytes[i] !== 0xff) { i += 1; continue; }
      const marker = bytes[i + 1];
      const length = (bytes[i + 2] << 8) | bytes[i + 3];
      // SOF0..SOF15 carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { kind: "JPEG", height: (bytes[i + 5] << 8) | bytes[i + 6],
                 width: (bytes[i + 7] << 8) | bytes[i + 8] };
      }
      i += 2 + length;
    }
  }
  return null;
}

// Grey levels as cxrlearn.data.load_image reads them: transparent pixels over black, then
// ITU-R 601-2 luma with PIL's integer rounding, then / 255.
function toGrey(bitmap) {
  const { width, height } = bitmap;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const x = new Float32Array(width * height);
  for (let i = 0, j = 0; i < x.length; i += 1, j += 4) {
    const grey = (19595 * rgba[j] + 38470 * rgba[j + 1] + 7471 * rgba[j + 2] + 32768) >>> 16;
    x[i] = grey / 255; // rounded once to float32: the same number as torch's float32 division
  }
  return { x, width, height };
}

// ReLU, bilinear upsampling (PyTorch's align_corners=False), min-max: cxrlearn.gradcam's
// steps after the weighted sum. cams: (K, h, w) flat; returns (S, S) flat in [0, 1].
function camMap(cams, dims, target, size) {
  const [, , h, w] = dims;
  const base = target * h * w;
  const at = (i, j) => Math.max(cams[base + i * w + j], 0);
  const out = new Float64Array(size * size);
  const source = (d, n) => Math.max((d + 0.5) * (n / size) - 0.5, 0);
  for (let r = 0; r < size; r += 1) {
    const sy = source(r, h);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, h - 1);
    const ly = sy - y0;
    for (let c = 0; c < size; c += 1) {
      const sx = source(c, w);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, w - 1);
      const lx = sx - x0;
      out[r * size + c] = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1))
        + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1));
    }
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of out) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi > lo ? hi - lo : 1; // a constant map carries no "where": all zero
  return out.map((v) => (v - lo) / span);
}

// A blue-to-red colour ramp (like matplotlib's "jet", in four pieces).
function colour(v) {
  const clamp = (t) => Math.round(255 * Math.min(Math.max(t, 0), 1));
  return [clamp(1.5 - Math.abs(4 * v - 3)), clamp(1.5 - Math.abs(4 * v - 2)),
          clamp(1.5 - Math.abs(4 * v - 1))];
}

function draw(bitmap, map, size) {
  const canvas = $("view");
  const scale = Math.min(640 / bitmap.width, 640 / bitmap.height, 1);
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  // The network saw the whole image squeezed to S x S, so the map stretches back over it.
  const small = document.createElement("canvas");
  small.width = size;
  small.height = size;
  const pixels = small.getContext("2d").createImageData(size, size);
  map.forEach((v, i) => {
    const [r, g, b] = colour(v);
    pixels.data.set([r, g, b, Math.round(110 * v + 40)], 4 * i);
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function showResult(probs, names) {
  const rows = $("rows");
  rows.replaceChildren();
  const top = probs.indexOf(Math.max(...probs));
  names.forEach((name, k) => {
    const row = document.createElement("div");
    row.className = k === top ? "row top" : "row";
    row.dataset.class = name;
    row.dataset.probability = String(probs[k]);
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * probs[k]).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * probs[k]).toFixed(1)}%`;
    row.append(label, bar, pct);
    rows.append(row);
  });
  $("answer").textContent = `Most likely: ${names[top]} (${(100 * probs[top]).toFixed(1)}%)`;
  return top;
}

// A DICOM file's grey image (dicom.js) as a picture to draw under the map.
function greyBitmap(grey) {
  const pixels = new ImageData(grey.width, grey.height);
  grey.x.forEach((v, i) => {
    const level = Math.round(255 * v);
    pixels.data.set([level, level, level, 255], 4 * i);
  });
  return createImageBitmap(pixels);
}

// The file's grey image, as cxrlearn.data.load_image reads it, and a picture of it.
async function decode(file, bytes) {
  if (looksLikeDicom(bytes, file.name)) { // "DICM" at byte 128, or a .dcm name
    let grey;
    try {
      grey = readDicom(bytes, MAX_PIXELS);
    } catch (e) {
      if (e instanceof DicomError) throw new UserError(`${file.name}: ${e.message}`);
      throw e;
    }
    return { grey, bitmap: await greyBitmap(grey) };
  }
  const size = imageSize(bytes);
  if (size === null) {
    throw new UserError(`${file.name} is not a PNG, JPEG or DICOM image; this page reads ` +
      "those three.");
  }
  const pixels = size.width * size.height;
  if (pixels > MAX_PIXELS) {
    throw new UserError(`${file.name} is ${size.width} x ${size.height} = ` +
      `${pixels.toLocaleString("en")} pixels, more than this page's limit of ` +
      `${MAX_PIXELS.toLocaleString("en")}; resize it first.`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]),
      { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new UserError(`${file.name} could not be decoded: a damaged ${size.kind} file?`);
  }
  return { grey: toGrey(bitmap), bitmap };
}

async function predict(file) {
  if (file.size === 0) {
    throw new UserError(`${file.name} is empty (0 bytes): choose a PNG, JPEG or DICOM X-ray.`);
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  const { grey, bitmap } = await decode(file, bytes);
  state.lastInput = grey.x; // what the model was given (tests compare it with load_image)
  const started = performance.now();
  const input = new ort.Tensor("float32", grey.x, [1, 1, grey.height, grey.width]);
  const out = await state.session.run({ image: input });
  state.lastMs = performance.now() - started;
  const probs = Array.from(out.probs.data);
  const top = showResult(probs, state.card.class_names);
  const s = state.card.preprocessing.image_size;
  const map = camMap(out.cams.data, out.cams.dims, top, s);
  state.lastProbs = probs;
  state.lastMap = Array.from(map);
  draw(bitmap, map, s);
  $("result").hidden = false;
  setStatus(`${file.name}: ${grey.width} x ${grey.height}, answered in ` +
    `${Math.round(state.lastMs)} ms on this device.`);
}

async function onFiles(files) {
  if (!files || files.length === 0 || state.busy) return;
  state.busy = true;
  $("error").hidden = true;
  try {
    await predict(files[0]);
  } catch (e) {
    showError(e instanceof UserError ? e.message : `Could not classify it: ${e.message}`);
    setStatus("Ready. Choose another X-ray.");
  } finally {
    state.busy = false;
    $("file").value = ""; // choosing the same file again is a new choice
  }
}

function showCard(card) {
  $("warning").textContent = card.warning;
  const fields = [
    ["Classes", card.class_names.join(", ")],
    ["Input", `grey, any size; stretched (${card.preprocessing.low}th to ` +
      `${card.preprocessing.high}th percentile), resized to ${card.preprocessing.image_size} px`],
    ["Temperature", String(card.temperature)],
    ["Weights", card.quantization],
    ["Scores", card.scores || "not measured on a test split"],
    ["Weights sha256", card.weights_sha256],
    ["Model file", `${card.model_file} (${(card.model_bytes / 1e6).toFixed(1)} MB)`],
    ["Runtime", `ONNX Runtime Web ${card.runtime_version}, WebAssembly, 1 thread`],
    ["Made by", `cxrlearn ${card.cxrlearn_version}`],
  ];
  $("card-fields").replaceChildren(...fields.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
}

async function start() {
  $("file").addEventListener("change", (e) => onFiles(e.target.files));
  // `cxrlearn app` serves this very page as its "run on this device" mode (its link adds
  // ?from=app): then offer the way back to the app's own page, which answers on the server.
  $("switch").hidden = new URLSearchParams(window.location.search).get("from") !== "app";
  try {
    state.card = await (await fetch("model.json")).json();
    showCard(state.card);
    ort.env.wasm.wasmPaths = "./";
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    const started = performance.now();
    state.session = await ort.InferenceSession.create(state.card.model_file,
      { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    state.startMs = performance.now() - started;
    $("file").disabled = false;
    setStatus("Ready. Choose a chest X-ray (PNG, JPEG or DICOM).");
  } catch (e) {
    showError(`The model could not be loaded: ${e.message}`);
  }
  if ("serviceWorker" in navigator) {
    try {
      await navigator.serviceWorker.register("sw.js");
      state.offlineReady = (await navigator.serviceWorker.ready).active !== null;
    } catch (e) {
      state.offlineReady = false; // e.g. served from file://: works, but not offline
    }
  }
}

start();
