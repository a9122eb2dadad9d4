// s3-outbox upload page: files go straight to storage through presigned URLs (one PUT, or in
// parts above the server's multipart threshold), then the page watches each document's status
// until a worker has verified it. Plain ES modules from this folder: no build step, nothing
// from another origin. Every path is relative, so the page works under a prefix.

import { makeApi } from "./api.js";
import { createUploader, formatBytes } from "./upload.js";

const $ = (selector, root = document) => root.querySelector(selector);
const ownerInput = $("#owner");
const owner = () => ownerInput.value.trim();
const api = makeApi(owner);
const upload = createUploader({ api, owner, list: $("#uploads"), onSettled: refresh, downloadLink });

function downloadLink(a, id) {
  a.href = `documents/${encodeURIComponent(id)}/download`;
  a.textContent = "Download";
  a.addEventListener("click", (event) => {
    event.preventDefault();
    // A link cannot send X-Owner-Id: ask for the presigned URL as JSON, then go there.
    api("GET", `documents/${encodeURIComponent(id)}/download`)
      .then((ticket) => { window.location.assign(ticket.url); })
      .catch((err) => window.alert(err.message));
  });
}

// -- list and quota -------------------------------------------------------------------------

async function refresh() {
  if (!owner()) return;
  try {
    const [page, quota] = await Promise.all([
      api("GET", "documents?limit=20"), api("GET", "quota"),
    ]);
    renderQuota(quota);
    renderDocuments(page.items);
  } catch (err) {
    $("#quota-text").textContent = err.message;
  }
}

function renderQuota(q) {
  const pct = (n) => `${q.limit_bytes ? Math.min(100, (100 * n) / q.limit_bytes) : 0}%`;
  $("#quota-used").style.width = pct(q.used_bytes);
  $("#quota-reserved").style.width = pct(q.reserved_bytes);
  $("#quota-text").textContent = `${formatBytes(q.used_bytes)} used, `
    + `${formatBytes(q.reserved_bytes)} reserved, ${formatBytes(q.limit_bytes)} limit`;
}

function renderDocuments(items) {
  const body = $("#documents tbody");
  body.replaceChildren();
  for (const doc of items) {
    const tr = document.createElement("tr");
    const cell = (text, cls) => {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (text !== undefined) td.textContent = text;
      tr.append(td);
      return td;
    };
    cell(doc.filename, "name");
    cell(formatBytes(doc.size));
    const badge = document.createElement("span");
    badge.className = `badge ${doc.status}`;
    badge.textContent = doc.status;
    cell().append(badge);
    const actions = cell(undefined, "actions");
    if (doc.status === "available") {
      const a = document.createElement("a");
      a.className = "download";
      downloadLink(a, doc.id);
      actions.append(a, " ");
    }
    if (doc.status !== "deleting" && doc.status !== "deleted") {
      const del = document.createElement("button");
      del.type = "button";
      del.className = "danger";
      del.textContent = "Delete";
      del.addEventListener("click", () => {
        api("DELETE", `documents/${encodeURIComponent(doc.id)}`)
          .then(refresh).catch((err) => window.alert(err.message));
      });
      actions.append(del);
    }
    body.append(tr);
  }
  $("#documents-empty").hidden = items.length > 0;
}

// -- wiring ---------------------------------------------------------------------------------

function uploadAll(files) {
  for (const file of files) upload(file);
}

const drop = $("#drop");
const input = $("#file");
input.addEventListener("change", () => { uploadAll(input.files); input.value = ""; });
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer && e.dataTransfer.files.length) uploadAll(e.dataTransfer.files);
});
ownerInput.addEventListener("change", refresh);
$("#refresh").addEventListener("click", refresh);
refresh();
