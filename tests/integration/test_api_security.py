"""Owner isolation (invariant 2), download URLs only for available documents, a safe
Content-Disposition on download, and server-made object keys (invariant 8)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests

from outbox import (
    DocumentStatus,
    InvalidInput,
    InvalidState,
    NotFound,
    OutboxError,
    ValidationFailed,
)
from tests.support.api import body_of, request, snapshot
from tests.support.core import InlineWorker, put
from tests.support.worker import drain_past_verify_deadline


def _available(outbox, conn, inline_worker: InlineWorker, body: bytes, **kwargs):
    ticket = request(outbox, conn, body, **kwargs)
    conn.commit()
    assert put(ticket, body).status_code == 200
    owner = kwargs.get("owner", "alice")
    outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
    conn.commit()
    inline_worker.drain()
    doc = outbox.get(conn, owner_id=owner, document_id=ticket.document.id)
    conn.commit()
    assert doc.status == DocumentStatus.AVAILABLE
    return doc


def _error_of(call) -> OutboxError:
    with pytest.raises(OutboxError) as err:
        call()
    return err.value


# -- owner isolation -----------------------------------------------------------------------


CALLS = {
    "get": lambda ob, c, owner, ident: ob.get(c, owner_id=owner, document_id=ident),
    "confirm": lambda ob, c, owner, ident: ob.confirm(c, owner_id=owner, document_id=ident),
    "delete": lambda ob, c, owner, ident: ob.delete(c, owner_id=owner, document_id=ident),
    "download_url": lambda ob, c, owner, ident: ob.download_url(
        c, owner_id=owner, document_id=ident
    ),
    "download_url_bad_ttl": lambda ob, c, owner, ident: ob.download_url(
        c, owner_id=owner, document_id=ident, expires_in=10**9
    ),
}


@pytest.fixture
def alices_docs(outbox, conn, inline_worker):
    """Alice's documents in several states: available, pending, uploaded."""
    available = _available(outbox, conn, inline_worker, body_of(100))
    pending = request(outbox, conn, body_of(200)).document
    uploaded_body = body_of(300)
    uploaded_ticket = request(outbox, conn, uploaded_body)
    conn.commit()
    assert put(uploaded_ticket, uploaded_body).status_code == 200
    uploaded = outbox.confirm(conn, owner_id="alice", document_id=uploaded_ticket.document.id)
    conn.commit()
    return {"available": available, "pending": pending, "uploaded": uploaded}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_another_owners_document_looks_exactly_like_an_unknown_one(
    outbox, conn, settings, alices_docs, call
):
    before = snapshot(settings)
    for state, doc in alices_docs.items():
        theirs = _error_of(lambda doc=doc: CALLS[call](outbox, conn, "mallory", doc.id))
        conn.rollback()
        unknown = _error_of(lambda: CALLS[call](outbox, conn, "mallory", uuid.uuid4()))
        conn.rollback()
        assert type(theirs) is type(unknown) is NotFound, state
        assert str(theirs) == str(unknown)
        assert theirs.to_dict() == unknown.to_dict()
        assert theirs.http_status == unknown.http_status == 404
        # Nothing changed for alice (a confirm or delete by mallory would have).
        assert outbox.get(conn, owner_id="alice", document_id=doc.id).status == state
    assert snapshot(settings) == before


def test_owner_ids_are_compared_exactly(outbox, conn, alices_docs):
    doc = alices_docs["available"]
    for near in ("Alice", "alice ", " alice", "alicE", "alice\u200b"):
        with pytest.raises((NotFound, InvalidInput)):
            outbox.get(conn, owner_id=near, document_id=doc.id)
        conn.rollback()


def test_list_shows_only_the_owners_documents(outbox, conn, alices_docs):
    request(outbox, conn, body_of(50), owner="mallory")
    conn.commit()
    for status in (None, *DocumentStatus):
        page = outbox.list(conn, owner_id="mallory", status=status, include_deleted=True)
        assert all(d.owner_id == "mallory" for d in page.items)
    mine = outbox.list(conn, owner_id="mallory")
    assert len(mine.items) == 1
    alices = outbox.list(conn, owner_id="alice")
    assert {d.id for d in alices.items} == {d.id for d in alices_docs.values()}
    # A cursor made from alice's page does not leak her rows into mallory's listing.
    first = outbox.list(conn, owner_id="alice", limit=1)
    assert first.next_cursor is not None
    leaked = outbox.list(conn, owner_id="mallory", cursor=first.next_cursor, limit=500)
    assert all(d.owner_id == "mallory" for d in leaked.items)


# -- download URLs -------------------------------------------------------------------------


def test_download_url_only_for_available(outbox, conn, settings, inline_worker, alices_docs):
    for state in ("pending", "uploaded"):
        with pytest.raises(InvalidState) as err:
            outbox.download_url(conn, owner_id="alice", document_id=alices_docs[state].id)
        assert err.value.http_status == 409
        assert err.value.details == {"status": state}
    # rejected: confirmed without any object, verified after the deadline.
    ghost = request(outbox, conn, body_of(10))
    outbox.confirm(conn, owner_id="alice", document_id=ghost.document.id)
    conn.commit()
    later = datetime.now(UTC) + timedelta(hours=1)
    drain_past_verify_deadline(settings, inline_worker.relay, inline_worker.processor, later)
    # deleting, then deleted
    doc = alices_docs["available"]
    outbox.delete(conn, owner_id="alice", document_id=doc.id)
    conn.commit()
    for ident, state in ((ghost.document.id, "rejected"), (doc.id, "deleting")):
        with pytest.raises(InvalidState) as err:
            outbox.download_url(conn, owner_id="alice", document_id=ident)
        assert err.value.details == {"status": state}
    inline_worker.drain()
    with pytest.raises(InvalidState) as err:
        outbox.download_url(conn, owner_id="alice", document_id=doc.id)
    assert err.value.details == {"status": "deleted"}


