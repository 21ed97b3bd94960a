// rendernode dashboard: one WebSocket for every job's events, REST for details. No build step, no CDN.
"use strict";

const THUMBS = 12;
const LOG_LINES = 40;
const COLORS = { queued: "#4a505c", rendering: "#3d8bfd", done: "#3fb96b", failed: "#e5534b" };
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const state = {
  jobs: new Map(),        // id -> job body (as GET /job/{id} shapes it), kept current by events
  gseq: 0,                // last global event sequence seen; sent back as ?since= on reconnect
  selected: null,         // id of the job shown in the detail panel
  frames: new Map(),      // selected job: frame -> {state, percent}
  thumbs: [],             // selected job: newest finished frames first
  socket: null,
  retryMs: 500,
  renderQueued: false,
  farm: false,            // true when the server is a farm orchestrator (it has a nodes panel)
};

// --- auth: a token given as ?token= in the page URL is used for every request ---
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("rendernode-token", params.get("token"));
const token = sessionStorage.getItem("rendernode-token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const text = await response.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* plain text (logs) */ }
  if (!response.ok) throw new Error((body && body.message) || response.status + " " + response.statusText);
  return body;
}

const $ = (selector) => document.querySelector(selector);
const RANK = { queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };

// Keep a job's body from the REST API without letting an answer that is older than the events
// already applied (requests and the socket race) move the job backwards.
function remember(body) {
  const known = state.jobs.get(body.id);
  if (known && (RANK[known.status] > RANK[body.status] || known.frames.done > body.frames.done)) {
    Object.assign(body, { status: known.status, frames: known.frames, percent: known.percent,
      eta_seconds: known.eta_seconds, error: known.error || body.error });
  }
  state.jobs.set(body.id, body);
  return body;
}
const fmtEta = (s) => (s === null || s === undefined ? "" : s < 60 ? Math.ceil(s) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s");

// --- live connection ---
function setConnection(kind, text) {
  const el = $("#conn");
  el.className = "conn conn-" + kind;
  el.dataset.state = kind;
  el.textContent = text;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const since = state.gseq > 0 ? "?since=" + state.gseq : "";
  const socket = new WebSocket(withToken(scheme + "//" + location.host + "/ws" + since));
  state.socket = socket;
  setConnection("connecting", "connecting…");
  socket.onopen = () => { state.retryMs = 500; setConnection("live", "live"); };
  socket.onmessage = (message) => handle(JSON.parse(message.data));
  socket.onclose = (event) => {
    setConnection("offline", event.code === 1013 ? "catching up…" : "offline — reconnecting");
    const wait = event.code === 1013 ? 100 : state.retryMs;
    state.retryMs = Math.min(state.retryMs * 2, 5000);
    setTimeout(connect, wait);
  };
}

function handle(event) {
  if (event.type === "snapshot") {
    for (const job of event.jobs) remember(job);
    state.gseq = event.gseq;
    if (state.selected) selectJob(state.selected);
    scheduleRender();
    return;
  }
  if (event.type === "pong") return;
  if (event.job_id === "_nodes") { loadNodes(); return; }
  if (event.gseq) state.gseq = event.gseq;
  const job = state.jobs.get(event.job_id);
  if (!job) {
    // A job from outside the snapshot window (or submitted elsewhere): fetch it whole once.
    api("/job/" + event.job_id).then((body) => { remember(body); scheduleRender(); }).catch(() => {});
    return;
  }
  if (state.farm && (event.type.startsWith("chunk_") || TERMINAL.has(job.status))) refreshNodesSoon();
  applyToJob(job, event);
  if (event.job_id === state.selected) applyToDetail(job, event);
  scheduleRender();
}

function applyToJob(job, event) {
  switch (event.type) {
    case "job_started":
      job.status = "running"; job.pid = event.pid; job.queue_position = null; break;
    case "frame_started":
      if (job.status === "queued") job.status = "running";
      job.current_frame = event.frame; job.current_frame_percent = 0; break;
    case "frame_progress":
      if (job.status === "queued") job.status = "running";
      job.current_frame = event.frame; job.current_frame_percent = event.percent;
      if (event.job_percent != null) job.percent = event.job_percent;
      job.eta_seconds = event.eta_seconds; break;
    case "frame_done":
      job.frames.done = event.frames_done; job.percent = event.job_percent; job.eta_seconds = event.eta_seconds; break;
    case "job_completed": case "job_failed": case "job_cancelled":
      job.status = event.type.slice(4); job.error = event.error; job.exit_code = event.exit_code;
      job.frames.done = event.frames_done; job.eta_seconds = 0; job.current_frame = null;
      if (job.status === "completed") job.percent = 100;
      break;
  }
}

function applyToDetail(job, event) {
  const frames = state.frames;
  if (event.type === "frame_started") frames.set(event.frame, { state: "rendering", percent: 0 });
  if (event.type === "frame_progress") frames.set(event.frame, { state: "rendering", percent: event.percent || 0 });
  if (event.type === "frame_done") {
    frames.set(event.frame, { state: "done", percent: 100 });
    state.thumbs.unshift({ frame: event.frame, url: event.url, node: event.node });
    state.thumbs.length = Math.min(state.thumbs.length, THUMBS);
    renderThumbs();
  }
  if (TERMINAL.has(job.status)) {
    for (const [frame, info] of frames) if (info.state === "rendering") frames.set(frame, { state: job.status === "failed" ? "failed" : "queued", percent: 0 });
    refreshLog();
  }
}

// --- rendering ---
function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => { state.renderQueued = false; renderJobs(); renderDetail(); });
}

