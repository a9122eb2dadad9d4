"""Multipart uploads through the library and the workers, with real HTTP PUTs of each part to
its presigned URL: the plan and the reservation, part URLs that storage enforces, reports and
resume, confirm, the worker's checks (ListParts, Complete, composite SHA-256), rejection,
abort on delete, expiry and the sweeper, and a crash between Complete and the commit."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
import requests

from outbox import (
    DocumentStatus,
    InvalidInput,
    InvalidState,
    NotFound,
    Outbox,
    PartsMissing,
    QuotaExceeded,
    Settings,
    UploadNotReady,
    UploadWindowClosed,
)
from outbox.constants import Topic
from tests.support.core import InlineWorker, dispatched_events
from tests.support.multipart import (
    MULTIPART_SETTINGS,
    PART,
    THREE_PARTS,
    Upload,
    keys_listed,
    part_url,
    put_part,
    request,
    send_parts,
    sha,
    uploads_of,
)
from tests.support.worker import db_now, doc_row, drain_at, events_of, quota_row, s3_client
from worker.events import EventProcessor, Outcome, lifecycle, multipart_create, verify_multipart
from worker.events.context import Context
from worker.maintenance import rescue_stale
from worker.relay import Relay
from worker.storage import Storage
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings(**MULTIPART_SETTINGS)


def created(inline_worker: InlineWorker, up: Upload) -> str:
    """Run the multipart_create event; the upload id the worker recorded."""
    inline_worker.drain()
    upload_id = doc_row(inline_worker.settings, up.id)["upload_id"]
    assert upload_id is not None
    return str(upload_id)


def status_of(outbox: Outbox, conn: Conn, up: Upload) -> DocumentStatus:
    doc = outbox.get(conn, owner_id=up.owner, document_id=up.id)
    conn.commit()
    return doc.status


def confirm(outbox: Outbox, conn: Conn, up: Upload) -> None:
    outbox.confirm(conn, owner_id=up.owner, document_id=up.id)
    conn.commit()


def reject_after_deadline(inline_worker: InlineWorker, settings: Settings) -> list[Outcome]:
    """Handle the verify once now (it snoozes), then past the deadline (it decides), then
    the purge it queued."""
    outcomes = []
    inline_worker.relay.run_once()
    for event_id, attempt in dispatched_events(settings, Topic.VERIFY):
        outcomes.append(inline_worker.processor.process(event_id, attempt))
    later = datetime.now(UTC) + timedelta(hours=1)
    outcomes += drain_at(settings, inline_worker.relay, inline_worker.processor, later)
    return outcomes


# -- the whole flow ------------------------------------------------------------------------


def test_three_parts_end_to_end(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    up = request(outbox, conn, THREE_PARTS)
    assert (up.plan.part_size, up.plan.part_count, up.plan.last_part_size) == (PART, 3, 1234)
    doc = up.ticket.document
    assert doc.status == DocumentStatus.PENDING and doc.sha256 is None
    assert (doc.part_size, doc.part_count) == (PART, 3)
    # The whole size is reserved at once; the create event was inserted with the document.
    assert quota_row(settings, "alice")["reserved_bytes"] == THREE_PARTS
    assert [e["topic"] for e in events_of(settings, up.id)] == [Topic.MULTIPART_CREATE]

    upload_id = created(inline_worker, up)
    assert uploads_of(settings, up.key) == [upload_id]
    status = outbox.upload_status(conn, owner_id="alice", document_id=up.id)
    assert status.ready and status.parts == [] and status.missing == [1, 2, 3]

    etags = send_parts(outbox, conn, up)
    status = outbox.upload_status(conn, owner_id="alice", document_id=up.id)
    assert [(p.part_number, p.size, p.sha256, p.etag) for p in status.parts] == [
        (n, len(up.part(n)), sha(up.part(n)), etags[n]) for n in (1, 2, 3)
    ]
    assert status.missing == []

    confirm(outbox, conn, up)
    assert status_of(outbox, conn, up) == DocumentStatus.UPLOADED
    inline_worker.drain()
    doc = outbox.get(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    assert doc.status == DocumentStatus.AVAILABLE, doc.reason
    assert doc.verified_size == THREE_PARTS
    # Charged once, for the whole size; nothing reserved any more.
    q = quota_row(settings, "alice")
    assert (q["used_bytes"], q["reserved_bytes"]) == (THREE_PARTS, 0)
    assert doc_row(settings, up.id)["charged_bytes"] == THREE_PARTS
    # Storage holds exactly the bytes, with the composite of the signed part digests.
    client = s3_client(settings)
    head = client.head_object(Bucket=settings.s3_bucket, Key=up.key, ChecksumMode="ENABLED")
    digests = b"".join(hashlib.sha256(up.part(n)).digest() for n in (1, 2, 3))
    composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
    assert head["ChecksumSHA256"] == f"{composite}-3"
    assert client.get_object(Bucket=settings.s3_bucket, Key=up.key)["Body"].read() == up.body
    assert uploads_of(settings, up.key) == []
    # The download serves it.
    url = outbox.download_url(conn, owner_id="alice", document_id=up.id).url
    assert requests.get(url, timeout=30).content == up.body
    verify = [e for e in events_of(settings, up.id) if e["topic"] == Topic.VERIFY]
    assert [e["status"] for e in verify] == ["done"]


def test_the_relay_sends_no_hint_for_a_multipart_verify(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, relay: Relay, settings: Settings
) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    send_parts(outbox, conn, up)
    confirm(outbox, conn, up)
    sent: list[Any] = []
    original = relay._send
    relay._send = lambda messages: (sent.extend(messages), original(messages))  # type: ignore[method-assign]
    assert relay.run_once() == 1
    [(_message_id, body)] = sent
    message = dramatiq.Message.decode(body)
    assert message.actor_name == "s3outbox_verify" and message.kwargs == {}


# -- what the library refuses --------------------------------------------------------------


def test_a_whole_file_sha256_for_a_multipart_upload_is_refused(outbox: Outbox, conn: Conn):
    with pytest.raises(InvalidInput, match="each part's SHA-256"):
        outbox.request_upload(
            conn,
            owner_id="alice",
            filename="big.bin",
            content_type="application/octet-stream",
            size=THREE_PARTS,
            sha256="ab" * 32,
        )


def test_no_deduplication_at_request_time(outbox: Outbox, conn: Conn, settings: Settings):
    a = request(outbox, conn, THREE_PARTS)
    b = request(outbox, conn, THREE_PARTS)
    assert a.id != b.id and not b.ticket.deduplicated
    assert quota_row(settings, "alice")["reserved_bytes"] == 2 * THREE_PARTS


def test_a_multipart_request_over_quota_is_refused_and_changes_nothing(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    outbox.set_limit(conn, owner_id="alice", limit_bytes=THREE_PARTS - 1)
    conn.commit()
    with pytest.raises(QuotaExceeded) as err:
        request(outbox, conn, THREE_PARTS)
    conn.rollback()
    assert err.value.requested == THREE_PARTS
    assert events_of(settings, uuid.uuid4()) == []
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM s3outbox.documents").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM s3outbox.events").fetchone() == (0,)


def test_a_part_url_before_the_upload_exists_says_retry(outbox: Outbox, conn: Conn):
    up = request(outbox, conn)
    with pytest.raises(UploadNotReady) as err:
        part_url(outbox, conn, up, 1)
    conn.rollback()
    assert err.value.http_status == 409
    assert err.value.to_dict()["retry_after"] >= 1


def test_a_part_number_beyond_the_plan_is_invalid(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker
) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    with pytest.raises(InvalidInput, match=r"parts 1\.\.3") as err:
        outbox.part_url(conn, owner_id="alice", document_id=up.id, part_number=4, sha256="a" * 64)
    conn.rollback()
    assert err.value.details == {"part_count": 3}


def test_part_calls_on_a_single_put_document_or_another_owners_are_refused(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker
) -> None:
    small = outbox.request_upload(
        conn,
        owner_id="alice",
        filename="small.txt",
        content_type="text/plain",
        size=10,
        sha256=sha(b"0123456789"),
    )
    conn.commit()
    with pytest.raises(InvalidState, match="one PUT"):
        outbox.part_url(
            conn, owner_id="alice", document_id=small.document.id, part_number=1, sha256="a" * 64
        )
    conn.rollback()
    up = request(outbox, conn)
    created(inline_worker, up)
    with pytest.raises(NotFound):
        outbox.part_url(conn, owner_id="bob", document_id=up.id, part_number=1, sha256="a" * 64)
    conn.rollback()
    with pytest.raises(NotFound):
        outbox.upload_status(conn, owner_id="bob", document_id=up.id)
    conn.rollback()
    status = outbox.upload_status(conn, owner_id="alice", document_id=small.document.id)
    assert (status.multipart, status.ready, status.parts, status.missing) == (None, False, [], [])


def test_confirm_with_parts_missing_names_them(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    up = request(outbox, conn)
    with pytest.raises(PartsMissing) as err:
        confirm(outbox, conn, up)
    conn.rollback()
    assert err.value.to_dict()["missing"] == [1, 2, 3]
    created(inline_worker, up)
    send_parts(outbox, conn, up, [1, 3])
    # Part 2 has a URL (and was even PUT) but is not reported: still missing.
    assert put_part(part_url(outbox, conn, up, 2), up.part(2)).status_code == 200
    with pytest.raises(PartsMissing) as err:
        confirm(outbox, conn, up)
    conn.rollback()
    assert (err.value.details["missing"], err.value.details["missing_count"]) == ([2], 1)
    assert doc_row(settings, up.id)["status"] == DocumentStatus.PENDING
    assert [e["topic"] for e in events_of(settings, up.id)] == [Topic.MULTIPART_CREATE]
    send_parts(outbox, conn, up, [2])
    confirm(outbox, conn, up)
    confirm(outbox, conn, up)  # twice is harmless
    assert [e["topic"] for e in events_of(settings, up.id)] == [
        Topic.MULTIPART_CREATE,
        Topic.VERIFY,
    ]


def test_reports_and_resume(outbox: Outbox, conn: Conn, inline_worker: InlineWorker) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    with pytest.raises(InvalidState, match="no upload URL was issued for part 2"):
        outbox.report_part(conn, owner_id="alice", document_id=up.id, part_number=2, etag='"x"')
    conn.rollback()
    etags = send_parts(outbox, conn, up, [1, 2])
    status = outbox.upload_status(conn, owner_id="alice", document_id=up.id)
    assert [p.part_number for p in status.parts] == [1, 2] and status.missing == [3]
    # The same digest again keeps the report (a resumed client may re-ask a URL); another
    # digest replaces the recorded one and forgets the ETag: that part must be sent again.
    part_url(outbox, conn, up, 1)
    other = b"x" * len(up.part(2))
    part_url(outbox, conn, up, 2, body=other)
    status = outbox.upload_status(conn, owner_id="alice", document_id=up.id)
    assert [(p.part_number, p.etag) for p in status.parts] == [(1, etags[1])]
    assert status.missing == [2, 3]


# -- storage enforces the part URL ---------------------------------------------------------


def test_a_part_with_another_body_is_refused_by_storage(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker
) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    ticket = part_url(outbox, conn, up, 1)
    assert ticket.size == PART and ticket.headers["Content-Length"] == str(PART)
    assert "content-length" in ticket.url.lower() and "x-amz-checksum-sha256" in ticket.url.lower()
    tampered = bytearray(up.part(1))
    tampered[100] ^= 0xFF
    assert put_part(ticket, bytes(tampered)).status_code == 400  # BadDigest
    assert put_part(ticket, up.part(1)[:-1]).status_code == 403  # another length: not signed
    assert put_part(ticket, up.part(1)).status_code == 200


# -- the worker's checks -------------------------------------------------------------------


def test_a_part_reported_but_never_sent_ends_rejected_and_aborted(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    send_parts(outbox, conn, up, [1, 2])
    part_url(outbox, conn, up, 3)
    outbox.report_part(conn, owner_id="alice", document_id=up.id, part_number=3, etag='"lie"')
    conn.commit()
    confirm(outbox, conn, up)
    outcomes = reject_after_deadline(inline_worker, settings)
    assert Outcome.SNOOZED in outcomes
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.REJECTED
    assert row["reason"] == "parts missing in storage: 3"
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    q = quota_row(settings, "alice")
    assert (q["used_bytes"], q["reserved_bytes"]) == (0, 0)


def test_a_part_of_the_wrong_size_ends_rejected_and_aborted(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    """Only storage credentials can upload a part that no URL signed: behind our back (and
    its ETag reported by a lying client, so SeaweedFS, which keeps every upload of a part
    number, completes with that one too)."""
    up = request(outbox, conn)
    upload_id = created(inline_worker, up)
    send_parts(outbox, conn, up)
    bigger = up.part(2) + b"!"
    behind_our_back(outbox, conn, settings, up, upload_id, 2, bigger)
    confirm(outbox, conn, up)
    reject_after_deadline(inline_worker, settings)
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.REJECTED
    assert row["reason"].startswith("parts of the wrong size in storage: 2")
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    assert quota_row(settings, "alice")["reserved_bytes"] == 0


def test_a_part_replaced_with_other_bytes_of_its_size_ends_rejected(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    """Storage checks the digests sent with Complete against the parts' own (SeaweedFS lists
    no part checksum): a part replaced behind our back cannot complete."""
    up = request(outbox, conn)
    upload_id = created(inline_worker, up)
    send_parts(outbox, conn, up)
    behind_our_back(outbox, conn, settings, up, upload_id, 1, bytes(len(up.part(1))))
    confirm(outbox, conn, up)
    reject_after_deadline(inline_worker, settings)
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.REJECTED
    assert row["reason"].startswith("storage refused to complete the upload (BadDigest")
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []


def behind_our_back(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    up: Upload,
    upload_id: str,
    number: int,
    body: bytes,
) -> None:
    """UploadPart with storage credentials (no URL signed it), then report its ETag."""
    etag = s3_client(settings).upload_part(
        Bucket=settings.s3_bucket,
        Key=up.key,
        UploadId=upload_id,
        PartNumber=number,
        Body=body,
        ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
    )["ETag"]
    outbox.report_part(conn, owner_id=up.owner, document_id=up.id, part_number=number, etag=etag)
    conn.commit()


def test_a_part_sent_twice_with_another_digest_completes_with_the_latest(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    """A client that changed its mind about a part (a new URL with another SHA-256): storage
    keeps both uploads of that number (SeaweedFS lists both); the one signed last and
    reported is the one completed, and the composite follows it."""
    up = request(outbox, conn)
    created(inline_worker, up)
    first = put_part(part_url(outbox, conn, up, 1), up.part(1))
    assert first.status_code == 200
    changed = bytes(reversed(up.part(1)))
    up.body = changed + up.body[len(changed) :]
    send_parts(outbox, conn, up)
    confirm(outbox, conn, up)
    inline_worker.drain()
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.AVAILABLE, row["reason"]
    body = s3_client(settings).get_object(Bucket=settings.s3_bucket, Key=up.key)["Body"].read()
    assert body == up.body


def test_a_crash_between_complete_and_the_commit_ends_available_once(
    outbox: Outbox,
    conn: Conn,
    inline_worker: InlineWorker,
    processor: EventProcessor,
    relay: Relay,
    settings: Settings,
    storage: Storage,
) -> None:
    """The first attempt starts, completes the upload in storage, and dies before its
    transaction (as a SIGKILLed worker would). The rescue sends it again; the next attempt
    finds the upload gone (ListParts: NoSuchUpload), and the HEAD decides."""
    up = request(outbox, conn)
    created(inline_worker, up)
    send_parts(outbox, conn, up)
    confirm(outbox, conn, up)
    relay.run_once()
    [(event_id, attempt)] = dispatched_events(settings, Topic.VERIFY)
    started = lifecycle.start(processor.pool, settings, [(event_id, attempt)], None)
    assert event_id in started
    doc = doc_row(settings, up.id)
    recorded = [dict(r) for r in _recorded(settings, up.id)]
    first = verify_multipart.inspect(storage, doc, recorded)
    assert first.matches  # completed in storage...
    assert storage.list_parts(up.key, doc["upload_id"]) is None
    # ...and the worker died here: nothing committed.
    assert doc_row(settings, up.id)["status"] == DocumentStatus.UPLOADED
    later = db_now(settings) + timedelta(seconds=settings.redispatch_after_seconds + 1)
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        assert rescue_stale(c, settings, relay.broker.client, now=later) == 1
    outcomes = drain_at(settings, relay, processor, later)
    assert outcomes == [Outcome.DONE]
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.AVAILABLE and row["charged_bytes"] == THREE_PARTS
    q = quota_row(settings, "alice")
    assert (q["used_bytes"], q["reserved_bytes"]) == (THREE_PARTS, 0)
    [verify] = events_of(settings, up.id, Topic.VERIFY)
    assert (verify["status"], verify["failures"]) == ("done", 1)  # the dead worker's attempt
    # Handled again (a duplicate): nothing more.
    doc = doc_row(settings, up.id)
    again = verify_multipart.inspect(storage, doc, recorded)
    assert again.matches
    assert quota_row(settings, "alice")["used_bytes"] == THREE_PARTS


def _recorded(settings: Settings, doc_id: object) -> list[dict[str, Any]]:
    with (
        psycopg.connect(settings.database_url, autocommit=True) as c,
        c.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        return cur.execute(lifecycle.sql()["recorded_parts"], {"id": doc_id}).fetchall()


# -- the upload is created once, and only for a pending document -----------------------------


def test_a_document_deleted_before_the_create_gets_no_upload(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    up = request(outbox, conn)
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    inline_worker.drain()
    assert doc_row(settings, up.id)["upload_id"] is None
    assert doc_row(settings, up.id)["status"] == DocumentStatus.DELETED
    assert uploads_of(settings, up.key) == []
    assert quota_row(settings, "alice")["reserved_bytes"] == 0


def test_an_upload_that_loses_the_compare_and_set_is_aborted(
    outbox: Outbox,
    conn: Conn,
    processor: EventProcessor,
    relay: Relay,
    settings: Settings,
) -> None:
    """The worker read the document pending and created the upload; the document was deleted
    before its transaction: the upload it created is aborted, nothing is recorded."""
    up = request(outbox, conn)
    relay.run_once()
    [(event_id, attempt)] = dispatched_events(settings, Topic.MULTIPART_CREATE)
    [event] = lifecycle.start(processor.pool, settings, [(event_id, attempt)], None).values()
    stale = doc_row(settings, up.id)
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    ctx = Context(settings, processor.pool, processor.storage)
    assert multipart_create.handle(ctx, event, stale, attempt, None) == Outcome.DONE
    assert doc_row(settings, up.id)["upload_id"] is None
    assert uploads_of(settings, up.key) == []


# -- nothing left behind -------------------------------------------------------------------


def test_delete_during_upload_aborts_and_leaves_nothing(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    up = request(outbox, conn)
    upload_id = created(inline_worker, up)
    send_parts(outbox, conn, up, [1, 2])
    late = part_url(outbox, conn, up, 3)
    assert uploads_of(settings, up.key) == [upload_id]
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    inline_worker.drain()
    assert doc_row(settings, up.id)["status"] == DocumentStatus.DELETED
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    assert quota_row(settings, "alice")["reserved_bytes"] == 0
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        assert c.execute(
            "SELECT count(*) FROM s3outbox.document_parts WHERE document_id = %s", (up.id,)
        ).fetchone() == (0,)
    # A late PUT with a URL still valid finds no upload: nothing can be recreated.
    assert put_part(late, up.part(3)).status_code == 404
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    # The purge re-checks later (a part still streaming may outlive an abort).
    rechecks = [e for e in events_of(settings, up.id, Topic.PURGE) if e["status"] == "pending"]
    assert len(rechecks) == 1


def lost_create_answer(storage: Storage, up: Upload) -> str:
    """An upload of the document's key that no row names: what a CreateMultipartUpload leaves
    when the connection drops after storage acted and the worker's retry creates another."""
    return storage.create_multipart(up.key, "application/octet-stream")


