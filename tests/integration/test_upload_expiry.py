"""Expiry that cannot leave an object behind (issue 10, item 2; invariant 7).

A presigned PUT's expiry is checked when the request starts, so a slow upload can land long
after its URL expired and after its document left a live state. The stored expiry is the
URL's own (the signing instant + TTL), a refreshed URL never reaches past the document's
upload window, and every purge is re-checked after the longest upload.

Real servers, real HTTP; the sweeper and the handlers are driven with ``now=`` wherever the
real clock does not matter to storage."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings, UploadWindowClosed
from outbox.presign import signed_at
from tests.support.core import InlineWorker, put, sha256_hex
from tests.support.slow_put import SlowPut
from tests.support.util import wait_for
from tests.support.worker import (
    Background,
    after,
    blob_exists,
    db_now,
    doc_row,
    drain_at,
    events_of,
    quota_row,
    request,
    wait_blocked,
)
from worker.events import EventProcessor
from worker.relay import Relay
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]


@pytest.fixture
def sweeper(settings: Settings):
    s = Sweeper(settings)
    yield s
    s.close()


def url_ttl(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


# -- the reproduction ----------------------------------------------------------------------


def test_a_put_started_before_expiry_that_lands_after_the_document_expired_is_purged(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
):
    """Issue 10's reproduction: a 1 MB PUT starts while its URL (expires_in=4) is valid and
    sends its body slowly; meanwhile the URL expires and the sweeper expires the document
    (HeadObject 404), whose purge finds nothing. Storage still takes the PUT. The purge's
    re-check, after the URL's expiry + the longest upload + grace, removes the object."""
    body = b"%PDF-1.7\n" + bytes(range(256)) * 4096  # just over 1 MB
    ticket = request(outbox, conn, "alice", body, expires_in=4)
    key = ticket.document.object_key
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    assert ticket.expires_at == expires == signed_at(str(ticket.url)) + timedelta(seconds=4)

    slow = SlowPut(ticket, body)
    slow.start(first=64 * 1024)  # request line, signed headers and the first 64 KiB: in time

    # The URL is dead for any request that starts now (storage's clock, within grace)...
    grace = settings.purge_grace_seconds
    wait_for(
        lambda: datetime.now(UTC) > expires + timedelta(seconds=grace),
        timeout=30,
        message="the upload URL to expire",
    )
    assert put(ticket, body).status_code == 403
    # ...and the sweeper expires the abandoned upload: no object yet, so `expired`, and its
    # purge deletes nothing.
    assert sweeper.run_job("expire_abandoned") == 1
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.EXPIRED
    assert "no object" in doc["reason"]
    assert quota_row(settings, "alice")["reserved_bytes"] == 0

    # The slow PUT, started in time, finishes now: storage takes it.
    status, text = slow.finish()
    assert status == 200, text
    assert blob_exists(settings, key)

    # One re-check is waiting for when no PUT can land any more.
    landing = expires + timedelta(seconds=settings.max_upload_seconds + grace)
    purges = events_of(settings, doc["id"], "purge")
    assert [(p["status"], p["available_at"]) for p in purges] == [
        ("done", purges[0]["available_at"]),
        ("pending", landing),
    ]
    # Nothing touches the object before it is due (a PUT could still be landing)...
    drain_at(settings, relay, processor, landing - timedelta(seconds=1))
    assert blob_exists(settings, key)
    # ...and after it, the re-check purges it, and queues no further one.
    drain_at(settings, relay, processor, landing + timedelta(seconds=1))
    assert not blob_exists(settings, key)
    assert [p["status"] for p in events_of(settings, doc["id"], "purge")] == ["done", "done"]
    assert doc_row(settings, doc["id"])["status"] == DocumentStatus.EXPIRED


# -- the stored expiry is the URL's --------------------------------------------------------


