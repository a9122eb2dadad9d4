// Which document a file is being uploaded in parts to, kept in localStorage so that after a
// reload the user picks the same file again and the upload resumes from the parts already
// reported. A file is known by its owner, name, size and modification time (a page cannot
// see its path); the parts' SHA-256 are checked again before any is skipped.

const PREFIX = "s3outbox.upload:";
// The longest upload window the server allows (7 days): older entries are stale.
const MAX_AGE_MS = 7 * 24 * 3600 * 1000;

function keyOf(owner, file) {
  return PREFIX + JSON.stringify([owner, file.name, file.size, file.lastModified]);
}

function store() {
  try { return window.localStorage; } catch (_) { return null; } // storage disabled
}

/** The document id remembered for this file, or null. */
export function recall(owner, file) {
  const s = store();
  if (!s) return null;
  try {
    const entry = JSON.parse(s.getItem(keyOf(owner, file)) || "null");
    return entry && typeof entry.id === "string" ? entry.id : null;
  } catch (_) {
    return null;
  }
}

/** Remember the document this file goes to (and drop stale entries). */
export function remember(owner, file, id) {
  const s = store();
  if (!s) return;
  prune(s);
  try { s.setItem(keyOf(owner, file), JSON.stringify({ id, at: Date.now() })); } catch (_) { /* full */ }
}

/** Forget the file's document: it was confirmed, cancelled, or is no longer pending. */
export function forget(owner, file) {
  const s = store();
  if (s) s.removeItem(keyOf(owner, file));
}

function prune(s) {
  for (let i = s.length - 1; i >= 0; i -= 1) {
    const key = s.key(i);
    if (!key || !key.startsWith(PREFIX)) continue;
    let at = 0;
    try { at = JSON.parse(s.getItem(key)).at || 0; } catch (_) { at = 0; }
    if (Date.now() - at > MAX_AGE_MS) s.removeItem(key);
  }
}
