"use strict";
// The page is a client of the same JSON API as any other: GET /models, POST /predict and
// POST /predict/structures. Everything is built with textContent, never innerHTML: file names
// and formulas come from users.

const BASE_COLUMNS = new Set(["id", "formula", "spacegroup", "skipped"]);
let models = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function fillModels(select, preferStructures) {
  select.replaceChildren(...models.map((model) => element("option", "", model.name)));
  const preferred = models.find((model) => model.uses_structures === preferStructures);
  if (preferred) select.value = preferred.name;
}

async function loadModels() {
  try {
    const response = await fetch("/models");
    models = await response.json();
  } catch (error) {
    setStatus(`Cannot reach the server: ${error}`, true);
    return;
  }
  fillModels(document.getElementById("formula-model"), false);
  fillModels(document.getElementById("structure-model"), true);
  document.body.dataset.ready = "true";
}

async function send(url, options) {
  setStatus("Predicting…");
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    setStatus(`Cannot reach the server: ${error}`, true);
    return;
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    setStatus(`${response.status}: ${body.detail}`, true);
    return;
  }
  const skipped = body.rows.filter((row) => row.skipped).length;
  setStatus(`${body.rows.length} answered by ${body.model}` + (skipped ? `, ${skipped} without a prediction` : ""));
  render(body);
}

function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function renderTask(task, row, used) {
  const box = element("div", row[task] === null ? "task not-applicable" : "task");
  box.dataset.task = task;
  const head = element("div", "task-head");
  const value = row[task];
  const answer = element("span", value === null ? "answer none" : "answer",
    value === null ? "does not apply" : formatValue(value));
  head.append(element("span", "task-name", task), answer);
  const source = row[`${task}:predictor`];
  if (source) head.append(element("span", "source", `${task}:predictor ${source}`));
  box.append(head);
  used.add(task).add(`${task}:predictor`);
  const prefix = `${task}:p(`;
  for (const column of Object.keys(row)) {
    if (!column.startsWith(prefix) || !column.endsWith(")")) continue;
    used.add(column);
    const label = column.slice(prefix.length, -1);
    const probability = row[column] ?? 0;
    const bar = element("div", label === value ? "bar chosen" : "bar");
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", "label", label), track, element("span", "pct", `${(100 * probability).toFixed(1)}%`));
    box.append(bar);
  }
  return box;
}

function renderRow(row, body, info) {
  const card = element("article", "material");
  card.dataset.id = row.id;
  const title = row.formula && row.formula !== row.id ? `${row.id} — ${row.formula}` : String(row.id);
  card.append(element("h3", "", title));
  const meta = element("div", "meta");
  if (row.spacegroup) meta.append(`space group ${row.spacegroup} · `);
  meta.append(`model ${body.model}`);
  if (info && info.card) {
    const link = element("a", "", "model card");
    link.href = `${info.card}?format=html`;
    link.target = "_blank";
    meta.append(" · ", link);
  }
  card.append(meta);
  if (row.skipped) {
    card.append(element("p", "skipped", row.skipped));
    return card;
  }
  const used = new Set(BASE_COLUMNS);
  for (const task of body.tasks) card.append(renderTask(task, row, used));
  // Columns this page does not know (applicability flags, for instance) are shown as they come.
  const extra = Object.keys(row).filter((column) => !used.has(column));
  if (extra.length) {
    const table = element("table", "extra");
    for (const column of extra) {
      const line = element("tr");
      line.dataset.column = column;
      line.append(element("td", "", column), element("td", "", formatValue(row[column])));
      table.append(line);
    }
    card.append(table);
  }
  return card;
}

function render(body) {
  const info = models.find((model) => model.name === body.model);
  document.getElementById("results").replaceChildren(...body.rows.map((row) => renderRow(row, body, info)));
}

function uploadFiles(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  form.append("model", document.getElementById("structure-model").value);
  send("/predict/structures", { method: "POST", body: form });
}

document.getElementById("formula-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const rows = [{
    formula: document.getElementById("formula").value.trim(),
    spacegroup: Number(document.getElementById("spacegroup").value),
  }];
  const model = document.getElementById("formula-model").value;
  send("/predict", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, rows }),
  });
});

const drop = document.getElementById("drop");
const picker = document.getElementById("files");
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
  uploadFiles(event.dataTransfer.files);
});
picker.addEventListener("change", () => {
  uploadFiles(picker.files);
  picker.value = "";
});

loadModels();
