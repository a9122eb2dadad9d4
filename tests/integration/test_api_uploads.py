"""request_upload / confirm / delete / get through the public API, with real HTTP PUTs to the
presigned URL: what storage refuses, de-duplication, confirm rules and the caller's
transaction."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from outbox import (
    DocumentStatus,
    InvalidState,
    NotFound,
    Outbox,
    QuotaExceeded,
    Settings,
)
from tests.support.api import body_of, counts, quota_row, request, sha, snapshot, sql
from tests.support.core import InlineWorker, put
from tests.support.util import wait_for
from tests.support.worker import drain_past_verify_deadline
from worker.sweeper import Sweeper

# -- helpers -------------------------------------------------------------------------------


def _reject_unuploaded(outbox: Outbox, conn, inline_worker: InlineWorker, owner: str = "alice"):
    """A confirmed document whose object never arrived: verify after the deadline rejects it."""
    ticket = request(outbox, conn, body_of(100), owner=owner)
    outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
    conn.commit()
    later = datetime.now(UTC) + timedelta(hours=1)
    drain_past_verify_deadline(
        inline_worker.settings, inline_worker.relay, inline_worker.processor, later
    )
    doc = outbox.get(conn, owner_id=owner, document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.REJECTED, doc
    return doc


def _expire_abandoned(outbox: Outbox, conn, inline_worker: InlineWorker, settings: Settings):
    """A pending upload whose URL expired long ago, swept and expired by the expire actor."""
    past = datetime.now(UTC) - timedelta(hours=2)
    ticket = request(outbox, conn, body_of(100), now=past)
    conn.commit()
    sweeper = Sweeper(settings)
    try:
        assert sweeper.run_job("expire_abandoned") == 1
    finally:
        sweeper.close()
    inline_worker.drain()
    doc = outbox.get(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.EXPIRED, doc
    return doc


# -- the ticket ----------------------------------------------------------------------------


def test_request_returns_signed_url_headers_and_reserves(outbox, conn, settings):
    body = body_of(1234)
    before = datetime.now(UTC)
    ticket = request(outbox, conn, body, content_type="text/plain", filename="notes.txt")
    conn.commit()
    issued = datetime.now(UTC)
    assert ticket.url is not None and ticket.method == "PUT"
    assert not ticket.deduplicated
    assert ticket.url.startswith(settings.public_endpoint)
    assert ticket.headers == {
        "Content-Type": "text/plain",
        "Content-Length": "1234",
        "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha(body))).decode(),
    }
    doc = ticket.document
    assert doc.status == DocumentStatus.PENDING
    assert (doc.declared_size, doc.sha256, doc.filename) == (1234, sha(body), "notes.txt")
    assert ticket.expires_at == doc.upload_expires_at
    # The configured TTL from the signing instant, which the URL carries to the second
    # (X-Amz-Date), so within the call's whole seconds, however long the call took.
    ttl = timedelta(seconds=settings.upload_url_ttl_seconds)
    assert before.replace(microsecond=0) + ttl <= ticket.expires_at <= issued + ttl
    assert quota_row(settings, "alice") == (settings.default_quota_bytes, 0, 1234)
    # The request itself writes no event: only confirm does.
    assert counts(settings)["s3outbox.events"] == 0
    assert put(ticket, body).status_code == 200


def test_upper_case_sha256_is_accepted_and_stored_lower(outbox, conn, storage):
    body = body_of(64)
    ticket = outbox.request_upload(
        conn,
        owner_id="alice",
        filename="x.bin",
        content_type="application/octet-stream",
        size=64,
        sha256=sha(body).upper(),
    )
    conn.commit()
    assert ticket.document.sha256 == sha(body)
    assert put(ticket, body).status_code == 200
    assert storage.head(ticket.document.object_key).size == 64


# -- storage refuses what was not signed ---------------------------------------------------


@pytest.fixture
def signed(outbox, conn, storage):
    body = body_of(4096)
    ticket = request(outbox, conn, body, content_type="application/pdf", filename="a.pdf")
    conn.commit()
    yield ticket, body
    # Whatever a test sent, nothing but the exact signed body may have landed at the key.
    info = storage.head(ticket.document.object_key)
    assert info is None or (info.size == len(body))


def _refused(resp: requests.Response) -> bool:
    return 400 <= resp.status_code < 500


def test_storage_refuses_a_body_of_another_size(signed, storage):
    ticket, body = signed
    assert _refused(put(ticket, body + b"!"))
    assert _refused(put(ticket, body[:-1]))
    assert storage.head(ticket.document.object_key) is None


def test_storage_refuses_a_body_of_the_same_size_and_another_hash(signed, storage):
    ticket, body = signed
    other = bytes([body[0] ^ 0xFF]) + body[1:]
    resp = put(ticket, other)
    assert _refused(resp), resp.text
    assert storage.head(ticket.document.object_key) is None
    # The honest body still goes through afterwards.
    assert put(ticket, body).status_code == 200


def test_storage_refuses_a_wrong_checksum_header_with_the_matching_body(signed, storage):
    ticket, _ = signed
    other = body_of(len(_), seed=b"z")
    resp = put(
        ticket,
        other,
        **{"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha(other))).decode()},
    )
    assert _refused(resp), resp.text
    assert storage.head(ticket.document.object_key) is None


def test_storage_refuses_another_content_type(signed, storage):
    ticket, body = signed
    resp = put(ticket, body, **{"Content-Type": "text/html"})
    assert _refused(resp), resp.text
    assert storage.head(ticket.document.object_key) is None


def test_storage_refuses_a_missing_checksum_header(signed, storage):
    ticket, body = signed
    headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
    del headers["x-amz-checksum-sha256"]
    resp = requests.put(ticket.url, data=body, headers=headers, timeout=30)
    assert _refused(resp), resp.text
    assert storage.head(ticket.document.object_key) is None


def test_storage_refuses_the_signature_on_another_key(signed, storage, settings):
    ticket, body = signed
    parts = urlsplit(ticket.url)
    other_key = f"{settings.key_prefix}{uuid.uuid4()}"
    assert parts.path.endswith(ticket.document.object_key)
    tampered = urlunsplit(
        parts._replace(path=parts.path.replace(ticket.document.object_key, other_key))
    )
    headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
    resp = requests.put(tampered, data=body, headers=headers, timeout=30)
    assert _refused(resp), resp.text
    assert storage.head(other_key) is None
    assert storage.head(ticket.document.object_key) is None


def test_storage_refuses_an_expired_url(outbox, conn):
    body = body_of(512)
    ticket = request(outbox, conn, body, expires_in=1)
    conn.commit()
    assert ticket.expires_at <= datetime.now(UTC) + timedelta(seconds=2)
    # The refusal is the condition (a PUT inside the first second may still be accepted).

    def refused() -> tuple[requests.Response] | None:
        resp = put(ticket, body)  # (a Response is falsy when refused: wrap it)
        return (resp,) if _refused(resp) else None

    (resp,) = wait_for(
        refused,
        timeout=10,
        interval=0.25,
        message="storage to refuse the expired URL",
    )
    assert resp.status_code == 403, resp.text
    # SigV4 dates have one-second resolution, so the URL may die up to 1 s before expires_at
    # (never after it: the sweeper relies on that).
    assert datetime.now(UTC) >= ticket.expires_at - timedelta(seconds=1)
    # ... and it stays refused.
    assert put(ticket, body).status_code == 403


# -- de-duplication ------------------------------------------------------------------------


def test_same_content_available_is_a_new_document_sharing_the_blob_charged_at_once(
    outbox, conn, inline_worker, settings
):
    """Issue 12: the second request is its own document (its name), on the same blob, with no
    URL, available in the request's transaction and charged; nothing else changes."""
    body = body_of(2000)
    first = request(outbox, conn, body, filename="one.bin")
    conn.commit()
    assert put(first, body).status_code == 200
    outbox.confirm(conn, owner_id="alice", document_id=first.document.id)
    conn.commit()
    inline_worker.drain()
    assert quota_row(settings, "alice")[1:] == (2000, 0)
    events_before = sql(settings, "SELECT count(*) FROM s3outbox.events")

    again = request(outbox, conn, body, filename="two.bin")
    conn.commit()
    assert again.deduplicated is True
    assert again.url is None and again.headers == {} and again.expires_at is None
    assert again.document.id != first.document.id
    assert again.document.status == DocumentStatus.AVAILABLE
    assert again.document.filename == "two.bin"
    assert again.document.object_key == first.document.object_key
    assert quota_row(settings, "alice")[1:] == (4000, 0)  # each document pays its size
    assert sql(settings, "SELECT count(*) FROM s3outbox.events") == events_before
    assert sql(settings, "SELECT count(*), sum(size) FROM s3outbox.blobs") == [(1, 2000)]


