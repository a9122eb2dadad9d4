"""Documents and blobs (issue 12) on the real servers: the same content is one stored object,
each upload keeps its own document (name, type, id), and nothing leaks across owners.

- the same owner's content verified: a new document shares the blob, available and charged
  at once; still uploading: a new document waits on it, and ends with it (available, or
  rejected when the upload is rejected, expires or is deleted first);
- a blob's object goes after its last live document, never before (downloads over real HTTP);
- across owners: another owner always uploads (its own URL and blob); once verified, a worker
  moves it to the existing blob and purges the duplicate object (``dedup_across_owners``);
- the race of the last reference's delete against new references: both orders forced with
  held row locks, then many threads at once, checked with the invariant judge.

Time is driven with ``now=`` where it matters, never with sleeps.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import requests

from harness.invariants import CheckName, check_invariants, judge_client
from outbox import DocumentStatus, Outbox, QuotaExceeded, Settings
from outbox.constants import BlobStatus, Topic
from tests.support.core import InlineWorker, dispatched_events, put
from tests.support.worker import (
    Background,
    after,
    blob_exists,
    body_of,
    confirm,
    db_now,
    doc_row,
    drain_at,
    drain_past_verify_deadline,
    query,
    quota_row,
    request,
    s3_client,
    upload,
    wait_blocked,
)
from worker.events import EventProcessor, Outcome
from worker.events.dedup import move_documents
from worker.events.lifecycle import sql as event_sql
from worker.metrics import OutboxCollector
from worker.ops.quota_audit import audit_quotas
from worker.ops.quota_audit import format_report as format_audit
from worker.ops.reconcile import reconcile
from worker.pool import make_pool, transaction
from worker.relay import Relay
from worker.storage import Storage
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]

BLOB_LOCK_SQL = "%FROM s3outbox.blobs b%FOR %"


def blob_row(settings: Settings, key: str) -> dict[str, Any]:
    rows = query(settings, "SELECT * FROM s3outbox.blobs WHERE object_key = %s", (key,))
    assert rows, f"no blob {key}"
    return rows[0]


def blob_status(settings: Settings, key: str) -> str:
    return str(blob_row(settings, key)["status"])


def used_reserved(settings: Settings, owner: str) -> tuple[int, int]:
    row = quota_row(settings, owner)
    return row["used_bytes"], row["reserved_bytes"]


def download(outbox: Outbox, conn: Conn, owner: str, doc_id: Any) -> requests.Response:
    """A real GET of the document's download URL."""
    ticket = outbox.download_url(conn, owner_id=owner, document_id=doc_id)
    conn.rollback()
    return requests.get(ticket.url, timeout=30)


def judge_ok(settings: Settings, *, settled: bool = True) -> None:
    report = check_invariants(settings, judge_client(settings), settled=settled)
    assert report.ok, report.summary()


# -- the same owner, the same content ------------------------------------------------------


