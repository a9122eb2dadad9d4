// One file from pick to `available`: ask the server for an upload (it decides: one PUT, or a
// plan of parts above its multipart threshold), send the bytes straight to storage, confirm,
// then follow the document's status. Cancel deletes the document; a failed upload can be
// retried, and a file picked again after a reload resumes from the parts already reported.

import { ApiError, sleep } from "./api.js";
import { newItem } from "./item.js";
import { sendParts } from "./multipart.js";
import * as resume from "./resume.js";
import { sha256OfFile } from "./sha256.js";
import { putBlob } from "./storage.js";

const FINAL = new Set(["available", "rejected", "expired", "deleted"]);
const POLL_MS = 500;
const POLL_LIMIT_MS = 5 * 60 * 1000;
// How long to wait for a worker to create a multipart upload (longer: the workers are down).
const READY_LIMIT_MS = 2 * 60 * 1000;
const TYPES = {
  pdf: "application/pdf", zip: "application/zip", json: "application/json",
  png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif",
  webp: "image/webp", txt: "text/plain", csv: "text/csv", md: "text/markdown",
  docx: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
};

function contentType(file) {
  const ext = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
  return TYPES[ext] || file.type || "application/octet-stream";
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let i = -1;
  do { value /= 1024; i += 1; } while (value >= 1024 && i < units.length - 1);
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}

/** Whether running the upload again may help (not a request the server refused as such). */
function retryable(err) {
  return !(err instanceof ApiError) || err.transient || err.status === 409;
}

/**
 * `upload(file)` for the page: `api` from makeApi, `owner()` the owner id, `list` the element
 * items go in, `onSettled()` called when an upload stops (to refresh the list and quota),
 * `downloadLink(a, id)` to make a download link.
 */