def test_the_same_request_after_its_confirm_returns_its_document_without_url(
    outbox, conn, settings
):
    body = body_of(300)
    first = request(outbox, conn, body)
    conn.commit()
    assert put(first, body).status_code == 200
    outbox.confirm(conn, owner_id="alice", document_id=first.document.id)
    conn.commit()
    again = request(outbox, conn, body)
    conn.commit()
    assert again.deduplicated and again.url is None
    assert again.document.id == first.document.id
    assert again.document.status == DocumentStatus.UPLOADED
    assert quota_row(settings, "alice")[1:] == (0, 300)


def test_same_content_pending_gets_same_document_and_a_fresh_url(outbox, conn, settings, storage):
    body = body_of(700)
    first = request(outbox, conn, body, expires_in=60)
    conn.commit()
    again = request(outbox, conn, body, expires_in=600)
    conn.commit()
    assert again.deduplicated is True
    assert again.document.id == first.document.id
    assert again.url is not None and again.url != first.url
    assert again.expires_at > first.expires_at
    assert again.headers == first.headers
    assert quota_row(settings, "alice")[1:] == (0, 700)  # reservation unchanged
    assert sql(settings, "SELECT count(*) FROM s3outbox.documents")[0][0] == 1
    # The fresh URL works.
    assert put(again, body).status_code == 200
    assert storage.head(first.document.object_key).size == 700


