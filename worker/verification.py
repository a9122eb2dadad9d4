"""Does a stored object match what was declared and signed? Pure logic, no I/O."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
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
    return _served_as_declared(declared.content_type, info)


@dataclass(frozen=True)
class DeclaredParts:
    """What a multipart document declares: its size, the composite SHA-256 its recorded part
    digests make (``composite_sha256``), and its content type."""

    size: int
    composite_sha256: str
    content_type: str


def composite_sha256(part_digests_hex: Sequence[str]) -> str:
    """The checksum S3 gives an object completed from parts uploaded with SHA-256 checksums:
    base64(SHA-256(digest 1 || ... || digest N)) + "-N", the raw 32-byte digests in part
    order (AWS S3's "composite" checksum; SeaweedFS 4.48 computes the same)."""
    joined = b"".join(bytes.fromhex(d) for d in part_digests_hex)
    combined = base64.b64encode(hashlib.sha256(joined).digest()).decode("ascii")
    return f"{combined}-{len(part_digests_hex)}"


def multipart_mismatch(declared: DeclaredParts, info: ObjectInfo) -> str | None:
    """Why an object completed from parts does not match, or None when its size, composite
    SHA-256 and content type match and it carries no response-affecting metadata s3-outbox
    did not set. Storage computed the composite from the digests it checked each part's
    bytes against, so an equal composite means every part is the one signed, in order.
    Without a composite (a store that keeps none) the object cannot be proven."""
    if info.size != declared.size:
        return f"size mismatch: declared {declared.size} bytes, stored {info.size}"
    if info.composite_sha256 is None and info.sha256_b64 is not None:
        return "sha256 mismatch: the object was not completed from parts (one PUT made it)"
    if info.composite_sha256 is None:
        return "sha256 unknown: storage kept no composite checksum of the parts"
    if info.composite_sha256 != declared.composite_sha256:
        return "sha256 mismatch: the parts' composite checksum differs from the declared parts'"
    return _served_as_declared(declared.content_type, info)


def _served_as_declared(content_type: str, info: ObjectInfo) -> str | None:
    """The content type matches and no stored metadata would change downloads."""
    stored_type = (info.content_type or "").split(";")[0].strip().lower()
    if stored_type != content_type:
        return f"content type mismatch: declared {content_type}, stored {stored_type}"
    if info.foreign_metadata:
        shown = ", ".join(f"{name}: {value[:80]}" for name, value in info.foreign_metadata)
        return f"stored metadata the service did not set (it would change downloads): {shown}"
    return None