export function createUploader({ api, owner, list, onSettled, downloadLink }) {
  // The server's multipart threshold (GET upload-limits, once): a file at most this large is
  // hashed first and sent with one PUT; a larger one is asked for without a hash.
  let limits = null;
  let threshold = null;
  const active = new Set(); // files (by resume key) with a run in progress

  const documentPath = (id, tail = "") => `documents/${encodeURIComponent(id)}${tail}`;

  async function learnThreshold() {
    if (threshold !== null) return;
    limits = limits || api("GET", "upload-limits");
    try {
      threshold = (await limits).multipart_threshold_bytes;
    } catch (err) {
      limits = null;
      if (!(err instanceof ApiError) || err.transient) throw err;
      // An API without the endpoint: ask without a hash; a 400 then tells the threshold.
    }
  }

  // A ticket for the file: upload-url with the file's SHA-256 up to the threshold, without
  // one above it. The server decides (its answer has the parts plan, or a URL); a threshold
  // that changed since is answered with 400 and the new one, and the second try is right.
  // Never aborted: a document the server created must be known, to delete it on cancel.
  async function requestTicket(file, item, signal) {
    await learnThreshold();
    const declared = { filename: file.name, content_type: contentType(file), size: file.size };
    for (let tries = 0; tries < 3; tries += 1) {
      const single = threshold !== null && file.size <= threshold;
      let body = declared;
      if (single) {
        item.status("hashing");
        body = { ...declared, sha256: await sha256OfFile(file, signal) };
      }
      try {
        return await api("POST", "documents/upload-url", body);
      } catch (err) {
        const told = err instanceof ApiError && err.status === 400 && err.body
          && Number.isInteger(err.body.multipart_threshold_bytes);
        if (!told) throw err;
        threshold = err.body.multipart_threshold_bytes;
        if ((file.size <= threshold) === single) throw err; // not about the SHA-256
      }
    }
    throw new Error("the server's multipart threshold keeps changing: try again");
  }

  // Part URLs can be asked for once a worker has created the multipart upload, moments after
  // the request (asking earlier gets 409 upload_not_ready, which sendParts also waits out).
  async function untilReady(up, signal) {
    const deadline = Date.now() + READY_LIMIT_MS;
    for (let wait = 100; ; wait = Math.min(1000, wait * 2)) {
      const status = await api("GET", documentPath(up.id, "/upload"), undefined, signal);
      if (status.ready) return;
      if (status.document.status !== "pending") {
        throw new Error(`the document is ${status.document.status}`);
      }
      if (Date.now() > deadline) throw new Error("the server did not start the upload in time");
      await sleep(wait, signal);
    }
  }

  // The remembered document of this file, if it is still pending in parts of this size.
  async function resumable(who, file) {
    const id = resume.recall(who, file);
    if (!id) return null;
    try {
      const status = await api("GET", documentPath(id, "/upload"));
      if (status.document.status === "pending" && status.multipart
          && status.multipart.size === file.size) {
        return status;
      }
    } catch (err) {
      if (!(err instanceof ApiError) || err.transient) throw err; // keep it for a retry
    }
    resume.forget(who, file);
    return null;
  }

  async function follow(up) {
    const deadline = Date.now() + POLL_LIMIT_MS;
    for (;;) {
      const doc = await api("GET", documentPath(up.id));
      up.item.status(doc.status);
      if (FINAL.has(doc.status)) return doc;
      if (Date.now() > deadline) throw new Error(`still ${doc.status}; refresh later`);
      await sleep(POLL_MS);
    }
  }

  async function confirm(up) {
    const doc = await api("POST", documentPath(up.id, "/confirm"));
    up.confirmed = true;
    up.item.controls({});
    up.item.status(doc.status);
  }

  async function sendSingle(up, ticket, signal) {
    const { file, item } = up;
    if (!ticket.url) {
      item.status("deduplicated"); // the same content is already stored: nothing to send
      item.progress(1);
      up.confirmed = true;
      item.controls({});
      return;
    }
    item.status("uploading");
    await putBlob(ticket, file, { signal, onProgress: (bytes) => item.progress(bytes / file.size) });
    item.progress(1);
    await confirm(up);
  }

  async function sendMultipart(up, plan, reported, ready, signal) {
    const { file, item } = up;
    item.parts(reported.filter((p) => p.etag).length, plan.part_count);
    if (!ready) await untilReady(up, signal);
    item.status("uploading");
    await sendParts({
      api,
      file,
      id: up.id,
      plan,
      reported,
      signal,
      onProgress: (bytes) => item.progress(bytes / plan.size),
      onPart: (done, total) => item.parts(done, total),
    });
    item.progress(1);
    await confirm(up);
    resume.forget(up.owner, file);
  }

  async function run(up, signal) {
    const { file, item } = up;
    if (!up.owner) throw new Error("enter an owner id first");
    const status = await resumable(up.owner, file);
    if (status) {
      up.id = status.document.id;
      item.documentId = up.id;
      item.status("resuming");
      await sendMultipart(up, status.multipart, status.parts, status.ready, signal);
    } else {
      const ticket = await requestTicket(file, item, signal);
      up.id = ticket.document.id;
      item.documentId = up.id;
      signal.throwIfAborted();
      if (ticket.multipart) {
        resume.remember(up.owner, file, up.id);
        await sendMultipart(up, ticket.multipart, [], false, signal);
      } else {
        await sendSingle(up, ticket, signal);
      }
    }
    const doc = await follow(up);
    if (doc.status === "available") item.available(up.id);
    else if (doc.reason) item.fail(`${doc.status}: ${doc.reason}`);
  }

  // Cancel: delete the document (the workers abort its multipart upload and purge any bytes).
  async function discard(up) {
    up.item.controls({});
    up.item.clearError();
    if (up.owner) resume.forget(up.owner, up.file);
    if (!up.id) {
      up.item.status("cancelled");
      return;
    }
    up.item.status("cancelling");
    try {
      const doc = await api("DELETE", documentPath(up.id));
      up.item.status(doc.status);
      await follow(up);
    } catch (err) {
      up.item.fail(`cancel failed: ${err.message}`);
      up.item.controls({ canCancel: true }); // try the delete again
    }
  }

  async function start(up) {
    const key = `${up.owner}\n${up.file.name}\n${up.file.size}\n${up.file.lastModified}`;
    if (active.has(key)) {
      up.item.fail("this file is already being uploaded from this page");
      return;
    }
    active.add(key);
    const controller = new AbortController();
    up.abort = () => controller.abort();
    up.item.clearError();
    up.item.controls({ canCancel: true });
    try {
      await run(up, controller.signal);
    } catch (err) {
      if (controller.signal.aborted) {
        await discard(up);
      } else {
        up.item.fail(err.message, !up.confirmed && retryable(err));
      }
    } finally {
      up.abort = null;
      active.delete(key);
      onSettled();
    }
  }

  return function upload(file) {
    const item = newItem(list, file.name, downloadLink);
    const up = { file, item, owner: owner(), id: null, confirmed: false, abort: null };
    item.onCancel(() => {
      if (up.abort) up.abort(); // the run stops, then deletes the document
      else discard(up).finally(onSettled);
    });
    item.onRetry(() => { start(up); });
    start(up);
  };
}