def test_download_url_expiry_bounds(outbox, conn, settings, alices_docs):
    doc = alices_docs["available"]
    maximum = settings.download_url_ttl_seconds
    for bad in (maximum + 1, 0, -5, 1.5, "60", True):
        with pytest.raises(InvalidInput) as err:
            outbox.download_url(conn, owner_id="alice", document_id=doc.id, expires_in=bad)
        assert type(err.value) is InvalidInput and err.value.http_status == 400
    ticket = outbox.download_url(conn, owner_id="alice", document_id=doc.id, expires_in=maximum)
    assert ticket.expires_at <= datetime.now(UTC) + timedelta(seconds=maximum)
    query = dict(p.split("=", 1) for p in urlsplit(ticket.url).query.split("&"))
    assert query["X-Amz-Expires"] == str(maximum)


def test_download_carries_the_original_filename_per_rfc_6266(outbox, conn, inline_worker):
    name = 'Résumé "final" 100%;\u00e9t\u00e9 \u6587\u66f8.pdf'
    body = b"%PDF-1.7 " + body_of(1000)
    doc = _available(
        outbox, conn, inline_worker, body, filename=name, content_type="application/pdf"
    )
    assert doc.filename == name
    ticket = outbox.download_url(conn, owner_id="alice", document_id=doc.id)
    resp = requests.get(ticket.url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.content == body
    assert resp.headers["Content-Type"].split(";")[0] == "application/pdf"
    disposition = resp.headers["Content-Disposition"]
    # The header itself must be ASCII (anything else is mangled by HTTP stacks).
    disposition.encode("ascii")
    assert disposition.startswith("attachment;")
    match = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition)
    assert match, disposition
    assert unquote(match.group(1), encoding="utf-8", errors="strict") == name
    assert re.fullmatch(r"[A-Za-z0-9%._~!#$&+^`|-]+", match.group(1))  # RFC 5987 attr-chars
    fallback = re.search(r'filename="([^"]*)"', disposition)
    assert fallback, disposition
    plain = fallback.group(1)
    assert all(0x20 <= ord(ch) < 0x7F for ch in plain)
    assert not set(plain) & set('"\\%/')
    assert plain.endswith(".pdf") and plain.startswith("Resume")


def test_download_of_a_plain_ascii_name(outbox, conn, inline_worker):
    doc = _available(
        outbox,
        conn,
        inline_worker,
        body_of(10),
        filename="report 2024.txt",
        content_type="text/plain",
    )
    url = outbox.download_url(conn, owner_id="alice", document_id=doc.id).url
    disposition = requests.get(url, timeout=30).headers["Content-Disposition"]
    assert 'filename="report 2024.txt"' in disposition
    assert "filename*=UTF-8''report%202024.txt" in disposition


def test_a_download_url_is_for_its_object_only(outbox, conn, inline_worker, settings):
    mine = _available(outbox, conn, inline_worker, body_of(10))
    other = _available(outbox, conn, inline_worker, body_of(20), owner="bob")
    url = outbox.download_url(conn, owner_id="alice", document_id=mine.id).url
    tampered = url.replace(quote(mine.object_key), quote(other.object_key))
    tampered = tampered.replace(mine.object_key, other.object_key)
    assert tampered != url
    assert requests.get(tampered, timeout=30).status_code == 403


# -- object keys (invariant 8) -------------------------------------------------------------


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "..\\..\\boot.ini", "/etc/passwd", "a/../../b", ".."]
)
def test_path_like_filenames_are_refused(outbox, conn, settings, filename):
    before = snapshot(settings)
    with pytest.raises(ValidationFailed) as err:
        request(outbox, conn, body_of(10), filename=filename)
    assert err.value.http_status == 422
    conn.commit()
    assert snapshot(settings) == before


@pytest.mark.parametrize("owner", ["alice", "../../owner", "évil owner/x", "owner%2F.."])
def test_object_keys_are_prefix_plus_uuid(outbox, conn, settings, storage, owner):
    name = "évil name.pdf"
    body = body_of(64)
    ticket = request(outbox, conn, body, owner=owner, filename=name, content_type="application/pdf")
    conn.commit()
    doc = ticket.document
    assert doc.filename == name
    assert doc.object_key == f"{settings.key_prefix}{doc.id}"
    assert re.fullmatch(re.escape(settings.key_prefix) + r"[0-9a-f-]{36}", doc.object_key)
    for leaked in (name, "évil", "evil", "name", owner, quote(owner), quote(name)):
        assert leaked not in doc.object_key
    path = unquote(urlsplit(ticket.url).path)
    assert path.endswith("/" + doc.object_key)
    assert "évil" not in ticket.url and quote("évil") not in ticket.url
    assert owner not in path and quote(owner, safe="") not in ticket.url
    assert put(ticket, body).status_code == 200
    assert storage.head(doc.object_key) is not None
    listed = storage.client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=settings.key_prefix)
    assert [o["Key"] for o in listed.get("Contents", [])] == [doc.object_key]