def test_same_content_for_another_owner_is_a_separate_document(outbox, conn, settings):
    body = body_of(100)
    a = request(outbox, conn, body, owner="alice")
    b = request(outbox, conn, body, owner="bob")
    conn.commit()
    assert not b.deduplicated and b.url is not None
    assert a.document.id != b.document.id
    assert a.document.object_key != b.document.object_key
    assert quota_row(settings, "bob")[1:] == (0, 100)


def test_same_content_after_delete_is_a_new_document(outbox, conn, settings):
    body = body_of(100)
    first = request(outbox, conn, body)
    outbox.delete(conn, owner_id="alice", document_id=first.document.id)
    conn.commit()
    again = request(outbox, conn, body)
    conn.commit()
    assert not again.deduplicated
    assert again.document.id != first.document.id
    assert quota_row(settings, "alice")[1:] == (0, 100)


# -- confirm -------------------------------------------------------------------------------


def test_confirm_twice_is_harmless(outbox, conn, settings):
    body = body_of(100)
    ticket = request(outbox, conn, body)
    conn.commit()
    assert put(ticket, body).status_code == 200
    first = outbox.confirm(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    second = outbox.confirm(conn, owner_id="alice", document_id=str(ticket.document.id))
    conn.commit()
    assert first.status == second.status == DocumentStatus.UPLOADED
    assert second.confirmed_at == first.confirmed_at
    topics = sql(settings, "SELECT topic FROM s3outbox.events")
    assert topics == [("verify",)]  # one verify event, not two


def test_confirm_of_available_returns_it_unchanged(outbox, conn, inline_worker, settings):
    body = body_of(100)
    ticket = request(outbox, conn, body)
    conn.commit()
    assert put(ticket, body).status_code == 200
    outbox.confirm(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    inline_worker.drain()
    before = snapshot(settings)
    doc = outbox.confirm(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.AVAILABLE
    assert snapshot(settings) == before


def _assert_confirm_refused(outbox, conn, settings, doc, status):
    before = snapshot(settings)
    with pytest.raises(InvalidState) as err:
        outbox.confirm(conn, owner_id=doc.owner_id, document_id=doc.id)
    assert err.value.http_status == 409
    assert err.value.details["status"] == status
    conn.commit()
    assert snapshot(settings) == before


def test_confirm_of_rejected_is_invalid_state(outbox, conn, inline_worker, settings):
    doc = _reject_unuploaded(outbox, conn, inline_worker)
    _assert_confirm_refused(outbox, conn, settings, doc, "rejected")


def test_confirm_of_expired_is_invalid_state(outbox, conn, inline_worker, settings):
    doc = _expire_abandoned(outbox, conn, inline_worker, settings)
    _assert_confirm_refused(outbox, conn, settings, doc, "expired")


def test_confirm_of_deleting_and_deleted_is_invalid_state(outbox, conn, inline_worker, settings):
    body = body_of(100)
    ticket = request(outbox, conn, body)
    outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    _assert_confirm_refused(outbox, conn, settings, ticket.document, "deleting")
    inline_worker.drain()
    _assert_confirm_refused(outbox, conn, settings, ticket.document, "deleted")


def test_delete_of_rejected_or_expired_hides_it_at_once(outbox, conn, inline_worker, settings):
    rejected = _reject_unuploaded(outbox, conn, inline_worker)
    expired = _expire_abandoned(outbox, conn, inline_worker, settings)
    for doc in (rejected, expired):
        gone = outbox.delete(conn, owner_id="alice", document_id=doc.id)
        conn.commit()
        assert gone.status == DocumentStatus.DELETED
        again = outbox.delete(conn, owner_id="alice", document_id=doc.id)  # twice: harmless
        conn.commit()
        assert again.status == DocumentStatus.DELETED
    q = quota_row(settings, "alice")
    assert q[1:] == (0, 0)


def test_delete_of_pending_releases_reservation_and_queues_purge(outbox, conn, settings):
    ticket = request(outbox, conn, body_of(100))
    conn.commit()
    doc = outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.DELETING
    assert quota_row(settings, "alice")[1:] == (0, 0)
    assert sql(settings, "SELECT topic, document_id FROM s3outbox.events") == [
        ("purge", ticket.document.id)
    ]
    again = outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert again.status == DocumentStatus.DELETING
    assert len(sql(settings, "SELECT 1 FROM s3outbox.events")) == 1


# -- unknown ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["confirm", "delete", "get", "download_url"])
def test_unknown_document_is_not_found(outbox, conn, settings, call):
    request(outbox, conn, body_of(10))  # someone else's row exists, so the table is not empty
    conn.commit()
    before = snapshot(settings)
    with pytest.raises(NotFound) as err:
        getattr(outbox, call)(conn, owner_id="alice", document_id=uuid.uuid4())
    assert err.value.http_status == 404
    conn.commit()
    assert snapshot(settings) == before


# -- the caller's transaction --------------------------------------------------------------


def test_caller_rollback_leaves_nothing(outbox, conn, settings):
    before = snapshot(settings)
    ticket = request(outbox, conn, body_of(100))
    outbox.confirm(conn, owner_id="alice", document_id=ticket.document.id)
    # Inside the transaction everything is visible ...
    assert outbox.get(conn, owner_id="alice", document_id=ticket.document.id).status == "uploaded"
    assert outbox.quota(conn, owner_id="alice").reserved_bytes == 100
    # ... and nobody else sees it before commit (the library never committed).
    assert snapshot(settings) == before
    conn.rollback()
    assert snapshot(settings) == before
    assert quota_row(settings, "alice") is None
    with pytest.raises(NotFound):
        outbox.get(conn, owner_id="alice", document_id=ticket.document.id)


def test_caller_rollback_of_delete_keeps_the_document_and_its_blob(
    outbox, conn, settings, inline_worker, storage
):
    body = body_of(100)
    ticket = request(outbox, conn, body)
    conn.commit()
    assert put(ticket, body).status_code == 200
    before = snapshot(settings)
    outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.rollback()
    inline_worker.step()
    assert snapshot(settings) == before
    assert storage.head(ticket.document.object_key) is not None


def test_failing_call_leaves_callers_transaction_usable(outbox, conn, settings):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=1000)
    conn.commit()
    # The caller's own write and a successful upload request, then a call that fails.
    conn.execute("CREATE TEMP TABLE app_rows (v int)")
    conn.execute("INSERT INTO app_rows VALUES (1)")
    ok = request(outbox, conn, body_of(600))
    with pytest.raises(QuotaExceeded):
        request(outbox, conn, body_of(600))
    with pytest.raises(NotFound):
        outbox.confirm(conn, owner_id="alice", document_id=uuid.uuid4())
    # Still usable: queries run, and the earlier writes are intact and commit.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert conn.execute("SELECT v FROM app_rows").fetchall() == [(1,)]
    conn.execute("INSERT INTO app_rows VALUES (2)")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM app_rows").fetchone() == (2,)
    assert quota_row(settings, "alice") == (1000, 0, 600)
    docs = sql(settings, "SELECT id FROM s3outbox.documents")
    assert docs == [(ok.document.id,)]


def test_library_never_commits_for_the_caller(outbox, conn, settings):
    """From an idle connection the first call must open the caller's transaction, not
    run (and commit) its own."""
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    outbox.set_limit(conn, owner_id="alice", limit_bytes=5000)
    assert quota_row(settings, "alice") is None
    request(outbox, conn, body_of(10), owner="bob")
    assert counts(settings)["s3outbox.documents"] == 0
    conn.rollback()
    assert quota_row(settings, "alice") is None and quota_row(settings, "bob") is None


def test_works_with_an_autocommit_connection(outbox, settings):
    with psycopg.connect(settings.database_url, autocommit=True) as ac:
        body = body_of(100)
        ticket = request(outbox, ac, body)
        # Autocommit: each call is its own transaction, visible at once.
        assert quota_row(settings, "alice")[1:] == (0, 100)
        assert put(ticket, body).status_code == 200
        doc = outbox.confirm(ac, owner_id="alice", document_id=ticket.document.id)
        assert doc.status == DocumentStatus.UPLOADED
        assert sql(settings, "SELECT topic FROM s3outbox.events") == [("verify",)]
        outbox.set_limit(ac, owner_id="tiny", limit_bytes=1)
        with pytest.raises(QuotaExceeded):
            request(outbox, ac, body_of(2), owner="tiny")
        assert quota_row(settings, "tiny") == (1, 0, 0)
        assert ac.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert outbox.get(ac, owner_id="alice", document_id=ticket.document.id).id == doc.id
        assert outbox.list(ac, owner_id="alice").items[0].id == doc.id


# -- listing -------------------------------------------------------------------------------


def _listing(outbox: Outbox, conn, **kwargs) -> list[uuid.UUID]:
    """Alice's whole listing, two documents a page, following ``next_cursor``."""
    ids: list[uuid.UUID] = []
    cursor = None
    while True:
        page = outbox.list(conn, owner_id="alice", limit=2, cursor=cursor, **kwargs)
        assert len(page.items) <= 2
        ids += [doc.id for doc in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def test_list_hides_deleted_documents_unless_asked_and_pages_across_them(
    outbox, conn, inline_worker, settings
):
    """Seven uploads made two at a time at the same instant (so the keyset's tie-break on the
    id matters), three of them deleted and purged by a worker: the default listing leaves the
    deleted ones out, ``include_deleted=True`` and ``status="deleted"`` show them, and pages of
    two give each listing whole, newest first, no document missing or repeated."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    docs = [
        request(outbox, conn, body_of(100 + i), now=start + timedelta(seconds=i // 2)).document
        for i in range(7)
    ]
    conn.commit()
    newest_first = [d.id for d in sorted(docs, key=lambda d: (d.created_at, d.id), reverse=True)]
    gone = [newest_first[1], newest_first[3], newest_first[4]]
    for doc_id in gone:
        outbox.delete(conn, owner_id="alice", document_id=doc_id)
    conn.commit()
    inline_worker.drain()
    assert {outbox.get(conn, owner_id="alice", document_id=d).status for d in gone} == {
        DocumentStatus.DELETED
    }
    live = [d for d in newest_first if d not in gone]

    assert _listing(outbox, conn) == live
    assert [d.id for d in outbox.list(conn, owner_id="alice").items] == live
    assert _listing(outbox, conn, include_deleted=True) == newest_first
    assert _listing(outbox, conn, status="deleted") == gone
    assert _listing(outbox, conn, status=DocumentStatus.DELETED, include_deleted=True) == gone
    assert _listing(outbox, conn, status="pending") == live
    conn.commit()


def test_a_page_cursor_survives_the_deletion_of_its_row(outbox, conn, inline_worker, settings):
    """The cursor names a position (created_at, id), not a row: the next page goes on after
    it even when that document was deleted and purged in between."""
    for i in range(5):
        request(outbox, conn, body_of(200 + i))
    conn.commit()
    everything = _listing(outbox, conn)
    first = outbox.list(conn, owner_id="alice", limit=2)
    assert [d.id for d in first.items] == everything[:2]
    outbox.delete(conn, owner_id="alice", document_id=everything[1])
    conn.commit()
    inline_worker.drain()
    assert outbox.get(conn, owner_id="alice", document_id=everything[1]).status == (
        DocumentStatus.DELETED
    )
    rest = outbox.list(conn, owner_id="alice", limit=10, cursor=first.next_cursor)
    assert [d.id for d in rest.items] == everything[2:]
    assert _listing(outbox, conn) == [everything[0], *everything[2:]]
    conn.commit()
