"""Headers an uploader adds to a presigned PUT, and what downloads serve (invariants 1, 2).

The presigned PUT signs Content-Type, Content-Length and the SHA-256, but storage accepts
and keeps some *unsigned* headers: a hostile uploader adds them, as a browser script or curl
would, over real HTTP. For each one these tests first look at what storage kept
(HeadObject), then check the outcome: kept -> the document ends ``rejected`` with a reason
naming the header, its reservation released and its object purged; refused by storage ->
nothing stored. What SeaweedFS 4.48 does with each header is in ``SEAWEEDFS``.

Download URLs override type, disposition, encoding and caching (``response-*``), so a GET
serves exactly the verified bytes with the service's headers, also when the object was
changed behind the system's back after it became available; reconcile then reports it.
"""

from __future__ import annotations

import gzip
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from outbox import DocumentStatus, Outbox, Settings
from outbox.models import Document
from outbox.presign import DOWNLOAD_CACHE_CONTROL, DOWNLOAD_CONTENT_ENCODING, content_disposition
from outbox.presign import sha256_b64 as b64
from tests.support.core import InlineWorker, put
from tests.support.worker import (
    after,
    blob_exists,
    confirm,
    db_now,
    doc_row,
    drain_at,
    drain_past_verify_deadline,
    events_of,
    quota_row,
    request,
    s3_client,
)
from worker.events import EventProcessor
from worker.ops.reconcile import reconcile
from worker.relay import Relay
from worker.storage import Storage, foreign_metadata
from worker.sweeper import Sweeper

#: An unsigned header a hostile uploader adds -> (its value, the HeadObject field it shows in).
HOSTILE: dict[str, tuple[str, str]] = {
    "Content-Encoding": ("gzip", "ContentEncoding"),
    "Cache-Control": ("public, max-age=31536000", "CacheControl"),
    "Content-Disposition": ('inline; filename="page.html"', "ContentDisposition"),
    "Content-Language": ("fr", "ContentLanguage"),
    "Expires": ("Wed, 21 Oct 2099 07:28:00 GMT", "ExpiresString"),
    "x-amz-website-redirect-location": ("https://attacker.example/", "WebsiteRedirectLocation"),
    "x-amz-meta-origin": ("uploader", "Metadata"),
}
#: What SeaweedFS 4.48 does with each, seen with HeadObject: it keeps the standard headers
#: and refuses the PUT (403 SignatureDoesNotMatch) when an x-amz-* header was not signed.
SEAWEEDFS = {
    "Content-Encoding": "stored",
    "Cache-Control": "stored",
    "Content-Disposition": "stored",
    "Content-Language": "stored",
    "Expires": "stored",
    "x-amz-website-redirect-location": "refused",
    "x-amz-meta-origin": "refused",
}
#: The response headers every download carries, whatever the object says.
OVERRIDDEN = ("Content-Type", "Content-Disposition", "Content-Encoding", "Cache-Control")
#: Headers an object's stored metadata would add to a GET (none may reach a clean download).
METADATA_HEADERS = ("content-language", "expires", "x-amz-website-redirect-location")


def gzip_body(tag: str) -> bytes:
    """gzip bytes: what a client would silently decode if a download said Content-Encoding:
    gzip (declared size and SHA-256 are of these bytes, as an uploader would declare)."""
    return gzip.compress(f"{tag}\n".encode() * 400)


def is_seaweedfs(settings: Settings) -> bool:
    resp = requests.get(settings.s3_endpoint_url, timeout=10)
    return "seaweedfs" in resp.headers.get("Server", "").lower()


def head(settings: Settings, key: str) -> dict[str, Any] | None:
    """The raw HeadObject response (None: no object)."""
    try:
        resp: dict[str, Any] = s3_client(settings).head_object(
            Bucket=settings.s3_bucket, Key=key, ChecksumMode="ENABLED"
        )
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    return resp


def shows(resp: dict[str, Any], header: str) -> str | None:
    """The value HeadObject shows for an uploader's ``header``, if storage kept it."""
    field = HOSTILE[header][1]
    if field == "Metadata":
        value = (resp.get("Metadata") or {}).get(header.removeprefix("x-amz-meta-"))
    else:
        value = resp.get(field)
    return None if value is None else str(value)


def raw_get(url: str) -> tuple[bytes, requests.structures.CaseInsensitiveDict[str]]:
    """GET ``url``: the body exactly as sent (no content decoding) and the headers."""
    resp = requests.get(url, timeout=30, stream=True)
    assert resp.status_code == 200, resp.text[:500]
    return resp.raw.read(decode_content=False), resp.headers


