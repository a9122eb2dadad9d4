"""What a client does with one item, by its scenario, and what the document must end as."""

from __future__ import annotations

import time
from typing import Any

from harness.chaos.client import Client
from harness.chaos.config import EXPECTED, Scenario
from harness.chaos.items import Item, ItemResult
from harness.chaos.state import ChaosRun
from outbox import DocumentStatus, InvalidState, QuotaExceeded


def deferred_step(run: ChaosRun, client: Client, *, force: bool) -> bool:
    """Delete one deferred document if it is available (or waited long enough, or ``force``
    after the load). False when there is nothing deferred."""
    entry = run.take_deferred()
    if entry is None:
        return False
    owner, doc_id, give_up = entry
    try:
        status = client.status(owner, doc_id)
        if status == DocumentStatus.AVAILABLE or time.monotonic() > give_up:
            client.delete(owner, doc_id)
            run.counters.inc(
                "deletes_after_available"
                if status == DocumentStatus.AVAILABLE
                else "deletes_before_available"
            )
            return True
    except Exception as exc:
        run.error(f"deferred delete {doc_id}: {exc!r}")
        return True
    run.return_deferred(entry)
    if force:
        time.sleep(0.2)  # waiting for the document to become available (bounded by give_up)
    return True


def do_item(run: ChaosRun, client: Client, tamper: Any, item: Item, result: ItemResult) -> None:
    """Play ``item``'s scenario; ``result`` gets its document and what it must end as."""
    counters = run.counters
    expected = EXPECTED[item.scenario]
    try:
        ticket = client.request(item)
    except QuotaExceeded:
        counters.inc("quota_refusals")
        result.note = "quota refused"
        return
    doc_id = ticket.document.id
    result.document_id = doc_id
    result.expected = expected
    if ticket.deduplicated:
        # A request retried after its commit's answer was lost finds its own document.
        counters.inc("request_retry_dedups")
    sc = item.scenario

    if sc == Scenario.ABANDONED:
        return
    if sc == Scenario.DELETE_IN_FLIGHT and item.variant in (1, 2):
        # Delete while pending; variant 2 then PUTs anyway with the still valid URL
        # (a late upload: the purge's re-check after the URL expires must remove it).
        client.delete(item.owner, doc_id)
        if item.variant == 2:
            client.put(ticket, item.body)
            counters.inc("late_puts")
        return
    if sc == Scenario.DUPLICATE and item.variant == 0:
        # The same content requested again while the first is still pending: same document.
        again = client.request(item)
        if again.document.id != doc_id or not again.deduplicated:
            raise AssertionError(f"pending duplicate made document {again.document.id}")
        counters.inc("dedup_pending")
        ticket = again
    client.put(ticket, item.body)
    if sc == Scenario.LOST_CONFIRM:
        return
    if sc == Scenario.TAMPERED:
        # Replace the object behind the system's back (the workers' HeadObject must notice):
        # same size with other bytes, or another size.
        other = bytes(b ^ 0x5A for b in item.body)
        if item.variant == 0:
            other = other[: max(1, len(other) // 2)]
        tamper.put_object(
            Bucket=run.settings.s3_bucket,
            Key=ticket.document.object_key,
            Body=other,
            ContentType=item.content_type,
        )
    try:
        client.confirm(item, doc_id)
    except InvalidState as exc:
        # Only if the URL expired before the confirm got through (a long outage).
        counters.inc("confirm_too_late")
        result.expected = None
        result.note = f"confirm refused: {exc}"
        return
    if sc == Scenario.DUPLICATE and item.variant != 0:
        again = client.request(item)
        if again.document.id != doc_id or again.url is not None:
            raise AssertionError(f"duplicate of {doc_id} made document {again.document.id}")
        counters.inc("dedup_stored")
    if sc == Scenario.DELETE_IN_FLIGHT:
        client.delete(item.owner, doc_id)
    elif sc == Scenario.DELETE_AFTER:
        run.defer_delete(item.owner, doc_id)
    elif sc == Scenario.OVER_QUOTA and item.variant == 0:
        # Free some of the small quota again, so the owner keeps being near its limit.
        client.delete(item.owner, doc_id)
        result.expected = DocumentStatus.DELETED