def test_a_purge_aborts_the_uploads_no_row_names(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings, storage: Storage
) -> None:
    up = request(outbox, conn)
    upload_id = created(inline_worker, up)
    stray = lost_create_answer(storage, up)
    send_parts(outbox, conn, up, [1])
    assert sorted(uploads_of(settings, up.key)) == sorted([upload_id, stray])
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    inline_worker.drain()
    assert doc_row(settings, up.id)["status"] == DocumentStatus.DELETED
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []


def test_a_completed_upload_leaves_no_other_upload_of_its_key(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings, storage: Storage
) -> None:
    up = request(outbox, conn)
    upload_id = created(inline_worker, up)
    stray = lost_create_answer(storage, up)
    send_parts(outbox, conn, up)
    confirm(outbox, conn, up)
    assert sorted(uploads_of(settings, up.key)) == sorted([upload_id, stray])
    inline_worker.drain()
    assert status_of(outbox, conn, up) == DocumentStatus.AVAILABLE
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == [up.key]


def test_delete_of_a_confirmed_document_while_its_verify_completes(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings, storage: Storage
) -> None:
    """A verify that saw the document uploaded completes the upload after the purge ran:
    the purge's re-check removes the object it made."""
    up = request(outbox, conn)
    created(inline_worker, up)
    send_parts(outbox, conn, up)
    confirm(outbox, conn, up)
    doc = doc_row(settings, up.id)
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    inline_worker.drain()  # the verify finds it deleting; the purge aborts the upload
    # A verify that read the row before the delete: its Complete comes after the abort and
    # fails, so no object is made (the abort came first).
    late = verify_multipart.inspect(storage, doc, _recorded_before(doc, up))
    assert not late.matches and keys_listed(settings, up.key) == []
    recheck = [e for e in events_of(settings, up.id, Topic.PURGE) if e["status"] == "pending"]
    assert len(recheck) == 1
    floor = doc_row(settings, up.id)["delete_requested_at"] + timedelta(
        seconds=settings.redispatch_after_seconds + settings.purge_grace_seconds
    )
    assert recheck[0]["available_at"] >= floor


