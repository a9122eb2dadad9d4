// PUTs straight to storage through a presigned URL, with XMLHttpRequest for its upload
// progress events (fetch has none for request bodies).

/** Storage refused a PUT or could not be reached (status 0). */
export class StorageError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "StorageError";
    this.status = status;
  }

  /** Worth sending again (with a new URL): anything but the upload being gone (404: the
   * document was deleted or expired, its multipart upload aborted). */
  get transient() {
    return this.status !== 404;
  }
}

/**
 * PUT `body` (a Blob: the browser streams it from disk) to `ticket.url` with exactly the signed
 * headers; the browser sets Content-Length from the body itself (scripts may not). Resolves
 * with the response's ETag (null when storage's CORS rule does not expose it).
 * `onProgress(bytesSent)` follows the upload; `signal` aborts it.
 */
export function putBlob(ticket, body, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(signal.reason); return; }
    const xhr = new XMLHttpRequest();
    const onAbort = () => xhr.abort();
    const done = () => { if (signal) signal.removeEventListener("abort", onAbort); };
    xhr.open(ticket.method || "PUT", ticket.url);
    for (const [name, value] of Object.entries(ticket.headers)) {
      if (name.toLowerCase() !== "content-length") xhr.setRequestHeader(name, value);
    }
    if (onProgress) xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      done();
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.getResponseHeader("ETag"));
      else reject(new StorageError(`storage refused the upload (HTTP ${xhr.status})`, xhr.status));
    };
    xhr.onerror = () => {
      done();
      reject(new StorageError("upload failed: storage unreachable or CORS refused", 0));
    };
    xhr.onabort = () => { done(); reject(signal ? signal.reason : new Error("aborted")); };
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
    xhr.send(body);
  });
}
