"""What a client does with one item, by its scenario, and what the document must end as."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harness.chaos.client import Client
from harness.chaos.config import EXPECTED, Scenario
from harness.chaos.items import Item, ItemResult
from harness.chaos.multipart import do_multipart
from harness.chaos.slow_put import SlowPut
from harness.chaos.state import ChaosRun
from outbox import DocumentStatus, InvalidState, QuotaExceeded
from outbox.models import UploadTicket

#: Unsigned headers a hostile uploader adds to the signed PUT, by item variant; storage
#: keeps each, and each would change what a download serves (Content-Encoding: gzip comes
#: with gzip bytes, declared and signed as such: see ``items.make_item``).
EXTRA_HEADERS = (
    ("Content-Encoding", "gzip"),
    ("Cache-Control", "public, max-age=31536000"),
    ("Content-Disposition", "inline"),
)
#: How long before its URL expires a slow upload starts its PUT.
SLOW_PUT_LEAD_SECONDS = 1.0
#: Pieces of a slow upload's body, and the pause between two of them.
SLOW_PUT_PIECES = 16
SLOW_PUT_PAUSE_SECONDS = 0.25


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


def slow_upload(run: ChaosRun, ticket: UploadTicket, body: bytes, result: ItemResult) -> None:
    """A PUT that starts just before its URL expires and sends its body slowly, holding the
    last piece back until the sweeper has expired the document (or until little is left of
    the longest upload, ``max_upload_seconds``): storage checks the expiry only when the
    request starts, so it stores the object after the document left its live state, and the
    purge re-check after ``upload_expires_at + max_upload_seconds + grace`` must remove it.
    If the document was not expired in time (an outage held the expire event back), its end
    is not fixed any more (expired, or available when the expire found the object)."""
    counters = run.counters
    assert ticket.expires_at is not None
    owner, doc_id = ticket.document.owner_id, ticket.document.id
    client = run.client()
    try:
        left = (ticket.expires_at - datetime.now(UTC)).total_seconds()
        if left < SLOW_PUT_LEAD_SECONDS / 2:
            # This thread started too late for a PUT that starts in time: an abandoned
            # upload, which must end expired as well.
            counters.inc("slow_uploads_started_too_late")
            return
        if left > SLOW_PUT_LEAD_SECONDS:
            time.sleep(left - SLOW_PUT_LEAD_SECONDS)  # the client starts just before expiry
        # The body must land before the purge re-check, with a margin.
        window = run.settings.max_upload_seconds - 3.0
        give_up = time.monotonic() + SLOW_PUT_LEAD_SECONDS + max(window, 1.0)
        put = SlowPut(ticket, body, pieces=SLOW_PUT_PIECES)
        put.start()
        expired = False
        while time.monotonic() < give_up:
            if put.left > put.piece:
                put.send()  # one more piece of a slow body; the last one waits for expiry
            expired = client.peek_status(owner, doc_id) == DocumentStatus.EXPIRED
            if expired:
                break
            time.sleep(SLOW_PUT_PAUSE_SECONDS)  # the slow link
        status, text = put.finish()
        if status != 200:
            counters.inc("slow_puts_refused")
            result.note = f"slow PUT answered {status}: {text}"
        elif expired:
            counters.inc("slow_puts_stored_after_expiry")
        if not expired:
            counters.inc("slow_uploads_not_expired_in_time")
            result.expected = None
            result.note = result.note or "not expired before the body had to land"
    except Exception as exc:
        run.error(f"slow upload {doc_id}: {exc!r}")
        result.expected = None
    finally:
        client.close()


def do_item(run: ChaosRun, client: Client, tamper: Any, item: Item, result: ItemResult) -> None:
    """Play ``item``'s scenario; ``result`` gets its document and what it must end as."""
    counters = run.counters
    if item.scenario == Scenario.MULTIPART:
        do_multipart(run, client, item, result)
        return
    expected = EXPECTED[item.scenario]
    try:
        expires_in = (
            run.config.slow_upload_ttl_seconds if item.scenario == Scenario.SLOW_UPLOAD else None
        )
        ticket = client.request(item, expires_in)
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
    if sc == Scenario.SLOW_UPLOAD:
        # Its own thread: the PUT starts just before the URL expires and ends after the
        # sweeper expired the document, seconds this client thread goes on working.
        body = item.body
        run.spawn(lambda: slow_upload(run, ticket, body, result), f"slow-put-{item.index}")
        return
    if sc == Scenario.DELETE_IN_FLIGHT and item.variant in (1, 2):
        # Delete while pending; variant 2 then PUTs anyway with the still valid URL
        # (a late upload: the purge's re-check after the URL expires must remove it).
        client.delete(item.owner, doc_id)
        if item.variant == 2:
            client.put(ticket, item.body)
            counters.inc("late_puts")
        return
    if sc == Scenario.SHARED:
        shared_content(run, client, item, ticket, result)
        return
    if sc == Scenario.DUPLICATE and item.variant == 0:
        # The same request again while the first is still pending (a retry): same document.
        again = client.request(item)
        if again.document.id != doc_id or not again.deduplicated:
            raise AssertionError(f"pending duplicate made document {again.document.id}")
        counters.inc("dedup_pending")
        ticket = again
    if sc == Scenario.EXTRA_HEADERS:
        header, value = EXTRA_HEADERS[item.variant % len(EXTRA_HEADERS)]
        client.put(ticket, item.body, {header: value})
        result.expected_reason = header
        counters.inc(f"extra_header:{header}")
    else:
        client.put(ticket, item.body)
    if sc == Scenario.LOST_CONFIRM:
        return
    if sc == Scenario.QUOTA_HELD:
        # Another app transaction holds the owner's quota row while this upload is confirmed:
        # the workers' verify of it (and of the owner's other uploads) waits out the lock
        # timeout, fails and is retried once the hold ends.
        with client.quota_held(item.owner) as held:
            client.confirm(item, doc_id)
            if held:
                time.sleep(run.config.quota_hold_seconds)  # the hold itself: a slow request
        counters.inc("quota_holds" if held else "quota_holds_missed")
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
        shares = (
            again.document.object_key == ticket.document.object_key
            and again.document.status == DocumentStatus.AVAILABLE
        )
        if again.url is not None or (again.document.id != doc_id and not shares):
            raise AssertionError(f"duplicate of {doc_id} made document {again.document.id}")
        # The first was verified before this request came (a fast worker): an available
        # document is not retried; the same request is then a new document sharing its
        # verified blob (the library's rule), charged at once.
        counters.inc("dedup_stored" if again.document.id == doc_id else "dedup_shared_verified")
    if sc == Scenario.DELETE_IN_FLIGHT:
        client.delete(item.owner, doc_id)
    elif sc == Scenario.DELETE_AFTER:
        run.defer_delete(item.owner, doc_id)
    elif sc == Scenario.OVER_QUOTA and item.variant == 0:
        # Free some of the small quota again, so the owner keeps being near its limit.
        client.delete(item.owner, doc_id)
        result.expected = DocumentStatus.DELETED