function renderJobs() {
  const tbody = $("#jobs tbody");
  const jobs = [...state.jobs.values()].sort((a, b) => b.created_at - a.created_at);
  $("#jobs-empty").hidden = jobs.length > 0;
  const rows = new Map([...tbody.children].map((row) => [row.dataset.id, row]));
  let previous = null;
  for (const job of jobs) {
    let row = rows.get(job.id);
    if (!row) row = makeRow(job);
    rows.delete(job.id);
    updateRow(row, job);
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== row) tbody.insertBefore(row, expected);
    previous = row;
  }
  for (const stale of rows.values()) stale.remove();
}

function makeRow(job) {
  const row = document.createElement("tr");
  row.className = "job";
  row.dataset.id = job.id;
  row.innerHTML = '<td><code class="id"></code></td><td class="scene"></td><td class="frames"></td>' +
    '<td class="wide"><div class="bar"><span></span><em></em></div></td><td class="eta"></td>' +
    '<td class="status"></td><td><button class="cancel" type="button">Cancel</button></td>';
  row.addEventListener("click", () => selectJob(job.id));
  row.querySelector("button.cancel").addEventListener("click", (event) => { event.stopPropagation(); cancelJob(job.id); });
  return row;
}

function updateRow(row, job) {
  const percent = Math.max(0, Math.min(100, job.percent || 0));
  row.classList.toggle("selected", job.id === state.selected);
  row.querySelector(".id").textContent = job.id;
  row.querySelector(".scene").textContent = job.scene + " · " + job.engine.replace("BLENDER_", "").toLowerCase();
  row.querySelector(".frames").textContent = job.frames.done + " / " + job.frames.total + "  (" + job.from + "–" + job.to + ")";
  const bar = row.querySelector(".bar");
  bar.className = "bar " + job.status;
  bar.querySelector("span").style.width = percent + "%";
  bar.querySelector("em").textContent = percent.toFixed(1) + "%" + (job.current_frame != null && job.status === "running" ? "  · frame " + job.current_frame : "");
  row.querySelector(".eta").textContent = job.status === "running" ? fmtEta(job.eta_seconds) : "";
  const status = row.querySelector(".status");
  status.textContent = job.status + (job.status === "queued" && job.queue_position ? " #" + job.queue_position : "");
  status.className = "status status-" + job.status;
  row.querySelector("button.cancel").disabled = TERMINAL.has(job.status);
}

async function selectJob(id) {
  state.selected = id;
  const job = remember(await api("/job/" + id));
  state.frames = new Map();
  for (const result of job.results) state.frames.set(result.frame, { state: "done", percent: 100 });
  if (job.current_frame != null && job.status === "running") {
    state.frames.set(job.current_frame, { state: "rendering", percent: job.current_frame_percent || 0 });
  }
  state.thumbs = job.results.slice(-THUMBS).reverse().map((r) => ({ frame: r.frame, url: r.url, node: r.node }));
  $("#detail").hidden = false;
  renderThumbs();
  refreshLog();
  scheduleRender();
}

function renderDetail() {
  const job = state.jobs.get(state.selected);
  if (!job) return;
  $("#detail-id").textContent = job.id;
  const status = $("#detail-status");
  status.textContent = job.status;
  status.className = "status status-" + job.status;
  $("#detail-summary").textContent = job.frames.done + " of " + job.frames.total + " frames · " +
    (job.percent || 0).toFixed(1) + "%" + (job.status === "running" && job.eta_seconds != null ? " · about " + fmtEta(job.eta_seconds) + " left" : "") +
    (job.blender_version ? " · Blender " + job.blender_version : "");
  $("#detail-error").textContent = job.error || "";
  drawStrip(job);
}

function drawStrip(job) {
  const canvas = $("#strip");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(canvas.clientWidth, 100) * ratio;
  const height = 28 * ratio;
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const total = job.to - job.from + 1;
  const cell = width / total;
  const gap = cell >= 4 ? 1 : 0;
  // One rectangle per frame; at thousands of frames a cell is a sub-pixel sliver, which canvas blends.
  ctx.fillStyle = COLORS.queued;
  ctx.fillRect(0, 0, width, height);
  for (const [frame, info] of state.frames) {
    const x = (frame - job.from) * cell;
    const w = Math.max(cell - gap, 1);
    if (info.state === "rendering") {
      const filled = height * (info.percent || 0) / 100;
      ctx.fillStyle = COLORS.rendering;
      ctx.globalAlpha = 0.45; ctx.fillRect(x, 0, w, height); ctx.globalAlpha = 1;
      ctx.fillRect(x, height - filled, w, filled);
    } else {
      ctx.fillStyle = COLORS[info.state];
      ctx.fillRect(x, 0, w, height);
    }
  }
  if (gap) {
    ctx.fillStyle = "#14161a";
    for (let i = 1; i < total; i++) ctx.fillRect(i * cell - gap, 0, gap, height);
  }
}

