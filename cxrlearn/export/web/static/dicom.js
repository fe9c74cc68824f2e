// A small DICOM reader for the phone app: uncompressed grey radiographs, read in the browser.
//
// DICOM is how X-rays leave the scanner. A Part 10 file is a 128-byte preamble, "DICM", a
// file meta group (always explicit VR little endian) that names the *transfer syntax*, then
// the data set: elements (tag, VR, length, value), the pixels last, as (7FE0,0010).
// This reader takes the two uncompressed little-endian syntaxes (DICOM PS3.5, section 7):
//
//   1.2.840.10008.1.2      implicit VR: tag, 4-byte length, value (the VR is the tag's own)
//   1.2.840.10008.1.2.1    explicit VR: tag, 2-letter VR, 2- or 4-byte length, value
//
// and refuses every other one (JPEG, JPEG 2000, RLE, deflate, big endian) with one sentence.
//
// The grey image is exactly what cxrlearn.data.dicom.load_dicom gives in Python (pydicom):
//   stored  = the pixel, 8, 16 or 32 bits; only its BitsStored low bits count, sign-extended
//             when PixelRepresentation is 1 (pydicom's pixel_array does the same)
//   value   = stored * RescaleSlope + RescaleIntercept      (float64; missing: 1 and 0)
//   x       = (value - min) / (max - min)                   (0 for a constant image)
//   x       = 1 - x for MONOCHROME1 (high values are black there), then rounded to float32
// No window (WindowCenter/Width) is applied: the model's contrast stretch picks its own.
// tests/test_web_browser.py checks the result equals load_image's, value for value.
"use strict";

/** A file this reader refuses, with the one sentence that says why. */
class DicomError extends Error {}

const DICOM_SYNTAXES = { "1.2.840.10008.1.2": false, "1.2.840.10008.1.2.1": true }; // explicit?
const OTHER_SYNTAXES = {
  "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
  "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
  "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.51": "JPEG Extended",
  "1.2.840.10008.1.2.4.57": "JPEG Lossless", "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
  "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
  "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000",
  "1.2.840.10008.1.2.5": "RLE Lossless",
};
// Explicit VRs whose length takes 4 bytes, after 2 reserved ones (PS3.5, 7.1.2).
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
  "UT", "UV"]);
const UNDEFINED = 0xffffffff; // a length of "until the delimiter" (sequences, items)
const ITEM = 0xfffee000;
const ITEM_END = 0xfffee00d;
const SEQUENCE_END = 0xfffee0dd;
const PIXEL_DATA = 0x7fe00010;
const TRANSFER_SYNTAX = 0x00020010;
// The elements read, and how (implicit VR gives no VR: each tag's is fixed by the standard).
const WANTED = {
  0x00280002: "US", 0x00280004: "CS", 0x00280008: "IS", 0x00280010: "US", 0x00280011: "US",
  0x00280100: "US", 0x00280101: "US", 0x00280103: "US", 0x00281052: "DS", 0x00281053: "DS",
  [PIXEL_DATA]: "OW",
};
const NAMES = {
  0x00280002: "SamplesPerPixel", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
  0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280101: "BitsStored",
  0x00280103: "PixelRepresentation", 0x00281052: "RescaleIntercept",
  0x00281053: "RescaleSlope",
};

/** True for bytes with "DICM" at 128, or a .dcm/.dicom name (as load_image decides). */
function looksLikeDicom(bytes, name) {
  const magic = bytes.length >= 132 && String.fromCharCode(...bytes.subarray(128, 132));
  return magic === "DICM" || /\.(dcm|dicom)$/i.test(name);
}

// One element's header at `pos`: {tag, vr, length, value (its first byte)}.
function element(view, pos, explicit) {
  const tag = ((view.getUint16(pos, true) << 16) | view.getUint16(pos + 2, true)) >>> 0;
  if (tag >>> 16 === 0xfffe) { // items and delimiters carry no VR, in either syntax
    return { tag, vr: null, length: view.getUint32(pos + 4, true), value: pos + 8 };
  }
  if (!explicit) return { tag, vr: null, length: view.getUint32(pos + 4, true), value: pos + 8 };
  const vr = String.fromCharCode(view.getUint8(pos + 4), view.getUint8(pos + 5));
  if (LONG_VRS.has(vr)) {
    return { tag, vr, length: view.getUint32(pos + 8, true), value: pos + 12 };
  }
  return { tag, vr, length: view.getUint16(pos + 6, true), value: pos + 8 };
}

// Walk the elements from `pos` to `end` (or to the delimiter `stop`), keeping the wanted
// ones of the top level in `found`. Sequences are skipped, nested or not: an undefined
// length is walked to its delimiter, a defined one jumped over.
function walk(view, pos, end, explicit, stop, found) {
  while (pos < end) {
    const e = element(view, pos, explicit);
    if (e.tag === stop) return e.value;
    if (e.length === UNDEFINED) {
      if (e.tag === PIXEL_DATA) {
        throw new DicomError("its pixel data is compressed (encapsulated); this page reads " +
          "uncompressed DICOM only: save it as PNG first.");
      }
      pos = walk(view, e.value, end, explicit, e.tag === ITEM ? ITEM_END : SEQUENCE_END, null);
      continue;
    }
    if (found !== null && e.tag in WANTED) found[e.tag] = e;
    pos = e.value + e.length;
  }
  if (stop !== null || pos > end) throw new DicomError("the DICOM file is truncated.");
  return pos;
}

