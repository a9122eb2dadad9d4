"""The multipart scenario: a file above the threshold, uploaded in parts as the upload page
and the Python helper do (part URL, PUT over HTTP, report the ETag), while the faults go on.

Variants (``item.variant``):
  0. every part sent and reported, then confirmed -> available;
  1. a lying client: the last part reported with an ETag but never sent, then confirmed ->
     rejected (the worker lists the parts itself), the upload aborted;
  2. some parts sent, then deleted (even index) -> deleted, the upload aborted; or left
     there (odd index) -> expired when its URLs run out, the upload aborted.
Whatever the variant, the judge then finds no upload in progress without a live document.
"""

from __future__ import annotations

import random
import time
from typing import Any

from harness.chaos.client import Client
from harness.chaos.items import Item, ItemResult
from harness.chaos.state import ChaosRun
from outbox import DocumentStatus, InvalidState, QuotaExceeded, UploadNotReady
from outbox.models import PartTicket, UploadTicket
from outbox.settings import MIB

#: Storage's smallest part (all parts but the last): the run's threshold and part size.
PART_BYTES = 5 * MIB
#: A multipart item is two full parts and a short last one.
PARTS = 3
#: Longest a client waits for a worker to create the upload (an outage delays it).
READY_WAIT_SECONDS = 60.0


def body_of(run: ChaosRun, item: Item) -> bytes:
    """The item's bytes, drawn from the seed when played (not held by every item)."""
    rng = random.Random(f"{run.config.seed}:multipart:{item.index}")
    return rng.randbytes((PARTS - 1) * PART_BYTES + rng.randint(1, 64 * 1024))


def _part(body: bytes, ticket: UploadTicket, number: int) -> bytes:
    assert ticket.multipart is not None
    offset, size = ticket.multipart.part_range(number)
    return body[offset : offset + size]


def _part_url(client: Client, item: Item, doc_id: Any, number: int, data: bytes) -> PartTicket:
    """A part URL, asked again while the worker has not created the upload yet."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while True:
        try:
            return client.part_url(item.owner, doc_id, number, data)
        except UploadNotReady as exc:
            client.counters.inc("multipart_not_ready_waits")
            if time.monotonic() > deadline:
                raise
            time.sleep(min(float(exc.details.get("retry_after") or 1), 2.0))  # its Retry-After


def do_multipart(run: ChaosRun, client: Client, item: Item, result: ItemResult) -> None:
    """Play one multipart item; ``result`` gets its document and what it must end as."""
    counters = run.counters
    body = body_of(run, item)
    try:
        ticket = client.request(item, multipart_size=len(body))
    except QuotaExceeded:
        counters.inc("quota_refusals")
        result.note = "quota refused"
        return
    assert ticket.multipart is not None, "a multipart item got a single PUT URL"
    doc_id = ticket.document.id
    result.document_id = doc_id
    count = ticket.multipart.part_count
    variant = item.variant % 3
    sent = count if variant == 0 else count - 1
    if variant == 0:
        result.expected = DocumentStatus.AVAILABLE
    elif variant == 1:
        result.expected = DocumentStatus.REJECTED
    else:
        result.expected = DocumentStatus.DELETED if item.index % 2 == 0 else DocumentStatus.EXPIRED
    try:
        for number in range(1, sent + 1):
            data = _part(body, ticket, number)
            part = _part_url(client, item, doc_id, number, data)
            etag = client.put_url(part.url, part.headers, data)
            client.report_part(item.owner, doc_id, number, etag)
            counters.inc("multipart_parts_sent")
        if variant == 1:
            # Asked for a URL, never PUT it, and reported an ETag anyway.
            data = _part(body, ticket, count)
            _part_url(client, item, doc_id, count, data)
            client.report_part(item.owner, doc_id, count, '"0123456789abcdef0123456789abcdef"')
            counters.inc("multipart_parts_lied_about")
    except (InvalidState, UploadNotReady) as exc:
        # Only when an outage outlasted the URLs: the document expired under the client.
        counters.inc("multipart_too_late")
        result.expected = None
        result.note = f"multipart upload cut short: {exc}"
        return
    if variant == 2:
        if item.index % 2 == 0:
            client.delete(item.owner, doc_id)
            counters.inc("multipart_deleted_midway")
        else:
            counters.inc("multipart_abandoned_midway")
        return
    try:
        client.confirm(item, doc_id)
    except InvalidState as exc:
        counters.inc("confirm_too_late")
        result.expected = None
        result.note = f"confirm refused: {exc}"
        return
    counters.inc("multipart_confirmed")
