// The page of `segwise serve`: send an image to POST /predict?format=labels (gray PNG of class indices),
// draw the image with the classes blended in at the chosen opacity, list each class's share of the
// image, let classes be hidden, and offer the mask for download. Everything runs against this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], card: null, image: null, labels: null, hidden: new Set(), maskUrl: null };

async function loadModels() {
  const response = await fetch("models");
  state.models = await response.json();
  for (const card of state.models) $("model").add(new Option(`${card.name} (${card.classes.length} classes)`, card.name));
  state.card = state.models[0];
}

function setStatus(kind, text) {
  $("result").dataset.state = kind;
  $("status").textContent = text;
}

async function predict(file) {
  state.card = state.models.find((card) => card.name === $("model").value) || state.models[0];
  setStatus("busy", `Predicting ${file.name}…`);
  const query = new URLSearchParams({ model: state.card.name, format: "labels", tta: $("tta").value });
  const response = await fetch(`predict?${query}`, { method: "POST", body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" } });
  if (!response.ok) {
    const detail = (await response.json().catch(() => ({}))).detail || response.statusText;
    setStatus("error", `${file.name}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    return;
  }
  const maskBlob = await response.blob();
  const decode = { colorSpaceConversion: "none", premultiplyAlpha: "none" };  // the pixel values are class indices
  state.labels = pixelsOf(await createImageBitmap(maskBlob, decode));
  state.image = await displayable(file, state.labels.width, state.labels.height);
  if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
  state.maskUrl = URL.createObjectURL(maskBlob);
  $("download").href = state.maskUrl;
  $("download").download = file.name.replace(/\.[^.]*$/, "") + "_mask.png";
  state.hidden.clear();
  render();
  legend();
  $("controls").hidden = false;
  setStatus("done", `${file.name}: ${state.labels.width}×${state.labels.height}`);
}

// The image as the browser decodes it; a format it cannot show (e.g. TIFF) is shown as a gray frame.
async function displayable(file, width, height) {
  try {
    return await createImageBitmap(file);
  } catch {
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d");
    context.fillStyle = "#777";
    context.fillRect(0, 0, width, height);
    return canvas.transferToImageBitmap();
  }
}

function pixelsOf(bitmap) {
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const values = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < values.length; i++) values[i] = rgba[4 * i];
  return { width: bitmap.width, height: bitmap.height, values };
}

// The classes present at a pixel: a class index, or for a per-label run the bits of its labels.
function classesAt(value) {
  if (!state.card.per_label) return value === 0 ? [] : [value];
  const found = [];
  for (let bit = 0; bit < state.card.classes.length; bit++) if (value & (1 << bit)) found.push(bit);
  return found;
}

function render() {
  const { width, height, values } = state.labels;
  const canvas = $("view");
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = `${Math.max(width, 480)}px`;  // small images shown larger, pixels kept sharp
  const context = canvas.getContext("2d");
  context.drawImage(state.image, 0, 0, width, height);
  const frame = context.getImageData(0, 0, width, height);
  const alpha = $("opacity").value / 100;
  const palette = state.card.palette;
  for (let i = 0; i < values.length; i++) {
    const shown = classesAt(values[i]).filter((c) => !state.hidden.has(c));
    if (shown.length === 0) continue;
    const colour = palette[shown[0]] || [255, 0, 255];
    for (let k = 0; k < 3; k++) frame.data[4 * i + k] = (1 - alpha) * frame.data[4 * i + k] + alpha * colour[k];
  }
  context.putImageData(frame, 0, 0);
}

function legend() {
  const counts = new Map();
  for (const value of state.labels.values) for (const c of classesAt(value)) counts.set(c, (counts.get(c) || 0) + 1);
  const total = state.labels.values.length;
  const table = $("legend");
  table.replaceChildren();
  state.card.classes.forEach((name, index) => {
    if (!state.card.per_label && index === 0) return;  // the background is what is left uncoloured
    const row = table.insertRow();
    row.dataset.class = index;
    const swatch = row.insertCell();
    swatch.className = "swatch";
    swatch.style.background = `rgb(${(state.card.palette[index] || [255, 0, 255]).join(",")})`;
    row.insertCell().textContent = name;
    row.insertCell().textContent = `${(100 * (counts.get(index) || 0) / total).toFixed(1)} %`;
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = true;
    toggle.title = "show this class";
    toggle.addEventListener("change", () => {
      toggle.checked ? state.hidden.delete(index) : state.hidden.add(index);
      row.classList.toggle("hidden", !toggle.checked);
      render();
    });
    row.insertCell().append(toggle);
  });
}

function enqueue(files) {
  for (const file of files) {
    const item = document.createElement("li");
    item.textContent = file.name;
    item.addEventListener("click", () => select(item, file));
    $("queue").append(item);
  }
  const items = $("queue").children;
  if (files.length) select(items[items.length - files.length], files[0]);
}

function select(item, file) {
  for (const other of $("queue").children) other.classList.toggle("current", other === item);
  predict(file).catch((error) => setStatus("error", `${file.name}: ${error}`));
}

$("files").addEventListener("change", (event) => enqueue([...event.target.files]));
$("opacity").addEventListener("input", () => state.labels && render());
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  enqueue([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/") || /\.tiff?$/i.test(file.name)));
});
loadModels().catch((error) => setStatus("error", `cannot list the models: ${error}`));
