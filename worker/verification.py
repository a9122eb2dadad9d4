"""Does a stored object match what was declared and signed? Pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from outbox.presign import sha256_b64
from worker.storage import ObjectInfo


@dataclass(frozen=True)
class Declared:
    size: int
    sha256_hex: str
    content_type: str


def mismatch(declared: Declared, info: ObjectInfo, computed_sha256_hex: str | None) -> str | None:
    """Why the object does not match, or None when size, SHA-256 and content type match and
    the object carries no response-affecting metadata s3-outbox did not set (invariant 1).

    ``computed_sha256_hex`` is the hash of the body read in full, used when HeadObject gave
    no SHA-256 checksum; with neither, the object cannot be proven and does not match.
    """
    if info.size != declared.size:
        return f"size mismatch: declared {declared.size} bytes, stored {info.size}"
    if info.sha256_b64 is not None:
        if info.sha256_b64 != sha256_b64(declared.sha256_hex):
            return "sha256 mismatch: stored checksum differs from the declared one"
    elif computed_sha256_hex is None:
        return "sha256 unknown: storage kept no checksum and the body could not be read"
    elif computed_sha256_hex != declared.sha256_hex:
        return "sha256 mismatch: stored body hashes differently from the declared one"
    stored_type = (info.content_type or "").split(";")[0].strip().lower()
    if stored_type != declared.content_type:
        return f"content type mismatch: declared {declared.content_type}, stored {stored_type}"
    if info.foreign_metadata:
        shown = ", ".join(f"{name}: {value[:80]}" for name, value in info.foreign_metadata)
        return f"stored metadata the service did not set (it would change downloads): {shown}"
    return None