def assert_purged_and_released(settings: Settings, doc_id: object, key: str) -> None:
    q = quota_row(settings, "alice")
    assert (q["used_bytes"], q["reserved_bytes"]) == (0, 0), q
    assert not blob_exists(settings, key)
    assert doc_row(settings, doc_id)["purged_at"] is not None
    # Every due event is done; only a purge re-check after the URL's expiry may wait.
    now = db_now(settings)
    waiting = [e for e in events_of(settings, doc_id) if e["status"] != "done"]
    assert all(
        (e["topic"], e["status"]) == ("purge", "pending") and e["available_at"] > now
        for e in waiting
    ), waiting


def available_doc(
    outbox: Outbox, conn: Any, inline_worker: InlineWorker, body: bytes, **kwargs: Any
) -> Document:
    kwargs.setdefault("content_type", "application/octet-stream")
    ticket = request(outbox, conn, "alice", body, **kwargs)
    assert put(ticket, body).status_code == 200
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    doc = outbox.get(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.AVAILABLE, doc_row(inline_worker.settings, doc.id)
    return doc


# -- uploads with an extra unsigned header ---------------------------------------------------


@pytest.mark.parametrize("header", list(HOSTILE))
def test_an_extra_unsigned_header_on_the_put_never_reaches_a_download(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker, header: str
) -> None:
    value = HOSTILE[header][0]
    body = gzip_body(header)
    ticket = request(outbox, conn, "alice", body, content_type="application/octet-stream")
    key = ticket.document.object_key
    resp = put(ticket, body, **{header: value})

    # What storage did with it.
    stored = head(settings, key)
    if resp.status_code == 200:
        assert stored is not None
        kept = shows(stored, header)
        behaviour = "dropped" if kept is None else "stored"
        if kept is not None:
            assert kept == value, (kept, value)
    else:
        assert resp.status_code == 403, (resp.status_code, resp.text[:300])
        assert stored is None
        behaviour = "refused"
    if is_seaweedfs(settings):
        assert behaviour == SEAWEEDFS[header], (behaviour, resp.text[:300])

    confirm(outbox, conn, "alice", ticket.document.id)
    if behaviour == "refused":
        # Nothing was stored: after the verify deadline the upload is rejected as missing.
        later = after(doc_row(settings, ticket.document.id)["confirmed_at"], 3600)
        drain_past_verify_deadline(settings, inline_worker.relay, inline_worker.processor, later)
        doc = doc_row(settings, ticket.document.id)
        assert doc["status"] == DocumentStatus.REJECTED
        assert doc["reason"].startswith("object not found"), doc["reason"]
        assert_purged_and_released(settings, doc["id"], key)
        return
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    if behaviour == "dropped":  # storage kept nothing of it: the upload is just the bytes
        assert doc["status"] == DocumentStatus.AVAILABLE
        return
    assert doc["status"] == DocumentStatus.REJECTED, doc
    assert "stored metadata the service did not set" in doc["reason"], doc["reason"]
    assert header in doc["reason"], doc["reason"]
    assert doc["charged_bytes"] == 0 and doc["reserved_bytes"] == 0
    assert_purged_and_released(settings, doc["id"], key)


def test_a_plain_upload_carries_no_metadata_and_ends_available(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker
) -> None:
    """Storage adds no default metadata of its own that the check would wrongly refuse."""
    body = gzip_body("plain")
    ticket = request(outbox, conn, "alice", body, content_type="application/octet-stream")
    assert put(ticket, body).status_code == 200
    stored = head(settings, ticket.document.object_key)
    assert stored is not None
    assert foreign_metadata(stored) == ()
    for header in HOSTILE:
        assert shows(stored, header) is None, header
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def test_content_encoding_identity_means_none_and_is_accepted(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = gzip_body("identity")
    ticket = request(outbox, conn, "alice", body, content_type="application/octet-stream")
    assert put(ticket, body, **{"Content-Encoding": "identity"}).status_code == 200
    stored = head(settings, ticket.document.object_key)
    assert stored is not None and foreign_metadata(stored) == ()
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def test_metadata_set_with_storage_credentials_before_the_confirm_is_rejected(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker
) -> None:
    """Whoever holds storage credentials can set what a presigned PUT cannot: x-amz-meta-*
    and a website redirect. Verification refuses the user metadata; SeaweedFS does not keep
    a redirect at all (HeadObject shows none)."""
    body = gzip_body("planted")
    ticket = request(outbox, conn, "alice", body, content_type="application/octet-stream")
    key = ticket.document.object_key
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket,
        Key=key,
        Body=body,
        ContentType="application/octet-stream",
        ChecksumSHA256=b64(ticket.document.sha256),
        Metadata={"origin": "uploader"},
        WebsiteRedirectLocation="/elsewhere",
    )
    stored = head(settings, key)
    assert stored is not None and stored["Metadata"] == {"origin": "uploader"}
    if is_seaweedfs(settings):
        assert "WebsiteRedirectLocation" not in stored
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert "x-amz-meta-origin: uploader" in doc["reason"], doc["reason"]
    assert_purged_and_released(settings, doc["id"], key)


def test_a_lost_confirm_with_foreign_metadata_ends_expired(
    outbox: Outbox,
    conn: Any,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
) -> None:
    """The expire path uses the same check: the bytes match, the confirm never came, but the
    object carries a Cache-Control of the uploader's -> expired, not available."""
    body = gzip_body("lost-confirm")
    ticket = request(outbox, conn, "alice", body, content_type="application/octet-stream")
    key = ticket.document.object_key
    assert put(ticket, body, **{"Cache-Control": "public, max-age=31536000"}).status_code == 200
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    now = after(expires, settings.purge_grace_seconds + 1)
    sweeper = Sweeper(settings)
    try:
        assert sweeper.run_job("expire_abandoned", now=now) == 1
    finally:
        sweeper.close()
    drain_at(settings, relay, processor, now)
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.EXPIRED
    assert "Cache-Control: public, max-age=31536000" in doc["reason"], doc["reason"]
    assert [e["topic"] for e in events_of(settings, doc["id"])][:2] == ["expire", "purge"]
    assert_purged_and_released(settings, doc["id"], key)


# -- downloads ---------------------------------------------------------------------------


def expected_headers(doc: Document) -> dict[str, str]:
    return {
        "Content-Type": doc.content_type,
        "Content-Disposition": content_disposition(doc.filename),
        "Content-Encoding": DOWNLOAD_CONTENT_ENCODING,
        "Cache-Control": DOWNLOAD_CACHE_CONTROL,
    }


def test_a_download_serves_the_verified_bytes_with_the_services_headers(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = gzip_body("download")
    doc = available_doc(outbox, conn, inline_worker, body, filename="report 1.gz")
    url = outbox.download_url(conn, owner_id="alice", document_id=doc.id).url
    got, headers = raw_get(url)
    assert got == body
    assert {h: headers.get(h) for h in OVERRIDDEN} == expected_headers(doc)
    assert headers["Content-Length"] == str(len(body))
    assert not [
        h for h in headers if h.lower() in METADATA_HEADERS or h.lower().startswith("x-amz-meta-")
    ], dict(headers)


def test_overrides_win_over_headers_planted_after_the_document_became_available(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker
) -> None:
    """Someone with storage credentials rewrites an available object with its own type,
    encoding, caching and disposition (same bytes): the download URL's overrides win."""
    body = gzip_body("tampered-later")
    doc = available_doc(outbox, conn, inline_worker, body)
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket,
        Key=doc.object_key,
        Body=body,
        ContentType="text/html",
        ContentEncoding="gzip",
        CacheControl="public, max-age=31536000",
        ContentDisposition="inline",
    )
    stored = head(settings, doc.object_key)
    assert stored is not None
    assert (stored["ContentEncoding"], stored["CacheControl"]) == (
        "gzip",
        "public, max-age=31536000",
    )
    url = outbox.download_url(conn, owner_id="alice", document_id=doc.id).url
    got, headers = raw_get(url)
    assert got == body
    assert {h: headers.get(h) for h in OVERRIDDEN} == expected_headers(doc)
    # What the object says without the overrides: a plain presigned GET of the same key.
    plain = s3_client(settings).generate_presigned_url(
        "get_object", Params={"Bucket": settings.s3_bucket, "Key": doc.object_key}
    )
    _, unprotected = raw_get(plain)
    assert unprotected["Content-Encoding"] == "gzip"
    assert unprotected["Cache-Control"] == "public, max-age=31536000"


def test_reconcile_reports_an_available_object_that_gained_foreign_metadata(
    outbox: Outbox, conn: Any, settings: Settings, inline_worker: InlineWorker, storage: Storage
) -> None:
    body = gzip_body("reconcile")
    doc = available_doc(outbox, conn, inline_worker, body)
    clean = available_doc(outbox, conn, inline_worker, gzip_body("clean"))
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket,
        Key=doc.object_key,
        Body=body,
        ContentType=doc.content_type,
        ChecksumSHA256=b64(doc.sha256),
        CacheControl="public, max-age=31536000",
    )
    dry = reconcile(settings, horizon=0, storage=storage)
    assert [b.document_id for b in dry.broken] == [doc.id]
    problem = dry.broken[0].problem
    assert problem.startswith("stored metadata the service did not set"), problem
    assert "Cache-Control: public, max-age=31536000" in problem

    applied = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert applied.documents_rejected == 1
    inline_worker.drain()
    assert doc_row(settings, doc.id)["status"] == DocumentStatus.REJECTED
    assert not blob_exists(settings, doc.object_key)
    assert doc_row(settings, clean.id)["status"] == DocumentStatus.AVAILABLE
    assert quota_row(settings, "alice")["used_bytes"] == clean.declared_size
