// The reference API as the page calls it: JSON in and out, the demo owner header, and errors
// as ApiError (HTTP status, the JSON error body, Retry-After). Paths are relative, so the page
// works under a prefix.

/** An error answer of the API (or no answer: status 0). */
export class ApiError extends Error {
  constructor(message, status, body, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
    this.code = body && body.error;
    this.retryAfter = retryAfter; // seconds, or null
  }

  /** Worth asking again: the API or the network failed, not the request. */
  get transient() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** A function api(method, path, body?, signal?) that sends `owner()` as X-Owner-Id. */
export function makeApi(owner) {
  return async function api(method, path, body, signal) {
    const headers = { "X-Owner-Id": owner(), Accept: "application/json" };
    const init = { method, headers, signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(`the server is unreachable (${err.message})`, 0, null, null);
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const header = Number.parseInt(resp.headers.get("Retry-After") || "", 10);
      const retryAfter = Number.isFinite(header) ? header
        : (data && Number.isFinite(data.retry_after) ? data.retry_after : null);
      throw new ApiError((data && data.message) || `HTTP ${resp.status}`, resp.status, data,
        retryAfter);
    }
    return data;
  };
}

/** Resolve after `ms`, or reject with the signal's reason once it is aborted. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(signal.reason); return; }
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() { clearTimeout(timer); reject(signal.reason); }
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
  });
}
