// The retrieval page: a query (a dropped or chosen file, or an image of the index) -> POST /api/search or
// GET /api/items/{id}/search -> the ranked results. Text from the server (paths, labels, reasons) is set as
// textContent, never as HTML.
"use strict";

const PAGE = 48;
const $ = (id) => document.getElementById(id);
let current = null; // the last query: {file} or {item}
let asked = 0; // numbers the searches: only the latest one's answer is shown
let galleryNext = 0;
let uploadUrl = null; // the object URL showing the uploaded query, released when another replaces it

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Tiny images (the demo's are 32 px) are drawn with square pixels rather than blurred.
function thumbnail(src, alt) {
  const img = element("img");
  img.src = src;
  img.alt = alt;
  img.loading = "lazy";
  img.addEventListener("load", () => img.classList.toggle("tiny", img.naturalWidth < 96));
  return img;
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const reason = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${reason}`);
  }
  return body;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function showQuery(src, caption) {
  if (uploadUrl && uploadUrl !== src) URL.revokeObjectURL(uploadUrl);
  uploadUrl = src.startsWith("blob:") ? src : null;
  $("query").hidden = false;
  $("query-image").src = src;
  $("query-caption").textContent = caption;
}

function labelText(label) {
  return label === null ? "label unknown" : `label ${label}`;
}

function renderResults(answer) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of answer.results) {
    const kind = hit.is_query ? "self" : hit.same_label === true ? "same" : hit.same_label === false ? "other" : "";
    const card = element("li", `result ${kind}`.trim());
    card.dataset.id = hit.id;
    card.dataset.rank = hit.rank;
    card.dataset.path = hit.path;
    card.title = `${hit.path}: click to search with it`;
    card.append(thumbnail(hit.thumbnail, `item ${hit.id}`));
    const meta = element("div", "meta");
    const head = element("div", "head");
    head.append(element("span", "rank", `#${hit.rank}`), element("span", "similarity", hit.similarity.toFixed(3)));
    const bar = element("div", "bar");
    const fill = element("span");
    fill.style.width = `${Math.max(0, hit.similarity) * 100}%`;
    bar.append(fill);
    meta.append(head, bar, element("span", "label", labelText(hit.label)));
    const marks = {self: "the query itself", same: "\u2713 same label", other: "\u2717 other label"};
    if (kind) meta.append(element("span", "mark", marks[kind]));
    meta.append(element("span", "path", hit.path));
    card.append(meta);
    card.addEventListener("click", () => searchItem({id: hit.id, path: hit.path, label: hit.label,
                                                     thumbnail: hit.thumbnail}));
    list.append(card);
  }
}

function summarize(answer) {
  const label = answer.query.label;
  const others = answer.results.filter((hit) => !hit.is_query);
  if (label === null) {
    return "The query's label is unknown (an image from outside the index), so results are not marked.";
  }
  const same = others.filter((hit) => hit.same_label).length;
  const self = answer.results.find((hit) => hit.is_query);
  const where = self ? ` The query itself is #${self.rank}.` : "";
  return `${same} of the ${others.length} other results share the query's label ${label}.${where}`;
}

async function runSearch(request, description) {
  const number = ++asked;
  showError("");
  setStatus("busy", `searching ${description}...`);
  try {
    const answer = await request();
    if (number !== asked) return;
    renderResults(answer);
    const t = answer.time_ms;
    setStatus("done", `top ${answer.results.length} in ${t.total.toFixed(0)} ms on the server ` +
      `(model and search ${t.search.toFixed(0)} ms, batch of ${answer.batch}, waited ${t.queued.toFixed(0)} ms; ` +
      `${answer.search})`);
    $("summary").textContent = summarize(answer);
    if (answer.query.item && current.file) {
      $("query-caption").textContent += `: the index's item ${answer.query.item.id}, ` +
        `${answer.query.item.path}, ${labelText(answer.query.item.label)}`;
    }
  } catch (err) {
    if (number !== asked) return;
    $("results").replaceChildren();
    $("summary").textContent = "";
    setStatus("error", "no results");
    showError(err.message);
  }
}

function topK() {
  return $("top-k").value;
}

function searchFile(file) {
  current = {file};
  showQuery(URL.createObjectURL(file), `${file.name} (uploaded)`);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("top_k", topK());
  return runSearch(() => getJson("/api/search", {method: "POST", body: form}), file.name);
}

function searchItem(item) {
  current = {item};
  showQuery(item.thumbnail, `item ${item.id}: ${item.path}, ${labelText(item.label)}`);
  return runSearch(() => getJson(`/api/items/${item.id}/search?top_k=${topK()}`), item.path);
}

function again() {
  if (current && current.file) searchFile(current.file);
  else if (current && current.item) searchItem(current.item);
}

async function loadGallery() {
  try {
    const page = await getJson(`/api/items?offset=${galleryNext}&limit=${PAGE}`);
    for (const item of page.items) {
      const cell = element("li");
      cell.dataset.id = item.id;
      cell.title = `${item.path}, ${labelText(item.label)}: click to search with it`;
      cell.append(thumbnail(item.thumbnail, `item ${item.id}`));
      cell.addEventListener("click", () => searchItem(item));
      $("gallery").append(cell);
    }
    galleryNext = page.offset + page.items.length;
    $("gallery-count").textContent = `(${galleryNext} of ${page.count} shown)`;
    $("more").hidden = galleryNext >= page.count;
  } catch (err) {
    showError(`the index's images did not load: ${err.message}`);
  }
}

async function loadAbout() {
  try {
    const health = await getJson("/api/health");
    const model = health.model;
    $("about").textContent = `${health.count} images, ${health.feature_dim}-d features` +
      `${health.labels ? ", labelled" : ", no labels"}; checkpoint ${model.checkpoint} ` +
      `(${model.image_size} px, ${model.backend}); ${health.search}`;
  } catch (err) {
    $("about").textContent = `the server did not describe its index: ${err.message}`;
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) searchFile(event.target.files[0]);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) searchFile(event.dataTransfer.files[0]);
  });
  $("top-k").addEventListener("change", again);
  $("more").addEventListener("click", loadGallery);
  const query = $("query-image");
  query.addEventListener("load", () => query.classList.toggle("tiny", query.naturalWidth < 96));
  loadAbout();
  loadGallery();
}

setUp();
