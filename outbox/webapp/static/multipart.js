// One large file sent in parts, as the server planned them (its upload-url answer carries the
// plan: part size and count). Each part is read from the file (Blob.slice) and hashed just
// before it is sent, so the page never holds the file; its URL is asked with that SHA-256
// (storage refuses any other body for it), the part PUT with exactly the signed headers, and
// its ETag reported so that a reload can resume. A part that fails is sent again with
// exponential backoff, a bounded number of times.

import { ApiError, sleep } from "./api.js";
import { sha256OfPart } from "./sha256.js";
import { putBlob, StorageError } from "./storage.js";

/** Parts sent at the same time. */
export const IN_FLIGHT = 4;
/** Attempts at one part (hash, URL, PUT, report) before the upload stops with an error. */
export const MAX_ATTEMPTS = 5;
const BACKOFF_MS = 500;
const BACKOFF_MAX_MS = 8000;
// How long to keep asking while the server says the multipart upload is not created yet
// (a worker creates it moments after the request; longer means the workers are down).
const NOT_READY_LIMIT_MS = 2 * 60 * 1000;

/** A part could not be sent: attempts ran out, or the error is one a retry cannot cure. */
export class PartFailed extends Error {
  constructor(partNumber, attempts, cause) {
    const tries = attempts > 1 ? ` (after ${attempts} attempts)` : "";
    super(`part ${partNumber}: ${cause.message}${tries}`, { cause });
    this.name = "PartFailed";
    this.partNumber = partNumber;
  }
}

class MissingEtag extends Error {}

function retryable(err) {
  return (err instanceof ApiError || err instanceof StorageError) && err.transient;
}

function backoff(attempt) {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MS * 2 ** (attempt - 1));
  return ms * (0.75 + Math.random() / 2); // jitter: parts that failed together retry apart
}

/** Byte range [start, end) of part n (1-based) of the plan. */
export function partRange(plan, n) {
  const start = (n - 1) * plan.part_size;
  return [start, Math.min(plan.size, start + plan.part_size)];
}

/**
 * Send the parts of `file` to document `id` and report each one; resolves once every part of
 * `plan` is reported. `reported` (from GET documents/{id}/upload) are parts already sent:
 * each is hashed again and skipped when its SHA-256 is the one reported. `onProgress(bytes)`
 * gets the bytes sent over all parts (reported ones included), `onPart(done, total)` each
 * part finished. Rejects with `signal`'s reason once it is aborted (the PUTs in flight are
 * aborted), or with the first PartFailed after the parts in flight have finished.
 */
export async function sendParts({ api, file, id, plan, reported = [], signal, onProgress, onPart }) {
  const base = `documents/${encodeURIComponent(id)}/parts/`;
  const known = new Map(reported.filter((p) => p.etag).map((p) => [p.part_number, p]));
  const inFlight = new Map(); // part number -> bytes of it sent so far
  let doneBytes = 0;
  let done = 0;
  let next = 1;
  let failure = null;

  const progress = () => {
    let sent = doneBytes;
    for (const bytes of inFlight.values()) sent += bytes;
    if (onProgress) onProgress(sent);
  };

  async function partUrl(n, sha256) {
    const deadline = Date.now() + NOT_READY_LIMIT_MS;
    for (;;) {
      try {
        return await api("POST", `${base}${n}/upload-url`, { sha256 }, signal);
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== "upload_not_ready") throw err;
        if (Date.now() > deadline) throw new Error("the server did not start the upload in time");
        await sleep(1000 * (err.retryAfter || 1), signal);
      }
    }
  }

  // One attempt at part n: hash, skip it if already reported with this hash, else URL, PUT,
  // report. Returns whether it was sent.
  async function attempt(n, blob, first) {
    const sha256 = await sha256OfPart(blob);
    signal.throwIfAborted();
    const have = known.get(n);
    if (first && have && have.sha256 === sha256) return false;
    const ticket = await partUrl(n, sha256);
    inFlight.set(n, 0);
    const etag = await putBlob(ticket, blob, {
      signal,
      onProgress: (bytes) => { inFlight.set(n, bytes); progress(); },
    });
    if (!etag) {
      throw new MissingEtag("storage did not expose the part's ETag (its CORS rule must list"
        + " ETag in the exposed headers)");
    }
    // Not aborted with the signal: a report the server may have recorded is not left unknown.
    await api("PUT", `${base}${n}`, { etag });
    return true;
  }

  async function sendPart(n) {
    const [start, end] = partRange(plan, n);
    const blob = file.slice(start, end);
    for (let tries = 1; ; tries += 1) {
      try {
        await attempt(n, blob, tries === 1);
        break;
      } catch (err) {
        inFlight.delete(n);
        progress();
        if (signal.aborted) throw signal.reason;
        if (!retryable(err) || tries >= MAX_ATTEMPTS) throw new PartFailed(n, tries, err);
        await sleep(backoff(tries), signal);
      }
    }
    inFlight.delete(n);
    doneBytes += end - start;
    done += 1;
    progress();
    if (onPart) onPart(done, plan.part_count);
  }

  async function worker() {
    while (failure === null && !signal.aborted && next <= plan.part_count) {
      const n = next;
      next += 1;
      try {
        await sendPart(n);
      } catch (err) {
        if (failure === null) failure = err;
      }
    }
  }

  progress();
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, plan.part_count) }, worker));
  signal.throwIfAborted();
  if (failure !== null) throw failure;
}