def test_the_stored_expiry_is_the_signing_instant_plus_ttl(
    outbox: Outbox, conn: Conn, settings: Settings
):
    body = b"signed " * 100
    ticket = request(outbox, conn, "alice", body, expires_in=120)
    assert ticket.url is not None and url_ttl(ticket.url) == 120
    doc = doc_row(settings, ticket.document.id)
    assert doc["upload_expires_at"] == ticket.expires_at
    assert ticket.expires_at == signed_at(ticket.url) + timedelta(seconds=120)


def test_a_request_that_waited_for_the_quota_lock_stores_its_urls_real_expiry(
    outbox: Outbox, settings: Settings
):
    """The URL is signed before the one statement, and signed again when that statement
    waited for the owner's quota lock: the URL handed out lives its whole TTL, and the
    stored expiry is its real one, never earlier (the sweeper would expire, and purge, an
    upload whose URL still works)."""
    body = b"waited " * 100
    holder = psycopg.connect(settings.database_url)
    try:
        holder.execute(
            "INSERT INTO s3outbox.quotas (owner_id, limit_bytes) VALUES ('alice', %s)"
            " ON CONFLICT (owner_id) DO UPDATE SET limit_bytes = EXCLUDED.limit_bytes",
            (settings.default_quota_bytes,),
        )
        held_since = db_now(settings)

        def ask() -> Any:
            with psycopg.connect(settings.database_url) as c:
                ticket = outbox.request_upload(
                    c,
                    owner_id="alice",
                    filename="w.bin",
                    content_type="application/octet-stream",
                    size=len(body),
                    sha256=sha256_hex(body),
                    expires_in=60,
                )
                c.commit()
                return ticket

        asking = Background(ask)
        wait_blocked(settings, "%FROM s3outbox.request_upload(%")
        # The request waits for the lock across at least two clock seconds.
        wait_for(
            lambda: db_now(settings) >= held_since + timedelta(seconds=2),
            timeout=10,
            message="two seconds under the lock",
        )
        holder.commit()
    finally:
        holder.close()
    ticket = asking.join()
    assert ticket.url is not None
    stored = doc_row(settings, ticket.document.id)["upload_expires_at"]
    assert stored == ticket.expires_at == signed_at(ticket.url) + timedelta(seconds=60)
    assert signed_at(ticket.url) >= held_since + timedelta(seconds=1)  # signed after the wait


# -- refreshed URLs --------------------------------------------------------------------------


def test_a_refreshed_url_is_capped_by_the_upload_window_and_never_shortens_it(
    outbox: Outbox, conn: Conn, settings: Settings
):
    window = settings.upload_url_max_ttl_seconds
    body = b"refreshed " * 100
    t0 = db_now(settings)
    first = request(outbox, conn, "alice", body, expires_in=600, now=t0)
    doc_id = first.document.id
    assert first.expires_at == after(t0, 600)

    # Asked again within the window: a full URL, the document's expiry follows it.
    second = request(outbox, conn, "alice", body, expires_in=900, now=after(t0, 100))
    assert second.document.id == doc_id and second.deduplicated
    assert second.expires_at == after(t0, 1000)
    assert second.url is not None and url_ttl(second.url) == 900
    assert doc_row(settings, doc_id)["upload_expires_at"] == after(t0, 1000)

    # A shorter URL later never shortens the document's expiry.
    short = request(outbox, conn, "alice", body, expires_in=120, now=after(t0, 200))
    assert short.expires_at == after(t0, 320)
    assert doc_row(settings, doc_id)["upload_expires_at"] == after(t0, 1000)

    # Near the window's end: signed for what remains, never past creation + max TTL.
    late = request(outbox, conn, "alice", body, expires_in=900, now=after(t0, window - 300))
    assert late.url is not None and url_ttl(late.url) == 300
    assert late.expires_at == after(t0, window)
    assert doc_row(settings, doc_id)["upload_expires_at"] == after(t0, window)

    # Too little left for a useful URL: refused, and nothing changes.
    before = doc_row(settings, doc_id)
    reserved = quota_row(settings, "alice")["reserved_bytes"]
    with pytest.raises(UploadWindowClosed) as refused:
        request(outbox, conn, "alice", body, expires_in=900, now=after(t0, window - 59))
    conn.rollback()
    assert refused.value.http_status == 409
    details = refused.value.to_dict()
    assert details["error"] == "upload_window_closed"
    assert details["document_id"] == str(doc_id)
    assert datetime.fromisoformat(details["expires_at"]) == after(t0, window)
    assert details["retry_after"] == 59 + settings.purge_grace_seconds
    assert doc_row(settings, doc_id) == before
    assert quota_row(settings, "alice")["reserved_bytes"] == reserved == len(body)


