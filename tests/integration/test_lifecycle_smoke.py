"""The whole lifecycle in-process: request, real HTTP PUT, confirm, verify, download, delete."""

from __future__ import annotations

import requests

from harness.invariants import check_invariants
from outbox import DocumentStatus
from tests.support.core import InlineWorker, put, sha256_hex


def test_lifecycle(outbox, conn, inline_worker: InlineWorker, storage, settings):
    body = b"%PDF-1.7\n" + b"x" * 5000
    ticket = outbox.request_upload(
        conn,
        owner_id="alice",
        filename="report.pdf",
        content_type="application/pdf",
        size=len(body),
        sha256=sha256_hex(body),
    )
    conn.commit()
    assert put(ticket, body).status_code == 200
    outbox.confirm(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    inline_worker.drain()
    doc = outbox.get(conn, owner_id="alice", document_id=ticket.document.id)
    assert doc.status == DocumentStatus.AVAILABLE
    assert doc.verified_size == len(body)
    quota = outbox.quota(conn, owner_id="alice")
    assert (quota.used_bytes, quota.reserved_bytes) == (len(body), 0)
    dl = outbox.download_url(conn, owner_id="alice", document_id=doc.id)
    got = requests.get(dl.url, timeout=30)
    assert got.status_code == 200 and got.content == body
    conn.commit()
    outbox.delete(conn, owner_id="alice", document_id=doc.id)
    conn.commit()
    inline_worker.drain()
    doc = outbox.get(conn, owner_id="alice", document_id=doc.id)
    assert doc.status == DocumentStatus.DELETED
    assert storage.head(doc.object_key) is None
    assert outbox.quota(conn, owner_id="alice").used_bytes == 0
    report = check_invariants(settings, settled=True)
    assert report.ok, report.summary()
    assert report.documents == {"deleted": 1}
