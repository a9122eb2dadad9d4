"""``verify`` of a multipart document: check every part, complete the upload, then verify the
completed object, before the document is made ``available`` (quota charged) or ``rejected``
(reservation released, upload aborted and object purged by the purge it queues).

1. ListParts (every page): parts 1..N all there, each with the size the plan says (the
   total is then the declared size), and, where storage lists part checksums, each part's
   SHA-256 the one recorded when its URL was signed. Of several uploads of one number
   (SeaweedFS lists them all), the one whose ETag the client reported (``choose``).
2. CompleteMultipartUpload with each part's ETag and recorded SHA-256 (storage refuses a
   digest that is not the part's) and ``If-None-Match: *`` where the store supports it.
3. HeadObject with ChecksumMode: the size, and the composite SHA-256, which storage made from
   the digests it checked each part's bytes against, must equal the composite of the
   recorded digests; the content type and metadata as for any object.

Idempotent across crashes: an upload already completed (ListParts or Complete answer
NoSuchUpload, or If-None-Match finds the object) goes straight to the HEAD, which decides.
Missing or wrong parts, or an object not visible yet, are snoozed with backoff until
``verify_deadline_seconds`` after the first attempt that found them so, then rejected. No
fast path: the relay sends no hint for a multipart document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from outbox.constants import DocumentStatus
from outbox.presign import sha256_b64
from worker.events import documents, lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.events.observe import Observation
from worker.pool import Row, read_all, transaction
from worker.storage import Completion, PartInfo, Storage
from worker.verification import DeclaredParts, composite_sha256, multipart_mismatch


@dataclass(frozen=True)
class Inspection:
    """What the parts and the completed object showed.

    ``observation``: the HEAD of the completed object (None: not there). ``problem``: why
    the document does not match. ``final``: the problem cannot go away (reject now); when
    False it may still (a part or the object not visible yet): snooze until the deadline.
    """

    observation: Observation | None
    problem: str | None
    final: bool

    @property
    def matches(self) -> bool:
        return self.observation is not None and self.observation.matches


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    inspection = None
    if doc is not None and doc["status"] == DocumentStatus.UPLOADED:
        recorded = read_all(ctx.pool, lifecycle.sql()["recorded_parts"], {"id": doc["id"]})
        inspection = inspect(ctx.storage, doc, recorded)
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        if doc is None or doc["status"] != DocumentStatus.UPLOADED or inspection is None:
            return lifecycle.complete(cur, event, now)
        if inspection.matches:
            assert inspection.observation is not None
            documents.accept(
                cur, ctx.settings, doc, inspection.observation, DocumentStatus.REJECTED, now
            )
        elif inspection.final:
            info = inspection.observation.info if inspection.observation else None
            documents.refuse(cur, doc, DocumentStatus.REJECTED, inspection.problem, info, now)
        else:
            deadline = locked.verify_deadline(ctx.settings, doc["confirmed_at"])
            remaining = (deadline - locked.clock).total_seconds()
            why = inspection.problem or "the completed object is not visible in storage yet"
            if remaining > 0:
                delay = min(lifecycle.backoff_seconds(ctx.settings, attempt - 1), remaining)
                return lifecycle.snooze(cur, event, attempt, delay, now, why, missing=True)
            reason = inspection.problem or (
                "the multipart upload was not found in storage before the verification deadline"
            )
            documents.refuse(cur, doc, DocumentStatus.REJECTED, reason, None, now)
        return lifecycle.complete(cur, event, now)


def inspect(storage: Storage, doc: Row, recorded: Sequence[Row]) -> Inspection:
    """Look at the parts, complete the upload, HEAD the object (see the module docstring).
    Storage calls only: no transaction is open."""
    count, part_size, size = doc["part_count"], doc["part_size"], doc["declared_size"]
    expected = [min(part_size, size - part_size * (n - 1)) for n in range(1, count + 1)]
    if [(r["part_number"], r["size"]) for r in recorded] != list(
        zip(range(1, count + 1), expected, strict=True)
    ):
        # confirm requires every part reported, so this is a broken row: it cannot heal.
        return Inspection(None, "the recorded parts do not cover the plan", final=True)
    digests = [str(r["sha256"]) for r in recorded]
    key, upload_id = doc["object_key"], doc["upload_id"]
    listed = storage.list_parts(key, upload_id) if upload_id is not None else None
    if listed is not None:  # None: completed earlier (or aborted): the HEAD decides
        parts = choose(listed, {r["part_number"]: r.get("etag") for r in recorded})
        problem = parts_problem(parts, expected, digests)
        if problem is not None:
            return Inspection(None, problem, final=False)
        completion = storage.complete_multipart(
            key,
            upload_id,
            [(n, parts[n].etag, sha256_b64(d)) for n, d in enumerate(digests, 1)],
        )
        if completion.outcome == Completion.REFUSED:
            why = f"storage refused to complete the upload ({completion.detail})"
            return Inspection(None, why, final=False)
    info = storage.head(key)
    if info is None:
        return Inspection(None, None, final=False)
    declared = DeclaredParts(size, composite_sha256(digests), doc["content_type"])
    problem = multipart_mismatch(declared, info)
    if problem is None:
        # The object is complete: no other upload of this key may stay (a create whose
        # answer was lost made one that no row names; a rejection's purge aborts them all).
        storage.abort_uploads_of(key)
    return Inspection(Observation(info, problem), problem, final=True)


def choose(listed: Sequence[PartInfo], reported: Mapping[int, str | None]) -> dict[int, PartInfo]:
    """One part per number. SeaweedFS 4.48 lists every upload of a part number (a retried or
    replaced part appears twice) and completes the one whose ETag it is given; AWS S3 lists
    only the last. Take the one whose ETag the client reported, else the last listed:
    storage then checks the recorded SHA-256 against the part it picked, whichever it is."""
    chosen: dict[int, PartInfo] = {}
    for part in listed:  # listing order within a number
        current = chosen.get(part.number)
        if current is None or current.etag != reported.get(part.number):
            chosen[part.number] = part
    return chosen


def parts_problem(
    listed: Mapping[int, PartInfo], sizes: Sequence[int], digests: Sequence[str]
) -> str | None:
    """Why the listed parts are not the plan's (numbers 1..N, each its planned size, and its
    recorded SHA-256 where storage lists one), or None."""
    missing = [n for n in range(1, len(sizes) + 1) if n not in listed]
    if missing:
        return f"parts missing in storage: {_numbers(missing)}"
    extra = sorted(n for n in listed if n > len(sizes))
    if extra:
        return f"parts beyond the plan in storage: {_numbers(extra)}"
    wrong = [n for n, want in enumerate(sizes, 1) if listed[n].size != want]
    if wrong:
        n = wrong[0]
        return (
            f"parts of the wrong size in storage: {_numbers(wrong)}"
            f" (part {n}: {listed[n].size} bytes, planned {sizes[n - 1]})"
        )
    differ = [
        n
        for n, digest in enumerate(digests, 1)
        if listed[n].sha256_b64 is not None and listed[n].sha256_b64 != sha256_b64(digest)
    ]
    if differ:
        return f"parts whose SHA-256 differs from the one signed: {_numbers(differ)}"
    return None


def _numbers(numbers: Sequence[int], shown: int = 20) -> str:
    text = ", ".join(str(n) for n in numbers[:shown])
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")