def test_repeated_requests_cannot_extend_an_upload_without_bound(
    outbox: Outbox, conn: Conn, settings: Settings
):
    window = settings.upload_url_max_ttl_seconds
    body = b"again and again " * 50
    t0 = db_now(settings)
    doc_id = request(outbox, conn, "alice", body, expires_in=900, now=t0).document.id
    moment, refused = t0, 0
    while moment < after(t0, window + 900):
        moment = after(moment, 450)
        try:
            ticket = request(outbox, conn, "alice", body, expires_in=900, now=moment)
        except UploadWindowClosed:
            conn.rollback()
            refused += 1
            continue
        assert ticket.document.id == doc_id
        assert ticket.expires_at is not None and ticket.expires_at <= after(t0, window)
        assert doc_row(settings, doc_id)["upload_expires_at"] <= after(t0, window)
    assert refused >= 2
    assert doc_row(settings, doc_id)["upload_expires_at"] == after(t0, window)


def test_a_refresh_on_the_real_clock_is_capped_too(outbox: Outbox, conn: Conn, settings: Settings):
    """Without ``now``, the refreshed URL's real expiry (its X-Amz-Date + X-Amz-Expires) is
    within the window, and a window about to close is refused."""
    window = settings.upload_url_max_ttl_seconds
    body, tight = b"real clock " * 40, b"tight window " * 40
    created = db_now(settings) - timedelta(seconds=window - 1000)
    doc_id = request(outbox, conn, "alice", body, expires_in=600, now=created).document.id
    refreshed = request(outbox, conn, "alice", body, expires_in=3600)
    assert refreshed.document.id == doc_id and refreshed.url is not None
    real_expiry = signed_at(refreshed.url) + timedelta(seconds=url_ttl(refreshed.url))
    assert refreshed.expires_at == real_expiry <= after(created, window)
    assert url_ttl(refreshed.url) >= 1000 - 60  # what remained, give or take the test's time
    assert doc_row(settings, doc_id)["upload_expires_at"] == real_expiry

    closing = db_now(settings) - timedelta(seconds=window - 30)
    request(outbox, conn, "alice", tight, expires_in=600, now=closing)
    with pytest.raises(UploadWindowClosed):
        request(outbox, conn, "alice", tight, expires_in=600)
    conn.rollback()


def test_concurrent_refreshes_keep_the_latest_expiry(
    outbox: Outbox, conn: Conn, settings: Settings
):
    """Requests for the same pending content, at once: each gets a URL within the window,
    and the document's expiry is the latest of them."""
    body = b"at once " * 64
    t0 = db_now(settings)
    doc_id = request(outbox, conn, "alice", body, expires_in=60, now=t0).document.id
    barrier = threading.Barrier(4)

    def ask(ttl: int) -> Any:
        with psycopg.connect(settings.database_url) as c:
            barrier.wait(timeout=10)
            ticket = outbox.request_upload(
                c,
                owner_id="alice",
                # The same request again (name, type, size): a retry, so the same document.
                filename="file.pdf",
                content_type="application/pdf",
                size=len(body),
                sha256=sha256_hex(body),
                expires_in=ttl,
                now=after(t0, 10),
            )
            c.commit()
            return ticket

    tickets = [t.join() for t in [Background(lambda t=ttl: ask(t)) for ttl in (60, 600, 300, 90)]]
    assert {t.document.id for t in tickets} == {doc_id}
    assert doc_row(settings, doc_id)["upload_expires_at"] == after(t0, 610)