function text(bytes, e) {
  // CS, DS, IS and UI values: ASCII, padded with a space or a NUL to an even length; at
  // most 64 bytes (the longest these VRs allow), so a hostile length costs nothing.
  return String.fromCharCode(...bytes.subarray(e.value, e.value + Math.min(e.length, 64)))
    .replace(/[\0 ]+$/, "").trim();
}

// One number of the header, or `fallback` when the tag is missing or empty (load_dicom's
// `_number`): US is binary; DS and IS are text, and must be one finite number.
function number(view, bytes, found, tag, fallback) {
  const e = found[tag];
  if (e === undefined || e.length === 0) return fallback;
  if (WANTED[tag] === "US") return view.getUint16(e.value, true);
  const words = text(bytes, e);
  if (words === "") return fallback;
  const value = Number(words);
  if (!Number.isFinite(value) || words.includes("\\")) {
    throw new DicomError(`the DICOM tag ${NAMES[tag]} is "${words.slice(0, 40)}", not one number.`);
  }
  return value;
}

/**
 * Read an uncompressed grey DICOM file as load_dicom does.
 * @param {Uint8Array} bytes The whole file.
 * @param {number} maxPixels Refuse larger images, from the header, before any pixel is read.
 * @returns {{x: Float32Array, width: number, height: number}} grey in [0, 1], row by row.
 * @throws {DicomError} Not DICOM Part 10, another transfer syntax, not one grey frame,
 *   too large, or truncated: the message is one sentence, for a person.
 */
function readDicom(bytes, maxPixels) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 132 || String.fromCharCode(...bytes.subarray(128, 132)) !== "DICM") {
    throw new DicomError("not a DICOM file (no DICM marker at byte 128): expected a DICOM " +
      "Part 10 file.");
  }
  let syntax = null;
  let pos = 132;
  try {
    while (pos + 8 <= bytes.length && view.getUint16(pos, true) === 0x0002) { // file meta
      const e = element(view, pos, true);
      if (e.tag === TRANSFER_SYNTAX) syntax = text(bytes, e);
      pos = e.value + e.length;
    }
  } catch (e) {
    throw new DicomError("the DICOM file is truncated.");
  }
  if (!(syntax in DICOM_SYNTAXES)) {
    const name = OTHER_SYNTAXES[syntax] || `transfer syntax ${syntax || "(none given)"}`;
    throw new DicomError(`the DICOM file is stored as ${name}; this page reads uncompressed ` +
      "DICOM only (implicit or explicit VR little endian): save it as PNG first.");
  }
  const found = {};
  try {
    walk(view, pos, bytes.length, DICOM_SYNTAXES[syntax], null, found);
  } catch (e) {
    if (e instanceof DicomError) throw e;
    throw new DicomError("the DICOM file is truncated."); // a RangeError of the DataView
  }
  const pixels = found[PIXEL_DATA];
  if (pixels === undefined) throw new DicomError("the DICOM file holds no image (no PixelData).");
  const get = (tag, fallback) => number(view, bytes, found, tag, fallback);
  const rows = get(0x00280010, 0);
  const cols = get(0x00280011, 0);
  if (rows * cols > maxPixels) {
    throw new DicomError(`the image is ${cols} x ${rows} = ${(rows * cols).toLocaleString("en")} ` +
      `pixels, more than this page's limit of ${maxPixels.toLocaleString("en")}.`);
  }
  if (get(0x00280008, 1) > 1) {
    throw new DicomError("multi-frame DICOM: save the frame to classify as its own file.");
  }
  const photometric = found[0x00280004] ? text(bytes, found[0x00280004]) : "MONOCHROME2";
  if (!["MONOCHROME1", "MONOCHROME2"].includes(photometric) || get(0x00280002, 1) !== 1) {
    throw new DicomError(`photometric interpretation ${photometric}; only grey ` +
      "(MONOCHROME1/2) radiographs are read.");
  }
  const allocated = get(0x00280100, 16);
  const stored = get(0x00280101, allocated);
  const signed = get(0x00280103, 0) === 1;
  if (![8, 16, 32].includes(allocated) || stored < 1 || stored > allocated) {
    throw new DicomError(`${allocated}-bit pixels (${stored} bits stored); this page reads ` +
      "8, 16 or 32 bits.");
  }
  const n = rows * cols;
  const size = allocated / 8;
  if (n === 0 || pixels.length < n * size || pixels.value + n * size > bytes.length) {
    throw new DicomError("the DICOM file is truncated: fewer pixel bytes than Rows x Columns.");
  }
  const slope = get(0x00281053, 1);
  const intercept = get(0x00281052, 0);
  // stored -> value, as pydicom and load_dicom: the low `stored` bits, sign-extended.
  const top = 2 ** stored;
  const read = [null, (i) => view.getUint8(pixels.value + i), (i) => view.getUint16(
    pixels.value + 2 * i, true), null, (i) => view.getUint32(pixels.value + 4 * i, true)][size];
  const value = (i) => {
    let v = read(i) % top;
    if (signed && v >= top / 2) v -= top;
    return v * slope + intercept;
  };
  let low = Infinity;
  let high = -Infinity;
  for (let i = 0; i < n; i += 1) {
    const v = value(i);
    if (v < low) low = v;
    if (v > high) high = v;
  }
  const x = new Float32Array(n); // each value rounded once to float32, as numpy's astype
  const invert = photometric === "MONOCHROME1";
  for (let i = 0; i < n; i += 1) {
    const scaled = high > low ? (value(i) - low) / (high - low) : 0;
    x[i] = invert ? 1 - scaled : scaled;
  }
  return { x, width: cols, height: rows };
}
