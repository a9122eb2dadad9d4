// SHA-256 of files without holding them in memory.
//
// crypto.subtle.digest hashes one buffer at once: a whole file hashed with it must be read
// into memory whole (a 4 GiB file crashes the tab). So a file sent with one PUT above
// WHOLE_BYTES is hashed here incrementally (FIPS 180-4 in plain JS, no dependency), a chunk
// at a time; a part of a multipart upload, or a small file, is bounded and goes to
// crypto.subtle (native, about ten times faster) where the page is a secure context.
// Checked against Python's hashlib in tests/system/test_browser.py.

/** Bytes read from a file per step of the incremental hash. */
export const CHUNK_BYTES = 4 * 1024 * 1024;
/** A file sent with one PUT up to this size is read whole and hashed with crypto.subtle. */
export const WHOLE_BYTES = 16 * 1024 * 1024;

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const INITIAL = [
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

// Hash the whole 64-byte blocks of bytes[offset, end) into state h; returns where it stopped.
// All arithmetic stays in int32 (| 0), which V8 keeps unboxed.
function compress(h, w, bytes, offset, end) {
  let h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5], h6 = h[6], h7 = h[7];
  while (offset + 64 <= end) {
    for (let i = 0; i < 16; i += 1, offset += 4) {
      w[i] = (bytes[offset] << 24) | (bytes[offset + 1] << 16)
        | (bytes[offset + 2] << 8) | bytes[offset + 3];
    }
    for (let i = 16; i < 64; i += 1) {
      const x = w[i - 15];
      const y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, hh = h7;
    for (let i = 0; i < 64; i += 1) {
      const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + s1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0;
      d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + hh) | 0;
  }
  h[0] = h0; h[1] = h1; h[2] = h2; h[3] = h3; h[4] = h4; h[5] = h5; h[6] = h6; h[7] = h7;
  return offset;
}

/** An incremental SHA-256: update(bytes) any number of times, then hex() once. */
export class Sha256 {
  constructor() {
    this.h = new Int32Array(INITIAL);
    this.w = new Int32Array(64);
    this.block = new Uint8Array(64); // the bytes of an unfinished block
    this.buffered = 0;
    this.length = 0; // bytes hashed so far (exact up to 2^53)
  }

  update(bytes) {
    const n = bytes.length;
    let offset = 0;
    this.length += n;
    if (this.buffered > 0) {
      offset = Math.min(64 - this.buffered, n);
      this.block.set(bytes.subarray(0, offset), this.buffered);
      this.buffered += offset;
      if (this.buffered < 64) return this;
      compress(this.h, this.w, this.block, 0, 64);
      this.buffered = 0;
    }
    offset = compress(this.h, this.w, bytes, offset, n);
    if (offset < n) {
      this.block.set(bytes.subarray(offset), 0);
      this.buffered = n - offset;
    }
    return this;
  }

  hex() {
    const bits = this.length * 8;
    const tail = new Uint8Array(this.buffered < 56 ? 64 : 128);
    tail.set(this.block.subarray(0, this.buffered));
    tail[this.buffered] = 0x80;
    const view = new DataView(tail.buffer);
    view.setUint32(tail.length - 8, Math.floor(bits / 0x100000000));
    view.setUint32(tail.length - 4, bits % 0x100000000);
    compress(this.h, this.w, tail, 0, tail.length);
    return Array.from(this.h, (x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
  }
}

// Every read goes through one lane, one at a time, into one reused buffer. A part read with
// blob.arrayBuffer() would leave a new ArrayBuffer behind for each part, which V8 frees only
// at its next collection, tens of MiB later; a BYOB reader fills this buffer again instead.
// So the page holds about one part however many parts (or files) are in flight.
let lane = Promise.resolve();
let scratch = new ArrayBuffer(0);

function inLane(fn) {
  const run = lane.then(fn);
  lane = run.catch(() => undefined);
  return run;
}

// Call onChunk(bytes) with each chunkBytes of blob in turn (the last one may be shorter);
// `bytes` is only valid until onChunk's promise settles.
async function eachChunk(blob, chunkBytes, onChunk, signal) {
  let reader = null;
  try {
    reader = blob.stream().getReader({ mode: "byob" });
  } catch (_) {
    reader = null; // no BYOB reads of a Blob in this browser: a new buffer per chunk
  }
  if (reader === null) {
    for (let offset = 0; offset < blob.size; offset += chunkBytes) {
      if (signal) signal.throwIfAborted();
      await onChunk(new Uint8Array(await blob.slice(offset, offset + chunkBytes).arrayBuffer()));
    }
    return;
  }
  if (scratch.byteLength < chunkBytes) scratch = new ArrayBuffer(chunkBytes); // or detached
  let total = 0;
  let done = false;
  try {
    while (!done) {
      if (signal) signal.throwIfAborted();
      let filled = 0;
      while (filled < chunkBytes) {
        const read = await reader.read(new Uint8Array(scratch, filled, chunkBytes - filled));
        if (read.value) scratch = read.value.buffer; // the same memory, handed back
        if (read.done) { done = true; break; }
        filled += read.value.byteLength;
      }
      total += filled;
      if (filled > 0) await onChunk(new Uint8Array(scratch, 0, filled));
    }
  } finally {
    if (!done) reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
  if (total !== blob.size) throw new Error("the file changed while it was read: pick it again");
}

/** Hex SHA-256 of a Blob in plain JS, read CHUNK_BYTES at a time: never the whole in memory. */
export function sha256Incremental(blob, signal) {
  return inLane(async () => {
    const hash = new Sha256();
    await eachChunk(blob, CHUNK_BYTES, (bytes) => { hash.update(bytes); }, signal);
    return hash.hex();
  });
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Hex SHA-256 of a Blob small enough to read whole (one part), with crypto.subtle where the
 * page is a secure context (https or localhost), incrementally in JS elsewhere. */
export function sha256OfPart(blob) {
  const subtle = window.crypto && window.crypto.subtle;
  if (!subtle) return sha256Incremental(blob);
  return inLane(async () => {
    let digest = null;
    await eachChunk(blob, Math.max(1, blob.size), async (bytes) => {
      // digest() copies the bytes when called; the buffer is reused once it has answered.
      digest = await subtle.digest("SHA-256", bytes);
    });
    return hex(digest || await subtle.digest("SHA-256", new Uint8Array(0)));
  });
}

/** Hex SHA-256 of a file sent with one PUT: natively (read whole into the reused buffer) up
 * to WHOLE_BYTES, incrementally in JS above (about ten times slower than crypto.subtle, but
 * it never holds more than a chunk of a file that may be as large as the threshold). */
export function sha256OfFile(blob, signal) {
  return blob.size <= WHOLE_BYTES ? sha256OfPart(blob) : sha256Incremental(blob, signal);
}