def shared_content(
    run: ChaosRun, client: Client, item: Item, ticket: UploadTicket, result: ItemResult
) -> None:
    """Issue 12: a second document of the same content (see ``Scenario.SHARED``). Variant 0:
    the same owner asks under another name and type before the upload (it waits on it);
    variant 1: after the confirm (it waits, or shares once verified), then the first is
    deleted once available (or after 30 s): the second keeps the object; on odd items, once
    the first is available, its delete (the last reference) races the second request in
    another thread: the second shares the blob, or finds it deleting and uploads anew;
    variant 2: another
    owner uploads its own copy (no existence leak: a URL of its own), the dedup shares the
    blob, and on odd items the first owner's document is deleted at once, racing that
    dedup. The second documents are recorded once the first's fate is known."""
    counters, doc_id = run.counters, ticket.document.id
    other_type = "text/plain" if item.content_type != "text/plain" else "application/json"
    extras: list[uuid.UUID] = []
    done = late = False

    def second(owner: str, c: Client = client) -> UploadTicket:
        return c.tx(
            "request_upload",
            lambda conn: run.outbox.request_upload(
                conn,
                owner_id=owner,
                filename=f"chaos copy {item.index}.txt",
                content_type=other_type,
                size=len(item.body),
                sha256=item.sha256,
            ),
        )

    def finish(copy: UploadTicket, owner: str) -> None:
        """A second document that got an upload URL of its own: upload and confirm it."""
        client.put(copy, item.body)
        client.tx(
            "confirm",
            lambda c: run.outbox.confirm(c, owner_id=owner, document_id=copy.document.id),
        )

    try:
        if item.variant == 0:
            copy = second(item.owner)
            if copy.url is not None or copy.document.id == doc_id:
                raise AssertionError(f"a second name of pending content got {copy.document}")
            counters.inc("shared_waiting")
            extras.append(copy.document.id)
        client.put(ticket, item.body)
        try:
            client.confirm(item, doc_id)
        except InvalidState as exc:
            # Only if the URL expired before the confirm got through (a long outage); what
            # waits on the upload ends with it.
            counters.inc("confirm_too_late")
            result.expected = None
            result.note = f"confirm refused: {exc}"
            return
        if item.variant == 1 and item.index % 2 and _wait_available(client, item.owner, doc_id):
            copy = _race_last_delete(run, item, doc_id, second)
            if copy.url is not None:
                counters.inc("shared_race_delete_first")
                finish(copy, item.owner)
            else:
                counters.inc("shared_race_reference_first")
            extras.append(copy.document.id)
            result.expected = DocumentStatus.DELETED
        elif item.variant == 1:
            copy = second(item.owner)
            if copy.url is not None or copy.document.id == doc_id:
                raise AssertionError(f"a second name of stored content got {copy.document}")
            counters.inc(f"shared_{copy.document.status.value}")
            extras.append(copy.document.id)
            # One of two references, deleted once available. When faults held the verify
            # back longer than that wait, the delete comes first and a second document
            # still waiting on the upload is rejected with it: either end is right then.
            if not _wait_available(client, item.owner, doc_id):
                counters.inc("shared_first_deleted_before_available")
                late = True
            client.delete(item.owner, doc_id)
            result.expected = DocumentStatus.DELETED
        elif item.variant == 2:
            other = f"{item.owner}-other"
            copy = second(other)
            if copy.url is None or copy.deduplicated:
                raise AssertionError("another owner's request revealed stored content")
            finish(copy, other)
            counters.inc("shared_other_owner")
            extras.append(copy.document.id)
            if item.index % 2:
                client.delete(item.owner, doc_id)
                counters.inc("shared_last_delete_racing_dedup")
                result.expected = DocumentStatus.DELETED
        done = True
    finally:
        # After a client error, what the second documents end as is not known (checked by
        # the invariants only, like the item's own document).
        expected = DocumentStatus.AVAILABLE if done and not late else None
        for extra in extras:
            run.record(ItemResult(item, document_id=extra, expected=expected, extra=True))


def _wait_available(client: Client, owner: str, doc_id: uuid.UUID) -> bool:
    """Whether the document became available within 30 s (faults may delay its verify)."""
    give_up = time.monotonic() + 30.0
    while time.monotonic() < give_up:
        if client.status(owner, doc_id) == DocumentStatus.AVAILABLE:
            return True
        time.sleep(0.2)  # polling the document's state, bounded by give_up
    return False


def _race_last_delete(
    run: ChaosRun,
    item: Item,
    doc_id: uuid.UUID,
    second: Callable[[str, Client], UploadTicket],
) -> UploadTicket:
    """Delete the owner's only document of the content in one thread while another asks for
    the same content under a second name; returns what the request got."""
    deleter, asker = run.client(), run.client()
    failed: list[BaseException] = []
    go = threading.Barrier(2)

    def delete() -> None:
        try:
            go.wait()
            deleter.delete(item.owner, doc_id)
        except BaseException as exc:  # reported by the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=delete, name=f"chaos-race-{item.index}")
    thread.start()
    try:
        go.wait()
        return second(item.owner, asker)
    finally:
        thread.join()
        deleter.close()
        asker.close()
        if failed:
            raise RuntimeError(f"racing delete of {doc_id} failed: {failed[0]!r}")
