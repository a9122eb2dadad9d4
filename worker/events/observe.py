"""What storage shows of a document's object, and whether it matches what was declared.
Called outside any transaction: a storage call never holds a row lock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outbox.settings import Settings
from worker.storage import ObjectInfo, Storage
from worker.verification import Declared, mismatch


@dataclass(frozen=True)
class Observation:
    """What storage showed of a document's object, and why it does not match (if so)."""

    info: ObjectInfo | None
    problem: str | None

    @property
    def missing(self) -> bool:
        return self.info is None

    @property
    def matches(self) -> bool:
        return self.info is not None and self.problem is None


def observe(storage: Storage, settings: Settings, doc: Mapping[str, Any]) -> Observation:
    """HeadObject the document's key and compare size, SHA-256 and type with ``doc``'s
    declared fields. When storage kept no SHA-256 and the size matches, the body is read and
    hashed (``verify_full_read_fallback``)."""
    info = storage.head(doc["object_key"])
    if info is None:
        return Observation(None, None)
    computed = None
    if (
        info.sha256_b64 is None
        and settings.verify_full_read_fallback
        and info.size == doc["declared_size"]
    ):
        computed = storage.sha256_hex(doc["object_key"], doc["declared_size"])
    declared = Declared(doc["declared_size"], doc["sha256"], doc["content_type"])
    return Observation(info, mismatch(declared, info, computed))
