// sarcomakit annotation app: NiiVue in the page, the server's MONAI Label API behind it.
//
// The drawing layer holds everything the annotator made, on the image's own voxel grid: the mask (value 1),
// background scribbles (2) and foreground scribbles (3), the scribble values the server declares in /info/.
// "Segment" sends the whole layer as the label map of /infer (previous mask + all scribbles: the server is
// stateless, like MONAI Label's clients expect), and the mask that comes back replaces value 1 while the
// scribbles stay. "Save final" sends the mask alone.
import { Niivue, NVImage, SLICE_TYPE, DRAG_MODE } from "./niivue.js";

const PEN = { navigate: null, foreground: 3, background: 2, mask: 1, erase: 0 };
const VIEWS = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL,
                multiplanar: SLICE_TYPE.MULTIPLANAR };
const $ = (id) => document.getElementById(id);

const state = { imageId: null, model: "sarcomakit", scribbleModel: "sarcomakit_scribbles", tool: "foreground",
                loaded: false, busy: false, lastLatencyMs: null, segmentations: 0, saves: 0, studies: {} };
const nv = new Niivue({ backColor: [0.08, 0.08, 0.09, 1], show3Dcrosshair: false, dragAndDropEnabled: false,
                        isRadiologicalConvention: true, logLevel: "error" });
nv.opts.dragMode = DRAG_MODE.contrast;  // right drag: window / level
nv.opts.penSize = 1;

// ------------------------------------------------------------------ HTTP
function token() { return localStorage.getItem("sarcomakit-token") || ""; }
function headers() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token: enter it at the top right, then retry.");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? `Error: ${error.message || error}` : "";
  box.hidden = !error;
}
function status(text) { $("status").textContent = text; }
async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.style.cursor = "progress";
  try { showError(null); await action(); } catch (error) { showError(error); } finally {
    state.busy = false;
    document.body.style.cursor = "";
  }
}

// ------------------------------------------------------------------ studies
async function refreshStudies() {
  const data = await (await api("/datastore/?output=all")).json();
  state.studies = data.objects || {};
  const list = $("studies");
  list.replaceChildren();
  for (const [id, entry] of Object.entries(state.studies)) {
    const item = document.createElement("li");
    item.dataset.id = id;
    item.className = id === state.imageId ? "open" : "";
    const name = document.createElement("span");
    name.textContent = id;
    const badge = document.createElement("span");
    badge.className = `badge ${entry.status.replace(" ", "-")}`;
    badge.textContent = entry.status;
    item.append(name, badge);
    item.addEventListener("click", () => guarded(() => openStudy(id)));
    list.append(item);
  }
}

async function openStudy(id) {
  status(`loading ${id} ...`);
  state.loaded = false;
  const started = performance.now();
  const buffer = await (await api(`/datastore/image?image=${encodeURIComponent(id)}`)).arrayBuffer();
  const ext = (state.studies[id] && state.studies[id].image.ext) || ".nii.gz";
  await nv.loadFromArrayBuffer(buffer, `${id}${ext}`);
  nv.createEmptyDrawing();
  // a saved label is loaded into the drawing as the mask, to be corrected
  if (state.studies[id] && state.studies[id].labels && state.studies[id].labels.final) {
    const label = await (await api(`/datastore/label?label=${encodeURIComponent(id)}&tag=final`)).arrayBuffer();
    await replaceMask(label, false);
  }
  state.imageId = id;
  setupChannels();
  setWindowInputs();
  setTool(state.tool);
  nv.setDrawOpacity($("opacity").value / 100);
  $("study-title").textContent = id;
  state.loaded = true;
  await refreshStudies();
  status(`${id}: ${nv.volumes[0].dims.slice(1, 4).join(" x ")} voxels, loaded in `
         + `${Math.round(performance.now() - started)} ms. Draw foreground and background scribbles, then Segment.`);
}