def _recorded_before(doc: dict[str, Any], up: Upload) -> list[dict[str, Any]]:
    """The part rows as a verify read them before the delete removed them."""
    return [
        {"part_number": n, "size": len(up.part(n)), "sha256": sha(up.part(n))}
        for n in range(1, up.plan.part_count + 1)
    ]


def test_an_abandoned_upload_is_aborted_by_expiry(
    outbox: Outbox,
    conn: Conn,
    inline_worker: InlineWorker,
    processor: EventProcessor,
    relay: Relay,
    settings: Settings,
) -> None:
    up = request(outbox, conn)
    created(inline_worker, up)
    send_parts(outbox, conn, up, [1])
    row = doc_row(settings, up.id)
    later = row["upload_expires_at"] + timedelta(seconds=settings.purge_grace_seconds + 1)
    sweeper = Sweeper(settings)
    try:
        assert sweeper.run_job("expire_abandoned", now=later) == 1
    finally:
        sweeper.close()
    drain_at(settings, relay, processor, later)
    row = doc_row(settings, up.id)
    assert row["status"] == DocumentStatus.EXPIRED
    assert row["reason"] == "upload window expired before every part was uploaded and confirmed"
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    assert quota_row(settings, "alice")["reserved_bytes"] == 0


def test_a_part_url_extends_the_expiry_but_never_past_the_window(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    t0 = db_now(settings)
    up = request(outbox, conn, expires_in=60, now=t0)
    assert up.ticket.document.upload_expires_at == t0 + timedelta(seconds=60)
    created(inline_worker, up)
    window = up.ticket.document.created_at + timedelta(
        seconds=settings.multipart_upload_window_seconds
    )
    ticket = outbox.part_url(
        conn,
        owner_id="alice",
        document_id=up.id,
        part_number=1,
        sha256=sha(up.part(1)),
        expires_in=900,
        now=window - timedelta(seconds=300),
    )
    conn.commit()
    assert ticket.expires_at == window
    assert doc_row(settings, up.id)["upload_expires_at"] == window
    with pytest.raises(UploadWindowClosed) as err:
        outbox.part_url(
            conn,
            owner_id="alice",
            document_id=up.id,
            part_number=2,
            sha256=sha(up.part(2)),
            now=window - timedelta(seconds=30),
        )
    conn.rollback()
    assert err.value.details["retry_after"] >= 1
    # An earlier URL never shortens the expiry.
    part_url(outbox, conn, up, 2)
    assert doc_row(settings, up.id)["upload_expires_at"] == window


def test_an_orphaned_upload_is_aborted_by_the_sweeper(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings
) -> None:
    """Uploads no document holds (a crash before the create's commit; a document gone) are
    aborted once older than the horizon; a live document's upload never is."""
    client = s3_client(settings)
    live = request(outbox, conn)
    live_upload = created(inline_worker, live)
    gone = request(outbox, conn)
    created(inline_worker, gone)
    with psycopg.connect(settings.database_url, autocommit=True) as c:  # the row is gone
        c.execute("DELETE FROM s3outbox.documents WHERE id = %s", (gone.id,))
    nobody = f"{settings.key_prefix}{uuid.uuid4()}"
    crashed = client.create_multipart_upload(
        Bucket=settings.s3_bucket, Key=nobody, ChecksumAlgorithm="SHA256"
    )["UploadId"]
    second = client.create_multipart_upload(  # a second upload for a live document's key
        Bucket=settings.s3_bucket, Key=live.key, ChecksumAlgorithm="SHA256"
    )["UploadId"]
    sweeper = Sweeper(settings)
    try:
        # Young: left alone (a worker may be about to record it).
        assert sweeper.run_job("multipart_walk") == 0
        assert uploads_of(settings, nobody) == [crashed]
        later = db_now(settings) + timedelta(seconds=settings.orphan_horizon_seconds + 60)
        assert sweeper.run_job("multipart_walk", now=later) == 3
    finally:
        sweeper.close()
    assert uploads_of(settings, nobody) == []
    assert uploads_of(settings, gone.key) == []
    assert uploads_of(settings, live.key) == [live_upload]
    assert second not in uploads_of(settings, live.key)


# -- reconcile and the invariant checker -----------------------------------------------------


def test_reconcile_checks_multipart_documents_and_aborts_orphan_uploads(
    outbox: Outbox, conn: Conn, inline_worker: InlineWorker, settings: Settings, storage: Storage
) -> None:
    from harness.invariants import CheckName, check_invariants
    from worker.ops.reconcile import format_report, reconcile

    good = request(outbox, conn)
    created(inline_worker, good)
    send_parts(outbox, conn, good)
    confirm(outbox, conn, good)
    inline_worker.drain()
    assert doc_row(settings, good.id)["status"] == DocumentStatus.AVAILABLE
    pending = request(outbox, conn)
    pending_upload = created(inline_worker, pending)
    client = s3_client(settings)
    nobody = f"{settings.key_prefix}{uuid.uuid4()}"
    orphan = client.create_multipart_upload(
        Bucket=settings.s3_bucket, Key=nobody, ChecksumAlgorithm="SHA256"
    )["UploadId"]

    # The available multipart document checks out (composite of its recorded digests); the
    # pending one's upload is held; the orphan is reported, and only it.
    assert check_invariants(settings, settled=False).ok
    unsettled = check_invariants(settings, settled=True)
    [failed] = unsettled.failures()
    assert failed.name.startswith("7 no multipart upload") and orphan in failed.problems[0]
    dry = reconcile(settings, horizon=0, storage=storage)
    assert (dry.broken_count, dry.unprovable_count, dry.orphan_upload_count) == (0, 0, 1)
    assert dry.orphan_uploads[0].upload_id == orphan and "would abort" in format_report(dry)
    assert uploads_of(settings, nobody) == [orphan]
    applied = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert (applied.uploads_aborted, applied.repaired) == (1, 1)
    assert uploads_of(settings, nobody) == []
    assert uploads_of(settings, pending.key) == [pending_upload]
    assert reconcile(settings, apply=True, horizon=0, storage=storage).clean
    assert check_invariants(settings, settled=True).ok

    # An available multipart object replaced behind our back (same size, one PUT): broken.
    client.put_object(
        Bucket=settings.s3_bucket,
        Key=good.key,
        Body=bytes(THREE_PARTS),
        ContentType="application/octet-stream",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(bytes(THREE_PARTS)).digest()).decode(),
    )
    report = check_invariants(settings, settled=False)
    assert [c.name for c in report.failures()] == [CheckName.OBJECTS]
    broken = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert broken.documents_rejected == 1
    assert broken.broken[0].problem == (
        "sha256 mismatch: the object was not completed from parts (one PUT made it)"
    )
    row = doc_row(settings, good.id)
    assert row["status"] == DocumentStatus.REJECTED
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        assert c.execute(
            "SELECT count(*) FROM s3outbox.document_parts WHERE document_id = %s", (good.id,)
        ).fetchone() == (0,)