function frameAt(event) {
  const job = state.jobs.get(state.selected);
  const canvas = $("#strip");
  const offset = (event.clientX - canvas.getBoundingClientRect().left) / canvas.clientWidth;
  return job ? job.from + Math.min(Math.floor(offset * (job.to - job.from + 1)), job.to - job.from) : null;
}

function renderThumbs() {
  const box = $("#thumbs");
  box.replaceChildren(...state.thumbs.map((thumb) => {
    const link = document.createElement("a");
    link.href = withToken(thumb.url);
    link.target = "_blank";
    link.rel = "noopener";
    const image = document.createElement("img");
    image.loading = "lazy";
    image.alt = "frame " + thumb.frame;
    image.src = withToken(thumb.url);
    link.append(image, "frame " + thumb.frame + (thumb.node ? " · " + thumb.node : ""));
    return link;
  }));
}

async function refreshLog() {
  const job = state.jobs.get(state.selected);
  // A farm job has no single Blender log; its nodes keep one per chunk.
  const logUrl = job && job.links && job.links.log;
  $("#log-panel").hidden = !logUrl;
  if (!logUrl) return;
  try {
    const text = await api(logUrl + "?tail=" + LOG_LINES);
    const pre = $("#log");
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = typeof text === "string" ? text : JSON.stringify(text);
    if (stick) pre.scrollTop = pre.scrollHeight;
  } catch (_) { /* the job may be gone; the next refresh tries again */ }
}

// --- actions ---
async function cancelJob(id) {
  try {
    remember(await api("/job/" + id, { method: "DELETE" }));
    scheduleRender();
  } catch (error) {
    $("#submit-error").textContent = "cancel: " + error.message;
  }
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    from: Number(form.from.value), to: Number(form.to.value),
    engine: form.engine.value, format: form.format.value,
  };
  if (form.scene.value) body.scene = form.scene.value;
  $("#submit-error").textContent = "";
  try {
    const job = await api("/job", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    remember(job);
    selectJob(job.id);
  } catch (error) {
    $("#submit-error").textContent = error.message;
  }
}

async function loadNode() {
  try {
    const [health, scenes] = await Promise.all([api("/health").catch((e) => null), api("/scenes")]);
    if (health) $("#node-info").textContent = (health.role === "farm" ? "farm of " + health.nodes.up + "/" + health.nodes.total + " nodes · " : "") +
      "Blender " + (health.blender.version || "unavailable") + " · " + health.capacity + " slot(s)";
    if (health && health.role === "farm") { state.farm = true; loadNodes(); setInterval(loadNodes, 2000); }
    const select = $("#scene-select");
    const option = (value, text, selected) => Object.assign(document.createElement("option"), { value, textContent: text, selected });
    const options = scenes.scenes.map((scene) => option(scene.name, scene.name, scene.name === scenes.default));
    // The node's default scene may live outside its scenes dir; an empty value asks for it.
    if (!scenes.scenes.some((scene) => scene.name === scenes.default)) options.unshift(option("", "node default", true));
    select.replaceChildren(...options);
  } catch (error) {
    $("#submit-error").textContent = error.message;
  }
}

// --- farm: the nodes panel appears when the server is an orchestrator ---
let nodesTimer = null;
function refreshNodesSoon() {
  if (nodesTimer === null) nodesTimer = setTimeout(() => { nodesTimer = null; loadNodes(); }, 250);
}

async function loadNodes() {
  let listing;
  try { listing = await api("/nodes"); } catch (_) { return; }
  $("#nodes-panel").hidden = false;
  $("#nodes tbody").replaceChildren(...listing.nodes.map((node) => {
    const row = document.createElement("tr");
    row.className = "node";
    row.dataset.id = node.id;
    const cells = [node.id, node.url, node.state, node.blender_version || "", node.current_chunks.join(", ") || "idle",
      String(node.frames_rendered), String(node.chunks_failed)];
    for (const text of cells) row.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
    row.children[2].className = "status status-" + (node.state === "up" ? "completed" : "failed");
    return row;
  }));
}

$("#submit-form").addEventListener("submit", submitJob);
$("#strip").addEventListener("mousemove", (event) => {
  const frame = frameAt(event);
  const info = state.frames.get(frame) || { state: "queued" };
  $("#strip-hover").textContent = frame === null ? "" : "frame " + frame + ": " + info.state + (info.state === "rendering" ? " " + Math.round(info.percent) + "%" : "");
});
$("#strip").addEventListener("click", (event) => {
  const frame = frameAt(event);
  if (frame !== null && state.frames.get(frame)?.state === "done") window.open(withToken("/job/" + state.selected + "/frames/" + frame), "_blank");
});
window.addEventListener("resize", scheduleRender);
setInterval(() => {
  const job = state.jobs.get(state.selected);
  if (job && job.status === "running") refreshLog();
}, 2000);

loadNode();
connect();