async function nextStudy() {
  const strategy = $("strategy").value || "random";
  const response = await api(`/activelearning/${encodeURIComponent(strategy)}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_id: "browser" }) });
  const sample = await response.json();
  if (!sample.id) { status("Every study has a final label."); return; }
  await refreshStudies();
  await openStudy(sample.id);
}

async function uploadFiles(files) {
  for (const file of files) {
    const stem = file.name.replace(/\.(nii\.gz|nii|nrrd|mha|zip)$/i, "").replace(/[^A-Za-z0-9._+-]/g, "_");
    const form = new FormData();
    form.append("params", "{}");
    form.append("file", file, file.name);
    status(`uploading ${file.name} ...`);
    await api(`/datastore/?image=${encodeURIComponent(stem)}`, { method: "PUT", body: form });
  }
  await refreshStudies();
  status(`uploaded ${files.length} file(s).`);
}

// ------------------------------------------------------------------ drawing
function bitmap() { return nv.drawBitmap; }

async function drawingBytes(maskOnly) {
  const draw = bitmap();
  let saved = null;
  if (maskOnly) {
    saved = draw.slice();
    for (let i = 0; i < draw.length; i++) if (draw[i] !== 1) draw[i] = 0;
  }
  try {
    return await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
  } finally {
    if (saved) draw.set(saved);
  }
}

async function replaceMask(buffer, keepScribbles) {
  const old = keepScribbles && bitmap() ? bitmap().slice() : null;
  const mask = await NVImage.loadFromUrl({ url: "mask.nii.gz", buffer, name: "mask.nii.gz" });
  if (!nv.loadDrawing(mask)) throw new Error("the mask does not match the image's grid.");
  const draw = bitmap();
  for (let i = 0; i < draw.length; i++) {
    draw[i] = draw[i] > 0 ? 1 : 0;
    if (old && (old[i] === 2 || old[i] === 3)) draw[i] = old[i];
  }
  nv.drawAddUndoBitmap();
  nv.refreshDrawing(true);
}

function countValues() {
  const counts = [0, 0, 0, 0];
  const draw = bitmap();
  if (draw) for (let i = 0; i < draw.length; i++) if (draw[i] < 4) counts[draw[i]]++;
  return { mask: counts[1], background: counts[2], foreground: counts[3] };
}

async function segment() {
  if (!state.loaded) throw new Error("open a study first.");
  const counts = countValues();
  if (counts.foreground === 0) throw new Error("draw a foreground scribble (f) inside the tumour first.");
  const started = performance.now();
  const form = new FormData();
  form.append("params", JSON.stringify({ client_id: "browser", label_info: [
    { name: "foreground_scribbles", id: 3 }, { name: "background_scribbles", id: 2 }] }));
  form.append("label", new Blob([await drawingBytes(false)]), "scribbles.nii");
  status("segmenting ...");
  const response = await api(`/infer/${encodeURIComponent(state.scribbleModel)}`
                             + `?image=${encodeURIComponent(state.imageId)}&output=image`, { method: "POST", body: form });
  const buffer = await response.arrayBuffer();
  await replaceMask(buffer, true);
  const total = performance.now() - started;
  const model = Number(response.headers.get("X-Latency-Model-Ms"));
  state.lastLatencyMs = total;
  state.segmentations += 1;
  $("latency").textContent = `latency: ${Math.round(total)} ms (model ${Math.round(model)} ms)`;
  status(`mask: ${response.headers.get("X-Mask-Voxels")} voxels. Correct with more scribbles, or Save final.`);
}

async function saveFinal() {
  if (!state.loaded) throw new Error("open a study first.");
  if (countValues().mask === 0) throw new Error("the mask is empty: segment (s) or paint it (m) first.");
  const form = new FormData();
  form.append("params", JSON.stringify({ client_id: "browser" }));
  form.append("label", new Blob([await drawingBytes(true)]), "label.nii");
  const answer = await (await api(`/datastore/label?image=${encodeURIComponent(state.imageId)}&tag=final`,
                                  { method: "PUT", body: form })).json();
  state.saves += 1;
  await refreshStudies();
  status(`saved ${state.imageId} as final (version ${answer.version}). Press "." for the next study.`);
}

function clearScribbles() {
  const draw = bitmap();
  if (!draw) return;
  nv.drawAddUndoBitmap();
  for (let i = 0; i < draw.length; i++) if (draw[i] === 2 || draw[i] === 3) draw[i] = 0;
  nv.refreshDrawing(true);
}

// ------------------------------------------------------------------ controls
function setTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) button.classList.toggle("active", button.dataset.tool === tool);
  if (PEN[tool] === null) { nv.setDrawingEnabled(false); return; }
  nv.setDrawingEnabled(true);
  nv.setPenValue(PEN[tool], false);
}
function setView(view) {
  for (const button of document.querySelectorAll("[data-view]")) button.classList.toggle("active", button.dataset.view === view);
  nv.setSliceType(VIEWS[view]);
}
function setBrush(size) {
  const value = Math.max(1, Math.min(15, size));
  $("brush").value = value;
  $("brush-value").textContent = value;
  nv.opts.penSize = value;
}
function setupChannels() {
  const volume = nv.volumes[0];
  const frames = volume.nFrame4D || 1;
  $("channel-box").hidden = frames < 2;
  $("channel").replaceChildren(...Array.from({ length: frames }, (_, i) => new Option(`${i + 1}`, `${i}`)));
}
function setWindowInputs() {
  const volume = nv.volumes[0];
  $("wl-min").value = Number(volume.cal_min).toPrecision(4);
  $("wl-max").value = Number(volume.cal_max).toPrecision(4);
}
function applyWindow() {
  const volume = nv.volumes[0];
  const low = Number($("wl-min").value), high = Number($("wl-max").value);
  if (!(high > low)) { showError(new Error("the window's upper value must exceed its lower value.")); return; }
  volume.cal_min = low;
  volume.cal_max = high;
  nv.updateGLVolume();
}

async function loadInfo() {
  const info = await (await api("/info/")).json();
  const models = Object.entries(info.models || {});
  const scribbles = models.find(([, m]) => m.type === "scribbles");
  const points = models.find(([, m]) => m.type !== "scribbles");
  if (scribbles) state.scribbleModel = scribbles[0];
  if (points) state.model = points[0];
  $("strategy").replaceChildren(...Object.keys(info.strategies || { random: {} }).map((s) => new Option(s, s)));
}

function bind() {
  nv.attachToCanvas($("gl"));
  nv.setCrosshairWidth(0.5);
  nv.setCrosshairColor([1, 0.8, 0, 0.5]);
  $("token").value = token();
  $("token").addEventListener("change", () => {
    localStorage.setItem("sarcomakit-token", $("token").value.trim());
    guarded(start);
  });
  for (const button of document.querySelectorAll("[data-tool]")) button.addEventListener("click", () => setTool(button.dataset.tool));
  for (const button of document.querySelectorAll("[data-view]")) button.addEventListener("click", () => setView(button.dataset.view));
  $("brush").addEventListener("input", () => setBrush(Number($("brush").value)));
  $("opacity").addEventListener("input", () => nv.setDrawOpacity($("opacity").value / 100));
  $("channel").addEventListener("change", () => nv.setFrame4D(nv.volumes[0].id, Number($("channel").value)));
  $("wl-min").addEventListener("change", applyWindow);
  $("wl-max").addEventListener("change", applyWindow);
  $("wl-auto").addEventListener("click", () => {
    const volume = nv.volumes[0];
    volume.cal_min = volume.robust_min;
    volume.cal_max = volume.robust_max;
    nv.updateGLVolume();
    setWindowInputs();
  });
  nv.onIntensityChange = () => setWindowInputs();
  $("undo").addEventListener("click", () => nv.drawUndo());
  $("clear").addEventListener("click", clearScribbles);
  $("segment").addEventListener("click", () => guarded(segment));
  $("save").addEventListener("click", () => guarded(saveFinal));
  $("next").addEventListener("click", () => guarded(nextStudy));
  const aside = document.querySelector("aside");
  aside.addEventListener("dragover", (event) => event.preventDefault());
  aside.addEventListener("drop", (event) => {
    event.preventDefault();
    guarded(() => uploadFiles([...event.dataTransfer.files]));
  });
  document.addEventListener("keydown", (event) => {
    const key = event.key;
    // Ctrl+S and Ctrl+Z work everywhere; single keys not while typing in a field or choosing in a list
    if ((event.ctrlKey || event.metaKey) && key === "s") { event.preventDefault(); guarded(saveFinal); return; }
    if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); nv.drawUndo(); return; }
    const typing = (event.target instanceof HTMLInputElement && event.target.type !== "range")
                   || event.target instanceof HTMLSelectElement;
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      f: () => setTool("foreground"), b: () => setTool("background"), m: () => setTool("mask"),
      e: () => setTool("erase"), n: () => setTool("navigate"), s: () => guarded(segment),
      Enter: () => guarded(segment), u: () => nv.drawUndo(), c: clearScribbles, ".": () => guarded(nextStudy),
      "[": () => setBrush(nv.opts.penSize - 1), "]": () => setBrush(nv.opts.penSize + 1),
      1: () => setView("axial"), 2: () => setView("coronal"), 3: () => setView("sagittal"), 4: () => setView("multiplanar"),
    };
    if (actions[key]) { event.preventDefault(); actions[key](); }
  });
}

async function start() {
  await loadInfo();
  await refreshStudies();
  $("token-box").hidden = !token() && $("token-box").hidden;
}

// For scripted use and the browser test: where a point in mm (RAS, NiiVue's world space) is on the page.
function goToMM(mm) {
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
}
function mmToPage(mm) {
  const position = nv.frac2canvasPos(nv.mm2frac(mm));
  if (!position) return null;
  const canvas = $("gl");
  const rect = canvas.getBoundingClientRect();
  const scale = canvas.width / rect.width;
  return [rect.left + position[0] / scale, rect.top + position[1] / scale];
}

window.sarcomakit = { nv, state, goToMM, mmToPage, countValues, openStudy, segment, saveFinal };
bind();
setView("axial");
guarded(start);
