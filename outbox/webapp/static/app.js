// s3-outbox upload page: hash in the browser, PUT straight to storage through the presigned
// URL, confirm, then watch the document's status until a worker has verified it.
// No build step, no dependencies. Every path is relative, so the page works under a prefix.
"use strict";

(() => {
  const FINAL = new Set(["available", "rejected", "expired", "deleted"]);
  const POLL_MS = 500;
  const POLL_LIMIT_MS = 5 * 60 * 1000;
  const TYPES = {
    pdf: "application/pdf", zip: "application/zip", json: "application/json",
    png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif",
    webp: "image/webp", txt: "text/plain", csv: "text/csv", md: "text/markdown",
    docx: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  };

  const $ = (selector, root = document) => root.querySelector(selector);
  const ownerInput = $("#owner");
  const owner = () => ownerInput.value.trim();

  function contentType(file) {
    const ext = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
    return TYPES[ext] || file.type || "application/octet-stream";
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let i = -1;
    do { value /= 1024; i += 1; } while (value >= 1024 && i < units.length - 1);
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
  }

  // JSON API call with the owner header; throws Error(message from the JSON error body).
  async function api(method, path, body) {
    const headers = { "X-Owner-Id": owner(), Accept: "application/json" };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.message) || `HTTP ${resp.status}`);
      err.status = resp.status;
      err.body = data;
      throw err;
    }
    return data;
  }

  async function sha256Hex(file) {
    if (!window.crypto || !window.crypto.subtle) {
      throw new Error("hashing needs a secure context: open this page over https or on localhost");
    }
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // PUT the file to storage with exactly the signed headers. The browser sets Content-Length
  // from the body itself (it refuses to let scripts set it).
  function putToStorage(ticket, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(ticket.method || "PUT", ticket.url);
      for (const [name, value] of Object.entries(ticket.headers)) {
        if (name.toLowerCase() !== "content-length") xhr.setRequestHeader(name, value);
      }
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve();
        else reject(new Error(`storage refused the upload (HTTP ${xhr.status})`));
      };
      xhr.onerror = () => reject(new Error("upload failed: storage unreachable or CORS refused"));
      xhr.send(file);
    });
  }

  function downloadDocument(id) {
    // A link cannot send X-Owner-Id: ask for the presigned URL as JSON, then go there.
    return api("GET", `documents/${encodeURIComponent(id)}/download`)
      .then((ticket) => { window.location.assign(ticket.url); });
  }

  function downloadLink(a, id) {
    a.href = `documents/${encodeURIComponent(id)}/download`;
    a.textContent = "Download";
    a.addEventListener("click", (event) => {
      event.preventDefault();
      downloadDocument(id).catch((err) => window.alert(err.message));
    });
  }

  // -- one upload -------------------------------------------------------------------------

  function newItem(name) {
    const node = $("#upload-item").content.firstElementChild.cloneNode(true);
    $(".name", node).textContent = name;
    $("#uploads").prepend(node);
    const statusEl = $(".status", node);
    const steps = [];
    return {
      node,
      status(state) {
        statusEl.textContent = state;
        statusEl.className = `status badge ${state}`;
        node.dataset.status = state;
        if (steps[steps.length - 1] !== state) steps.push(state);
        $(".steps", node).textContent = steps.join(" → ");
      },
      progress(fraction) { $("progress", node).value = Math.round(fraction * 100); },
      fail(message) {
        this.status("failed");
        const el = $(".error", node);
        el.textContent = message;
        el.hidden = false;
      },
      available(id) {
        const a = $("a.download", node);
        downloadLink(a, id);
        a.hidden = false;
      },
    };
  }

  async function follow(id, item) {
    const deadline = Date.now() + POLL_LIMIT_MS;
    for (;;) {
      const doc = await api("GET", `documents/${encodeURIComponent(id)}`);
      item.status(doc.status);
      if (FINAL.has(doc.status)) return doc;
      if (Date.now() > deadline) throw new Error(`still ${doc.status}; refresh later`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async function upload(file) {
    const item = newItem(file.name);
    try {
      if (!owner()) throw new Error("enter an owner id first");
      item.status("hashing");
      const sha256 = await sha256Hex(file);
      const ticket = await api("POST", "documents/upload-url", {
        filename: file.name, content_type: contentType(file), size: file.size, sha256,
      });
      const id = ticket.document.id;
      item.node.dataset.documentId = id;
      if (ticket.url) {
        item.status("uploading");
        await putToStorage(ticket, file, (f) => item.progress(f));
        item.progress(1);
        const confirmed = await api("POST", `documents/${encodeURIComponent(id)}/confirm`);
        item.status(confirmed.status);
      } else {
        item.status("deduplicated"); // the same content is already stored: nothing to send
        item.progress(1);
      }
      const doc = await follow(id, item);
      if (doc.status === "available") item.available(id);
      else if (doc.reason) item.fail(`${doc.status}: ${doc.reason}`);
    } catch (err) {
      item.fail(err.message);
    }
    refresh();
  }

  function uploadAll(files) {
    for (const file of files) upload(file);
  }

  // -- list and quota -----------------------------------------------------------------------

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

  // -- wiring -------------------------------------------------------------------------------

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
})();
