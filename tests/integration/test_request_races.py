"""A request for content that is already pending, racing the confirm (or delete) of that
upload, and duplicates that declare something else (issue 10, item 6)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, InvalidInput, Outbox, Settings
from tests.support.api import body_of, quota_row, request, sha, snapshot
from tests.support.worker import Background, wait_blocked

Conn = psycopg.Connection[Any]
LOCKED_DUPLICATE_SQL = "%FROM s3outbox.documents d%sha256%FOR UPDATE%"
CONFIRM_SQL = "%SET status = 'uploaded'%"


def test_a_request_waits_for_a_confirm_in_flight_and_gets_the_uploaded_document(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    """The confirm of the pending upload is not committed yet when the same content is
    requested again: the request waits for it, then answers with the uploaded document and
    no URL (before: a 500 from an assert, when the confirm committed in between)."""
    body = body_of(3000)
    first = request(outbox, conn, body)
    conn.commit()
    with psycopg.connect(settings.database_url) as other:
        outbox.confirm(other, owner_id="alice", document_id=first.document.id)  # uncommitted
        run = Background(lambda: _request_in_own_transaction(outbox, settings, body))
        wait_blocked(settings, LOCKED_DUPLICATE_SQL)
        other.commit()
        ticket = run.join()
    assert ticket.document.id == first.document.id
    assert ticket.url is None and ticket.deduplicated
    assert ticket.document.status == DocumentStatus.UPLOADED
    # One reservation, for the one document (the second request added none).
    _limit, used, reserved = quota_row(settings, "alice") or (0, 0, 0)
    assert (used, reserved) == (0, len(body))


def test_a_confirm_waits_for_a_request_that_refreshes_the_pending_upload(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    """The other order: the refreshing request holds the pending document until its caller
    commits; the confirm then moves it to uploaded, once."""
    body = body_of(3100)
    first = request(outbox, conn, body)
    conn.commit()
    with psycopg.connect(settings.database_url) as other:
        again = request(outbox, other, body)  # refreshes, uncommitted
        assert again.url is not None and again.document.id == first.document.id
        run = Background(lambda: _confirm_in_own_transaction(outbox, settings, first.document.id))
        wait_blocked(settings, CONFIRM_SQL)
        other.commit()
        doc = run.join()
    assert doc.status == DocumentStatus.UPLOADED


def _request_in_own_transaction(outbox: Outbox, settings: Settings, body: bytes) -> Any:
    with psycopg.connect(settings.database_url) as c:
        ticket = request(outbox, c, body)
        c.commit()
        return ticket


def _confirm_in_own_transaction(outbox: Outbox, settings: Settings, doc_id: Any) -> Any:
    with psycopg.connect(settings.database_url) as c:
        doc = outbox.confirm(c, owner_id="alice", document_id=doc_id)
        c.commit()
        return doc


@pytest.mark.parametrize("status", ["pending", "uploaded"])
def test_the_same_sha256_with_another_size_is_refused_and_changes_nothing(
    outbox: Outbox, conn: Conn, settings: Settings, status: str
) -> None:
    body = body_of(2500)
    first = request(outbox, conn, body)
    if status == "uploaded":
        outbox.confirm(conn, owner_id="alice", document_id=first.document.id)
    conn.commit()
    before = snapshot(settings)
    with pytest.raises(InvalidInput) as caught:
        outbox.request_upload(
            conn,
            owner_id="alice",
            filename="other.bin",
            content_type="application/octet-stream",
            size=len(body) + 1,
            sha256=sha(body),
        )
    conn.rollback()
    assert caught.value.http_status == 400
    assert caught.value.details["document_id"] == str(first.document.id)
    assert snapshot(settings) == before


def test_the_same_content_pending_with_another_type_waits_on_that_upload(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    """One pending upload has one URL signed for one content type; a second request of the
    same bytes with another type is its own document (issue 12): it waits on that upload,
    reserved, with no URL of its own."""
    body = body_of(2600)
    first = request(outbox, conn, body, content_type="application/pdf")
    conn.commit()
    second = request(outbox, conn, body, content_type="text/plain")
    conn.commit()
    assert second.document.id != first.document.id
    assert second.url is None and second.deduplicated
    assert second.document.status == DocumentStatus.WAITING
    assert second.document.content_type == "text/plain"
    assert second.document.object_key == first.document.object_key
    assert quota_row(settings, "alice") == (settings.default_quota_bytes, 0, 2 * len(body))
