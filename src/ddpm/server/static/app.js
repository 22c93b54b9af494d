// ddpm serve: the page. Plain JS, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), bar = $("progress"), statusLine = $("status");
let info = null, current = null, initDataUrl = null, drawn = false;

async function api(path, options = {}) {
  const r = await fetch(path, { headers: { "content-type": "application/json" }, ...options });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || body.error || `HTTP ${r.status}`);
  return body;
}

function mode() { return form.querySelector("input[name=mode]:checked").value; }

function showMode() {
  const m = mode();
  $("init-area").hidden = m === "txt2img";
  $("mask").hidden = $("mask-tools").hidden = m !== "inpaint";
}

async function start() {
  info = await api("/api/info");
  $("model").textContent = `${info.model.name} (${info.model.kind})`;
  for (const name of info.samplers) {
    const o = document.createElement("option");
    o.value = o.textContent = name;
    $("sampler").append(o);
  }
  $("sampler").value = info.samplers.includes("Euler a") ? "Euler a" : info.samplers[0];
  $("width").value = $("height").value = info.model.default_size;
  $("width").step = $("height").step = info.model.size_multiple;
  for (const r of form.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", showMode);
    if (!info.model.modes.includes(r.value)) r.disabled = true;
  }
  showMode();
  await refreshGallery();
}

function settings() {
  const num = (id) => Number($(id).value);
  const body = {
    mode: mode(), prompt: $("prompt").value, negative_prompt: $("negative").value,
    sampler_name: $("sampler").value, steps: num("steps"), cfg_scale: num("cfg"),
    seed: Number($("seed").value.trim() || -1), width: num("width"), height: num("height"),
    batch_size: num("batch"),
  };
  if (body.mode !== "txt2img") {
    if (!initDataUrl) throw new Error("choose an init image first");
    body.init_images = [initDataUrl];
    body.denoising_strength = num("strength");
  }
  if (body.mode === "inpaint") {
    if (!drawn) throw new Error("draw a mask on the image first (where it should be repainted)");
    body.mask = maskDataUrl();
  }
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  let job;
  try {
    job = await api("/api/jobs", { method: "POST", body: JSON.stringify(settings()) });
  } catch (e) {
    statusLine.textContent = `Refused: ${e.message}`;
    return;
  }
  current = job.id;
  $("generate").disabled = true;
  $("cancel").disabled = false;
  bar.value = 0;
  statusLine.textContent = `Queued (position ${job.position}).`;
  follow(job.id);
});

function follow(id) {
  const events = new EventSource(`/api/jobs/${id}/events?preview=1`);
  const update = (e) => {
    const job = JSON.parse(e.data);
    bar.value = job.progress;
    if (job.state === "queued") statusLine.textContent = `Queued (position ${job.position}).`;
    if (job.state === "running") {
      statusLine.textContent = `Running: batch ${job.iteration + 1}/${job.n_iter}, step ${job.step}/${job.steps}.`;
    }
    if (job.preview) { $("live").src = job.preview; $("live").hidden = false; }
    return job;
  };
  events.addEventListener("progress", update);
  events.addEventListener("done", (e) => {
    events.close();
    const job = update(e);
    finished(job);
  });
  events.onerror = () => { events.close(); poll(id); };
}

async function poll(id) {  // when the event stream breaks: ask until the job ends
  const job = await api(`/api/jobs/${id}`);
  bar.value = job.progress;
  if (["done", "failed", "cancelled"].includes(job.state)) finished(job);
  else setTimeout(() => poll(id), 250);
}

function finished(job) {
  if (job.id !== current) return;
  current = null;
  $("generate").disabled = false;
  $("cancel").disabled = true;
  $("live").hidden = true;
  const results = $("results");
  results.replaceChildren();
  for (const image of job.images) results.append(imageElement(image));
  statusLine.textContent = job.state === "done"
    ? `Done: ${job.images.length} image(s) in ${job.seconds.toFixed(2)} s.`
    : `${job.state === "failed" ? "Failed" : "Cancelled"}: ${job.error}`;
  refreshGallery();
}

function imageElement(record) {
  const img = document.createElement("img");
  img.src = record.url;
  img.alt = `seed ${record.seed}: ${record.settings.prompt || "(no prompt)"}`;
  img.title = record.infotext;
  return img;
}

$("cancel").addEventListener("click", async () => {
  if (current) await api(`/api/jobs/${current}`, { method: "DELETE" }).catch(() => {});
});

async function refreshGallery() {
  const records = await api("/api/outputs");
  const list = $("gallery");
  list.replaceChildren();
  for (const r of records) {
    const li = document.createElement("li");
    const pre = document.createElement("pre");
    pre.textContent = r.infotext;
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = "Reuse these settings";
    reuse.setAttribute("aria-label", `Reuse these settings (seed ${r.seed})`);
    reuse.addEventListener("click", () => reuseSettings(r.settings));
    const download = document.createElement("a");
    download.href = `${r.url}?download=1`;
    download.textContent = "Download PNG";
    download.setAttribute("download", `${r.id}.png`);
    li.append(imageElement(r), pre, reuse, " ", download);
    list.append(li);
  }
}

function reuseSettings(s) {
  $("prompt").value = s.prompt;
  $("negative").value = s.negative_prompt;
  $("seed").value = String(s.seed);
  $("steps").value = s.steps;
  $("cfg").value = s.cfg_scale;
  $("width").value = s.width;
  $("height").value = s.height;
  if ([...$("sampler").options].some((o) => o.value === s.sampler_name)) $("sampler").value = s.sampler_name;
  if (s.denoising_strength != null) $("strength").value = s.denoising_strength;
  statusLine.textContent = `Settings of seed ${s.seed} loaded.`;
}

// ---------------------------------------------------------------------------------- init image and mask
const canvas = $("mask"), ctx = canvas.getContext("2d");

$("init").addEventListener("change", () => {
  const file = $("init").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    initDataUrl = reader.result;
    const img = $("init-preview");
    img.onload = () => {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      clearMask();
    };
    img.src = initDataUrl;
  };
  reader.readAsDataURL(file);
});

function clearMask() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  drawn = false;
}
$("clear-mask").addEventListener("click", clearMask);

let painting = false;
function paint(e) {
  if (!painting) return;
  const r = canvas.getBoundingClientRect();
  const x = (e.clientX - r.left) * canvas.width / r.width, y = (e.clientY - r.top) * canvas.height / r.height;
  const radius = Number($("brush").value) * canvas.width / r.width / 2;
  ctx.fillStyle = "white";
  ctx.beginPath();
  ctx.arc(x, y, Math.max(0.5, radius), 0, 2 * Math.PI);
  ctx.fill();
  drawn = true;
}
canvas.addEventListener("pointerdown", (e) => { painting = true; canvas.setPointerCapture(e.pointerId); paint(e); });
canvas.addEventListener("pointermove", paint);
canvas.addEventListener("pointerup", () => { painting = false; });

function maskDataUrl() {  // white where drawn, black elsewhere, at the init image's size
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const o = out.getContext("2d");
  o.fillStyle = "black";
  o.fillRect(0, 0, out.width, out.height);
  o.drawImage(canvas, 0, 0);
  return out.toDataURL("image/png");
}

start().catch((e) => { statusLine.textContent = `Could not reach the server: ${e.message}`; });
