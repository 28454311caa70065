// ucl serve's page: pick or drop a file, POST it to /api/search, show the ranked hits with
// players or thumbnails streamed from /api/media, and the bank texts that carried each one.
// Everything the server says is put in with textContent: no markup from the API is trusted.
"use strict";

const state = { served: null, last: null, running: 0 };
const $ = (id) => document.getElementById(id);
const NOUNS = { image: "images", audio: "sounds" };

async function readJson(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

async function loadServed() {
  try {
    state.served = await readJson(await fetch("/api/banks"));
  } catch (error) {
    showError(`Could not reach the server: ${error.message}`);
    return;
  }
  const { bank, collections, methods, limits } = state.served;
  const listed = collections.map((c) => `${c.name} (${c.rows.toLocaleString()} ${c.modality})`);
  $("served").textContent =
    `Collections ${listed.join(", ")} through bank ${bank.name} ` +
    `(${bank.rows.toLocaleString()} texts)`;
  const method = $("method");
  for (const name of methods) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    method.append(option);
  }
  $("top").max = Math.min(limits.max_top, 100);
  $("explain").max = Math.min(limits.max_explain, 10);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showPreview(name, modality, url) {
  const preview = $("preview");
  preview.querySelectorAll("img, audio").forEach((node) => node.remove());
  $("preview-name").textContent = name;
  const node = document.createElement(modality === "audio" ? "audio" : "img");
  if (modality === "audio") {
    node.controls = true;
    node.preload = "metadata";
  } else {
    node.alt = `Query: ${name}`;
  }
  node.src = url;
  preview.append(node);
  preview.hidden = false;
}

function settings() {
  return {
    method: $("method").value || "lse",
    top: Number($("top").value) || 10,
    explain: Number($("explain").value) || 0,
  };
}

async function searchFile(file) {
  const modality = file.type.startsWith("audio/") ? "audio" : "image";
  if (state.lastUrl) URL.revokeObjectURL(state.lastUrl);
  state.lastUrl = URL.createObjectURL(file);
  showPreview(file.name, modality, state.lastUrl);
  state.last = () => searchFile(file);
  const { method, top, explain } = settings();
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("method", method);
  form.append("top", String(top));
  form.append("explain", String(explain));
  await run(`Searching for ${file.name}…`, () =>
    fetch("/api/search", { method: "POST", body: form }),
  );
}

async function searchItem(hit) {
  showPreview(hit.candidate.split("/").pop(), hit.candidate_modality, hit.media);
  state.last = () => searchItem(hit);
  const body = { collection: hit.collection, row: hit.row, ...settings() };
  await run(`Searching with ${hit.candidate.split("/").pop()}…`, () =>
    fetch("/api/search/item", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }),
  );
}

async function run(busy, request) {
  const ticket = ++state.running; // a later search wins over an earlier one still running
  showError("");
  setStatus(busy);
  $("hits").setAttribute("aria-busy", "true");
  try {
    const answer = await readJson(await request());
    if (ticket !== state.running) return;
    render(answer);
  } catch (error) {
    if (ticket !== state.running) return;
    setStatus("");
    showError(error.message);
  } finally {
    if (ticket === state.running) $("hits").removeAttribute("aria-busy");
  }
}

function render(answer) {
  const list = $("hits");
  list.replaceChildren();
  const noun = NOUNS[answer.candidate_modality] || answer.candidate_modality;
  setStatus(
    `${answer.hits.length} of ${answer.candidates.toLocaleString()} ${noun} for ` +
      `${answer.query.name}, by ${answer.method} through bank ${answer.bank}`,
  );
  for (const hit of answer.hits) list.append(renderHit(hit));
}

function renderHit(hit) {
  const node = $("hit-template").content.firstElementChild.cloneNode(true);
  node.classList.add(hit.candidate_modality);
  const name = hit.candidate.split("/").pop();
  node.querySelector(".rank").textContent = `${hit.rank}.`;
  const title = node.querySelector(".name");
  title.textContent = name;
  title.title = hit.candidate;
  node.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
  if (hit.certified !== undefined) {
    const badge = node.querySelector(".badge");
    badge.hidden = false;
    badge.textContent = hit.certified ? "certified" : "not certified";
    badge.classList.add(hit.certified ? "certified" : "uncertified");
    badge.title = `exact score within [${hit.lower.toFixed(3)}, ${hit.upper.toFixed(3)}]`;
  }
  if (hit.media) node.querySelector(".media").append(mediaElement(hit, name));
  if (hit.bridge && hit.bridge.length) renderBridge(node.querySelector(".bridge"), hit);
  const other = hit.candidate_modality === "audio" ? "image" : "audio";
  const served = state.served ? state.served.collections : [];
  if (hit.media && served.some((c) => c.modality === other)) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button secondary";
    button.textContent = `Find ${NOUNS[other]} for this`;
    button.addEventListener("click", () => searchItem(hit));
    node.querySelector(".hit-actions").append(button);
  }
  return node;
}

function mediaElement(hit, name) {
  if (hit.candidate_modality === "audio") {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = hit.media;
    audio.setAttribute("aria-label", `Play ${name}`);
    return audio;
  }
  const image = document.createElement("img");
  image.loading = "lazy";
  image.alt = name;
  image.src = hit.media;
  return image;
}

function renderBridge(figure, hit) {
  figure.hidden = false;
  const ess = hit.effective_sample_size;
  figure.querySelector(".bridge-caption").textContent =
    `Carried by these bank texts (effective sample size ${ess.toFixed(1)})`;
  const bars = figure.querySelector(".bars");
  for (const item of hit.bridge) {
    const row = document.createElement("li");
    const text = document.createElement("span");
    text.className = "bar-text";
    text.textContent = item.truncated ? `${item.text}… (cut)` : item.text;
    text.title = text.textContent;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(1, item.weight)) * 100}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = item.weight.toFixed(2);
    row.append(text, bar, value);
    bars.append(row);
  }
}

function wire() {
  const input = $("file");
  const drop = $("drop");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    if (input.files.length) searchFile(input.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  $("settings").addEventListener("change", () => {
    if (state.last) state.last();
  });
}

wire();
loadServed();
