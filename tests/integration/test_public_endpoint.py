"""Storage reached at two addresses: browsers at ``s3_public_endpoint_url``, the workers at
``s3_endpoint_url`` (an internal address). Presigned URLs are signed for the public host and
work over HTTP there; the workers' storage calls go to the internal one only.

Here the internal address is a pass-through proxy (no faults) in front of the storage, so the
test sees which calls reach storage through it; the public address is the storage itself under
another host name (``localhost`` for ``127.0.0.1``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from harness.faultproxy import FaultProxy, FaultRates
from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import InlineWorker, put
from tests.support.worker import blob_exists, body_of, confirm, request
from worker.events import EventProcessor
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import Storage

NO_FAULTS = FaultRates(http_500=0, http_503=0, drop=0, delay=0, stale_share=0)
OTHER_NAME = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}


def renamed(endpoint: str) -> str:
    """The same server under another host name (or itself when it has no other)."""
    parts = urlsplit(endpoint)
    host = OTHER_NAME.get(parts.hostname or "", parts.hostname or "")
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


def moved(url: str, endpoint: str) -> str:
    """``url`` sent to ``endpoint`` instead: same path and query (and so same signature)."""
    target = urlsplit(endpoint)
    return urlunsplit(urlsplit(url)._replace(scheme=target.scheme, netloc=target.netloc))


@pytest.fixture
def internal(settings: Settings) -> Iterator[FaultProxy]:
    with FaultProxy(settings.s3_endpoint_url, NO_FAULTS) as proxy:
        yield proxy


@pytest.fixture
def split(make_settings: Any, settings: Settings, internal: FaultProxy) -> Settings:
    return make_settings(
        s3_endpoint_url=internal.url, s3_public_endpoint_url=renamed(settings.s3_endpoint_url)
    )


@pytest.fixture
def split_worker(split: Settings) -> Iterator[InlineWorker]:
    relay = Relay(split)
    pool = make_pool(split, max_size=2)
    yield InlineWorker(split, relay, EventProcessor(split, pool, Storage(split)))
    pool.close()
    relay.close()


def test_urls_are_signed_for_the_public_host_and_workers_use_the_internal_one(
    split: Settings,
    split_worker: InlineWorker,
    internal: FaultProxy,
    conn: psycopg.Connection[Any],
) -> None:
    public = split.s3_public_endpoint_url
    assert public is not None and urlsplit(public).netloc != urlsplit(split.s3_endpoint_url).netloc
    outbox = Outbox(split)
    body = body_of(2400)

    ticket = request(outbox, conn, "alice", body)
    assert ticket.url is not None
    assert urlsplit(ticket.url).netloc == urlsplit(public).netloc
    # Signed for that host: the same request sent to the internal address is refused.
    headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
    elsewhere = requests.put(
        moved(ticket.url, split.s3_endpoint_url), data=body, headers=headers, timeout=30
    )
    assert elsewhere.status_code == 403, elsewhere.text
    seen = internal.requests
    assert put(ticket, body).status_code == 200  # over HTTP to the public host
    confirm(outbox, conn, "alice", ticket.document.id)
    assert internal.requests == seen  # the library made no storage call at all

    storage = split_worker.processor.storage
    assert storage.client.meta.endpoint_url == split.s3_endpoint_url
    split_worker.drain()
    assert internal.requests > seen  # the verify's HeadObject went the internal way
    doc = outbox.get(conn, owner_id="alice", document_id=ticket.document.id)
    assert doc.status == DocumentStatus.AVAILABLE

    seen = internal.requests
    download = outbox.download_url(conn, owner_id="alice", document_id=doc.id)
    conn.commit()
    assert urlsplit(download.url).netloc == urlsplit(public).netloc
    got = requests.get(download.url, timeout=30)
    assert got.status_code == 200 and got.content == body
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert requests.get(moved(download.url, split.s3_endpoint_url), timeout=30).status_code == 403
    assert internal.requests == seen + 1  # only the refused GET above went that way

    outbox.delete(conn, owner_id="alice", document_id=doc.id)
    conn.commit()
    split_worker.drain()
    assert internal.requests > seen + 1  # the purge's DeleteObject too
    assert not blob_exists(split, doc.object_key)