def test_two_names_for_one_content_share_one_object_and_each_downloads_as_itself(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(4000)
    first = upload(outbox, conn, "alice", body, filename="first.pdf")
    inline_worker.drain()
    second = request(outbox, conn, "alice", body, filename="second.txt", content_type="text/plain")

    assert second.url is None and second.deduplicated
    doc = second.document
    assert (doc.status, doc.filename, doc.content_type) == (
        DocumentStatus.AVAILABLE,
        "second.txt",
        "text/plain",
    )
    assert doc.id != first.document.id and doc.object_key == first.document.object_key
    assert used_reserved(settings, "alice") == (8000, 0)  # each document pays its size
    assert query(settings, "SELECT count(*) AS n FROM s3outbox.blobs")[0]["n"] == 1

    got_first = download(outbox, conn, "alice", first.document.id)
    got_second = download(outbox, conn, "alice", doc.id)
    assert got_first.content == got_second.content == body
    assert got_first.headers["Content-Type"] == "application/pdf"
    assert got_second.headers["Content-Type"] == "text/plain"
    assert 'filename="first.pdf"' in got_first.headers["Content-Disposition"]
    assert 'filename="second.txt"' in got_second.headers["Content-Disposition"]
    judge_ok(settings)


def test_deleting_one_of_two_keeps_the_object_deleting_both_removes_it(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(3000)
    first = upload(outbox, conn, "alice", body, filename="first.pdf").document
    inline_worker.drain()
    second = request(
        outbox, conn, "alice", body, filename="second.txt", content_type="text/plain"
    ).document
    key = first.object_key

    outbox.delete(conn, owner_id="alice", document_id=first.id)
    conn.commit()
    inline_worker.drain()
    assert doc_row(settings, first.id)["status"] == DocumentStatus.DELETED
    assert blob_status(settings, key) == BlobStatus.VERIFIED
    assert blob_exists(settings, key)
    got = download(outbox, conn, "alice", second.id)
    assert got.content == body and got.headers["Content-Type"] == "text/plain"
    assert used_reserved(settings, "alice") == (3000, 0)  # the deleted one's charge released
    judge_ok(settings)

    outbox.delete(conn, owner_id="alice", document_id=second.id)
    conn.commit()
    assert blob_status(settings, key) == BlobStatus.DELETING  # in the delete's transaction
    inline_worker.drain()
    assert doc_row(settings, second.id)["status"] == DocumentStatus.DELETED
    assert blob_status(settings, key) == BlobStatus.DELETED
    assert not blob_exists(settings, key)
    assert used_reserved(settings, "alice") == (0, 0)
    judge_ok(settings)


def test_a_request_while_the_content_uploads_waits_and_becomes_available_with_it(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(2500)
    first = request(outbox, conn, "alice", body, filename="scan.pdf")
    second = request(outbox, conn, "alice", body, filename="copy.txt", content_type="text/plain")
    assert second.url is None and second.deduplicated
    assert second.document.status == DocumentStatus.WAITING
    assert used_reserved(settings, "alice") == (0, 5000)  # reserved like any request
    # Confirming it is harmless: there is nothing of its own to upload.
    assert (
        outbox.confirm(conn, owner_id="alice", document_id=second.document.id).status
        == DocumentStatus.WAITING
    )
    conn.commit()

    assert put(first, body).status_code == 200
    confirm(outbox, conn, "alice", first.document.id)
    inline_worker.drain()
    for ticket in (first, second):
        row = doc_row(settings, ticket.document.id)
        assert row["status"] == DocumentStatus.AVAILABLE
        assert (row["charged_bytes"], row["reserved_bytes"]) == (2500, 0)
    assert used_reserved(settings, "alice") == (5000, 0)
    assert blob_status(settings, first.document.object_key) == BlobStatus.VERIFIED
    got = download(outbox, conn, "alice", second.document.id)
    assert got.content == body and got.headers["Content-Type"] == "text/plain"
    judge_ok(settings)


def test_the_same_request_again_returns_its_own_document(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    """A retry (same filename, type and size) is not a new document: a pending one gets a
    fresh URL, a waiting one comes back as it is; no second reservation."""
    body = body_of(1200)
    first = request(outbox, conn, "alice", body, filename="a.pdf")
    waiting = request(outbox, conn, "alice", body, filename="b.pdf")
    assert waiting.document.status == DocumentStatus.WAITING
    again_first = request(outbox, conn, "alice", body, filename="a.pdf")
    again_waiting = request(outbox, conn, "alice", body, filename="b.pdf")
    assert again_first.document.id == first.document.id and again_first.url is not None
    assert again_waiting.document.id == waiting.document.id and again_waiting.url is None
    assert used_reserved(settings, "alice") == (0, 2400)
    assert query(settings, "SELECT count(*) AS n FROM s3outbox.documents")[0]["n"] == 2


@pytest.mark.parametrize("how", ["rejected", "expired", "deleted"])
def test_waiting_documents_end_with_an_upload_that_does_not_finish(
    how: str,
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
) -> None:
    """The upload a document waits on is rejected (confirmed, object never PUT, past the
    verify deadline), expires (never confirmed) or is deleted: the waiting document is
    rejected in the same transaction, its reservation released, and the blob goes."""
    body = body_of(900)
    t0 = db_now(settings)
    first = request(outbox, conn, "alice", body, filename="a.pdf", expires_in=60, now=t0)
    waiting = request(outbox, conn, "alice", body, filename="b.pdf", now=t0).document
    later = after(t0, 3600)
    if how == "rejected":
        confirm(outbox, conn, "alice", first.document.id)
        drain_past_verify_deadline(settings, relay, processor, later)
    elif how == "expired":
        sweeper = Sweeper(settings)
        try:
            assert sweeper.run_job("expire_abandoned", now=later) == 1
        finally:
            sweeper.close()
        drain_at(settings, relay, processor, later)
    else:
        outbox.delete(conn, owner_id="alice", document_id=first.document.id)
        conn.commit()
        drain_at(settings, relay, processor, later)
    uploader = doc_row(settings, first.document.id)
    assert (
        uploader["status"]
        == {
            "rejected": DocumentStatus.REJECTED,
            "expired": DocumentStatus.EXPIRED,
            "deleted": DocumentStatus.DELETED,
        }[how]
    )
    row = doc_row(settings, waiting.id)
    assert row["status"] == DocumentStatus.REJECTED and row["reserved_bytes"] == 0
    assert "the upload it waited on was" in row["reason"]
    assert used_reserved(settings, "alice") == (0, 0)
    assert blob_status(settings, first.document.object_key) == BlobStatus.DELETED
    # A rejected waiting document is deleted at once, as any rejected one.
    gone = outbox.delete(conn, owner_id="alice", document_id=waiting.id)
    conn.commit()
    assert gone.status == DocumentStatus.DELETED


def test_deleting_a_waiting_document_leaves_the_upload_it_waited_on(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(800)
    first = request(outbox, conn, "alice", body, filename="a.pdf")
    waiting = request(outbox, conn, "alice", body, filename="b.pdf").document
    outbox.delete(conn, owner_id="alice", document_id=waiting.id)
    conn.commit()
    assert blob_status(settings, first.document.object_key) == BlobStatus.UPLOADING
    assert put(first, body).status_code == 200
    confirm(outbox, conn, "alice", first.document.id)
    inline_worker.drain()
    assert doc_row(settings, waiting.id)["status"] == DocumentStatus.DELETED
    assert doc_row(settings, first.document.id)["status"] == DocumentStatus.AVAILABLE
    assert used_reserved(settings, "alice") == (800, 0)
    judge_ok(settings)


def test_sharing_is_charged_and_refused_over_quota(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(1000)
    outbox.set_limit(conn, owner_id="alice", limit_bytes=1500)
    conn.commit()
    upload(outbox, conn, "alice", body, filename="a.pdf")
    inline_worker.drain()
    before = query(settings, "SELECT id, status FROM s3outbox.documents ORDER BY id")
    with pytest.raises(QuotaExceeded) as refused:
        request(outbox, conn, "alice", body, filename="b.pdf")
    conn.rollback()
    assert (refused.value.used, refused.value.limit, refused.value.requested) == (1000, 1500, 1000)
    assert query(settings, "SELECT id, status FROM s3outbox.documents ORDER BY id") == before
    assert used_reserved(settings, "alice") == (1000, 0)


def test_a_request_after_the_last_document_went_uploads_anew(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    """The blob is `deleting` once its last document is deleted: the same content is a new
    upload (a new blob and key), never a reference to an object being purged."""
    body = body_of(700)
    first = upload(outbox, conn, "alice", body).document
    inline_worker.drain()
    outbox.delete(conn, owner_id="alice", document_id=first.id)
    again = request(outbox, conn, "alice", body)  # same transaction as the delete, even
    assert again.url is not None and not again.deduplicated
    assert again.document.object_key != first.object_key
    assert blob_status(settings, first.object_key) == BlobStatus.DELETING


# -- across owners ----------------------------------------------------------------------


def test_another_owner_uploads_its_own_copy_then_shares_the_blob(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(5000)
    alice = upload(outbox, conn, "alice", body, filename="report.pdf").document
    inline_worker.drain()
    ticket = request(outbox, conn, "bob", body, filename="mine.txt", content_type="text/plain")
    # No existence leak: bob gets a URL and a blob of his own, like for any new content.
    assert ticket.url is not None and not ticket.deduplicated
    assert ticket.document.object_key != alice.object_key
    bobs_key = ticket.document.object_key
    assert put(ticket, body).status_code == 200
    confirm(outbox, conn, "bob", ticket.document.id)
    inline_worker.drain()

    bob = doc_row(settings, ticket.document.id)
    assert bob["status"] == DocumentStatus.AVAILABLE
    assert bob["object_key"] == alice.object_key  # moved to the existing blob
    assert blob_status(settings, bobs_key) == BlobStatus.DELETED
    assert not blob_exists(settings, bobs_key)  # the duplicate object purged
    assert used_reserved(settings, "bob") == (5000, 0)
    got = download(outbox, conn, "bob", bob["id"])
    assert got.content == body and got.headers["Content-Type"] == "text/plain"
    assert 'filename="mine.txt"' in got.headers["Content-Disposition"]
    judge_ok(settings)

    # Alice deletes hers: bob's document keeps the object.
    outbox.delete(conn, owner_id="alice", document_id=alice.id)
    conn.commit()
    inline_worker.drain()
    assert blob_exists(settings, alice.object_key)
    assert download(outbox, conn, "bob", bob["id"]).content == body
    judge_ok(settings)


def test_dedup_across_owners_can_be_turned_off(
    make_settings: Callable[..., Settings], clean_db: None
) -> None:
    settings = make_settings(dedup_across_owners=False)
    outbox = Outbox(settings)
    pool = make_pool(settings, max_size=2)
    relay = Relay(settings)
    try:
        worker = InlineWorker(settings, relay, EventProcessor(settings, pool, Storage(settings)))
        with psycopg.connect(settings.database_url) as conn:
            body = body_of(600)
            a = upload(outbox, conn, "alice", body).document
            b = upload(outbox, conn, "bob", body).document
            worker.drain()
        assert doc_row(settings, b.id)["object_key"] == b.object_key != a.object_key
        assert blob_exists(settings, a.object_key) and blob_exists(settings, b.object_key)
        topics = {r["topic"] for r in query(settings, "SELECT topic FROM s3outbox.events")}
        assert Topic.DEDUP.value not in topics
        judge_ok(settings)
    finally:
        relay.close()
        pool.close()


def test_copies_verified_at_one_instant_move_to_the_blob_created_first(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
) -> None:
    """The kept blob of a content is the earliest by verification time, then creation, then
    key: two owners' copies verified at one instant (one clock for both verifies) end on the
    blob created first, whichever key sorts first. (Keys are random UUIDs: when the key broke
    the tie, about half the runs kept both objects.)"""
    body = body_of(900)
    alice = upload(outbox, conn, "alice", body).document
    bob = upload(outbox, conn, "bob", body, filename="copy.txt", content_type="text/plain").document
    instant = after(db_now(settings), 1)
    drain_at(settings, relay, processor, instant)

    first, second = blob_row(settings, alice.object_key), blob_row(settings, bob.object_key)
    assert first["verified_at"] == second["verified_at"] == instant
    assert first["created_at"] < second["created_at"]
    assert doc_row(settings, bob.id)["object_key"] == alice.object_key
    assert second["status"] == BlobStatus.DELETED
    assert not blob_exists(settings, bob.object_key)
    assert doc_row(settings, bob.id)["status"] == DocumentStatus.AVAILABLE
    judge_ok(settings)


# -- the last reference's delete against new references ----------------------------------


def _shared_across_owners(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
) -> tuple[Any, Any, tuple[int, int], bytes]:
    """alice's document available on blob A; bob's copy verified on blob B, its dedup event
    dispatched and not handled yet. Returns (alice's document, bob's, the dedup message, the
    content)."""
    body = body_of(1500)
    alice = upload(outbox, conn, "alice", body).document
    bob = upload(outbox, conn, "bob", body).document
    for _ in range(4):  # verify alice, then bob (which queues the dedup), nothing more
        relay.run_once()
        for event_id, attempt in dispatched_events(settings, Topic.VERIFY.value):
            processor.process(event_id, attempt)
    relay.run_once()
    (dedup,) = dispatched_events(settings, Topic.DEDUP.value)
    return alice, bob, dedup, body


def test_a_delete_holding_the_last_reference_makes_the_dedup_keep_its_own_blob(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
) -> None:
    """The remover locks the blob first: the dedup waits, then finds it `deleting` and moves
    nothing (bob keeps his own object)."""
    alice, bob, (event_id, attempt), _body = _shared_across_owners(
        outbox, conn, settings, relay, processor
    )
    with psycopg.connect(settings.database_url) as other:
        outbox.delete(other, owner_id="alice", document_id=alice.id)  # blob A locked, deleting
        run = Background(lambda: processor.process(event_id, attempt))
        wait_blocked(settings, BLOB_LOCK_SQL)
        other.commit()
        assert run.join() == Outcome.DONE
    inline_worker.drain()
    assert doc_row(settings, bob.id)["object_key"] == bob.object_key
    assert blob_status(settings, alice.object_key) == BlobStatus.DELETED
    assert not blob_exists(settings, alice.object_key)
    assert blob_exists(settings, bob.object_key)
    judge_ok(settings)


def test_a_new_reference_holding_the_blob_keeps_it_alive_against_the_last_delete(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
) -> None:
    """The adder locks the blob first (the dedup's move of bob to alice's blob, the real code
    in a transaction the test holds open): alice's delete waits for it, then counts bob's
    reference, and the blob stays."""
    alice, bob, (event_id, attempt), body = _shared_across_owners(
        outbox, conn, settings, relay, processor
    )
    blob_a = alice.object_key
    event = query(settings, "SELECT * FROM s3outbox.events WHERE id = %s", (event_id,))[0]
    pool = make_pool(settings, max_size=1)
    try:
        with transaction(pool) as cur:
            doc = cur.execute(event_sql()["lock_document"], {"id": bob.id}).fetchone()
            assert doc is not None
            assert move_documents(cur, event, doc, blob_a, None) == 1
            deleting = Background(lambda: _delete_in_own_transaction(outbox, settings, alice.id))
            wait_blocked(settings, BLOB_LOCK_SQL)
        deleting.join()  # the adder committed when the block ended
    finally:
        pool.close()
    assert blob_status(settings, blob_a) == BlobStatus.VERIFIED  # bob references it
    assert blob_status(settings, bob.object_key) == BlobStatus.DELETING
    assert processor.process(event_id, attempt) == Outcome.DONE  # already moved: nothing
    inline_worker.drain()
    assert blob_exists(settings, blob_a) and not blob_exists(settings, bob.object_key)
    assert download(outbox, conn, "bob", bob.id).content == body
    judge_ok(settings)


def _delete_in_own_transaction(outbox: Outbox, settings: Settings, doc_id: Any) -> None:
    with psycopg.connect(settings.database_url) as c:
        outbox.delete(c, owner_id="alice", document_id=doc_id)
        c.commit()


ROUNDS = 16
SHARERS = 3


def test_the_last_delete_racing_new_references_in_many_threads(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
) -> None:
    """Each round: alice's document is the last live reference of blob A and bob's verified
    copy has its dedup ready. At once, in threads: alice deletes it, the dedup tries to move
    bob to A, and (every other round) alice asks for the same content under new names (each
    either shares A, when it is still verified at her lock, or uploads anew; her requests and
    her delete take turns on her quota row, the dedup races them on the blob's). Then
    everything settles, every new upload is PUT and confirmed, and the judge checks every
    invariant: no live document points at a purged object, no object without a live
    reference, quotas exact."""
    outcomes: Counter[str] = Counter()
    for round_ in range(ROUNDS):
        alice, bob, (event_id, attempt), body = _shared_across_owners(
            outbox, conn, settings, relay, processor
        )
        sharers = SHARERS if round_ % 2 else 0
        tickets = _race(
            outbox, settings, processor, alice, (event_id, attempt), f"r{round_}", sharers
        )
        for t in tickets:
            if t.document.status == DocumentStatus.WAITING:  # on another request's new upload
                outcomes["waited on a new upload"] += 1
                assert t.url is None and t.document.object_key != alice.object_key
            elif t.url is None:
                outcomes["shared the blob"] += 1
                assert t.document.object_key == alice.object_key
                assert t.document.status == DocumentStatus.AVAILABLE
            else:
                outcomes["uploaded anew"] += 1
                assert put(t, body).status_code == 200
                confirm(outbox, conn, "alice", t.document.id)
        moved = doc_row(settings, bob.id)["object_key"] == alice.object_key
        outcomes["dedup moved bob" if moved else "dedup kept bob's blob"] += 1
        inline_worker.drain()
        for t in tickets:
            got = download(outbox, conn, "alice", t.document.id)
            assert got.status_code == 200 and got.content == body
        assert download(outbox, conn, "bob", bob.id).content == body
        judge_ok(settings)
    print(f"\noutcomes over {ROUNDS} rounds: {dict(outcomes)}")
    assert sum(outcomes.values()) == ROUNDS + ROUNDS // 2 * SHARERS


def _race(
    outbox: Outbox,
    settings: Settings,
    processor: EventProcessor,
    alice: Any,
    message: tuple[int, int],
    tag: str,
    sharers: int,
) -> list[Any]:
    """One round's race, every thread released at once by a barrier: alice's delete of her
    document, the dedup's message, and ``sharers`` requests of alice for the same content
    under new names. Returns the tickets those requests got."""
    start = threading.Barrier(2 + sharers)
    tickets: list[Any] = []
    errors: list[BaseException] = []

    def delete() -> None:
        start.wait()
        _delete_in_own_transaction(outbox, settings, alice.id)

    def dedup() -> None:
        start.wait()
        processor.process(*message)

    def share(n: int) -> None:
        start.wait()
        with psycopg.connect(settings.database_url) as c:
            ticket = outbox.request_upload(
                c,
                owner_id="alice",
                filename=f"again-{tag}-{n}.bin",
                content_type="application/octet-stream",
                size=alice.declared_size,
                sha256=alice.sha256,
            )
            c.commit()
        tickets.append(ticket)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    calls: list[Callable[[], None]] = [delete, dedup]
    calls += [lambda n=n: share(n) for n in range(sharers)]  # type: ignore[misc]
    threads = [threading.Thread(target=guarded(call)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert not errors, errors
    return tickets


# -- repairs and metrics -------------------------------------------------------------------


def _three_documents_on_one_blob(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, body: bytes
) -> tuple[list[Any], str]:
    """alice's upload, alice's second name for it, and bob's copy moved onto it by the dedup:
    three available documents, two owners, one blob. Returns (their ids, the key)."""
    first = upload(outbox, conn, "alice", body, filename="a.pdf").document
    inline_worker.drain()
    second = request(outbox, conn, "alice", body, filename="b.pdf").document
    bob = upload(outbox, conn, "bob", body, filename="c.pdf").document
    inline_worker.drain()
    return [first.id, second.id, bob.id], first.object_key


def test_reconcile_rejects_every_document_of_a_broken_shared_blob(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    """The one object of three documents (two owners) is overwritten behind our back: all
    three serve it, so all three are broken; --apply rejects each, releases each owner's
    charge, and the blob goes (purged by their purges). A second --apply does nothing."""
    body = body_of(2200)
    ids, key = _three_documents_on_one_blob(outbox, conn, inline_worker, body)
    assert {doc_row(settings, i)["object_key"] for i in ids} == {key}
    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=key, Body=b"not that")

    dry = reconcile(settings, apply=False, horizon=3600)
    assert dry.broken_count == 3 and {b.document_id for b in dry.broken} == set(ids)
    assert {b.action for b in dry.broken} == {"would reject, release 2200 bytes, queue a purge"}
    assert (dry.to_repair, dry.repaired) == (3, 0)

    applied = reconcile(settings, apply=True, horizon=3600)
    assert (applied.documents_rejected, applied.bytes_released) == (3, 3 * 2200)
    assert {doc_row(settings, i)["status"] for i in ids} == {DocumentStatus.REJECTED}
    assert used_reserved(settings, "alice") == (0, 0) and used_reserved(settings, "bob") == (0, 0)
    assert blob_status(settings, key) == BlobStatus.DELETING
    inline_worker.drain()
    assert blob_status(settings, key) == BlobStatus.DELETED and not blob_exists(settings, key)
    assert reconcile(settings, apply=True, horizon=3600).clean
    judge_ok(settings)


def test_an_orphan_purge_retires_a_blob_left_live_without_documents(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    """Drift: a blob still verified although its only document is gone (rows changed by
    hand). Its object is an orphan: reconcile queues a purge of the key, which moves the blob
    to deleting under its lock, then deletes the object."""
    body = body_of(900)
    doc = upload(outbox, conn, "alice", body).document
    inline_worker.drain()
    query(
        settings,
        "UPDATE s3outbox.documents SET status = 'deleted', charged_bytes = 0 WHERE id = %s",
        (doc.id,),
    )
    query(settings, "UPDATE s3outbox.quotas SET used_bytes = 0 WHERE owner_id = 'alice'")
    report = check_invariants(settings, judge_client(settings), settled=False)
    assert report.failed() == {CheckName.BLOBS}
    applied = reconcile(settings, apply=True, horizon=0)
    assert [o.key for o in applied.orphans] == [doc.object_key]
    inline_worker.drain()
    assert blob_status(settings, doc.object_key) == BlobStatus.DELETED
    assert not blob_exists(settings, doc.object_key)
    judge_ok(settings)


def test_quota_audit_and_metrics_show_what_sharing_saves(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = body_of(3000)
    _three_documents_on_one_blob(outbox, conn, inline_worker, body)
    audit = audit_quotas(settings)
    assert audit.clean
    assert (audit.blobs, audit.stored_bytes, audit.charged_bytes) == (1, 3000, 9000)
    assert "shared blobs save 6000" in format_audit(audit)

    families = {f.name: f for f in OutboxCollector(settings).collect()}
    blobs = {s.labels["status"]: s.value for s in families["s3outbox_blobs"].samples}
    assert blobs == {"uploading": 0, "verified": 1, "deleting": 0, "deleted": 1}  # bob's copy
    stored = {s.labels["kind"]: s.value for s in families["s3outbox_storage_bytes"].samples}
    assert stored == {"stored": 3000, "charged": 9000}
