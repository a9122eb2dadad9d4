"""The upload helper (``outbox.uploader``) through the reference HTTP API: the app under a
real uvicorn on a free port, part PUTs over real HTTP to storage through a pass-through
fault proxy (which counts them), the worker in a thread beside the helper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest

pytest.importorskip("fastapi", reason="the api extra is not installed")
pytest.importorskip("uvicorn", reason="the api extra is not installed")

from harness.faultproxy import FaultProxy, FaultRates
from outbox import (
    DocumentStatus,
    HttpApiError,
    NotFound,
    Outbox,
    QuotaExceeded,
    Settings,
    UploadInterrupted,
)
from outbox.settings import MIB
from outbox.uploader import Backoff, HttpApi, Uploader
from tests.support.core import InlineWorker, doc_status
from tests.support.multipart import MULTIPART_SETTINGS, PART
from tests.support.uploads import uvicorn_api, worker_running
from tests.support.util import wait_for
from worker.demo import generated_file

NO_FAULTS = FaultRates(http_500=0, http_503=0, drop=0, delay=0, stale_share=0)
FAST = Backoff(attempts=4, base_seconds=0.05, max_seconds=0.2)
OWNER = {"X-Owner-Id": "bob"}
#: Six parts: five of 5 MiB and a short last one.
SIX_PARTS = 5 * PART + 4321


@pytest.fixture
def proxy(base_settings: Settings) -> Iterator[FaultProxy]:
    with FaultProxy(base_settings.s3_endpoint_url, NO_FAULTS) as p:
        yield p


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None, proxy: FaultProxy) -> Settings:
    return make_settings(**MULTIPART_SETTINGS, s3_public_endpoint_url=proxy.url)


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with uvicorn_api(settings) as url:
        yield url


def wait_available(settings: Settings, doc: UUID) -> None:
    wait_for(
        lambda: doc_status(settings, doc) == DocumentStatus.AVAILABLE,
        timeout=60,
        message=f"document {doc} available (now {doc_status(settings, doc)})",
    )


def test_parts_over_http_interrupted_then_resumed(
    settings: Settings,
    api_url: str,
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
) -> None:
    path = generated_file(tmp_path / "video.bin", SIX_PARTS, seed=11)
    # Not told the server's threshold: it guesses the library's default (100 MiB), sends
    # the whole file's SHA-256, and learns from the 400 that the file goes in parts.
    api = HttpApi(api_url, headers=OWNER)
    stop = threading.Event()

    def stop_halfway(done: int, total: int) -> None:
        if done >= total // 2:
            stop.set()

    with worker_running(inline_worker):
        first = Uploader(
            api, threads=2, backoff=FAST, progress=False, on_progress=stop_halfway, stop=stop
        )
        with first, pytest.raises(UploadInterrupted) as interrupted:
            first.upload(path)
        assert api.threshold == PART
        doc = UUID(interrupted.value.details["document_id"])
        status = api.status(doc)
        reported = {p.part_number for p in status.parts if p.etag}
        missing = [n for n in range(1, 7) if n not in reported]
        assert status.status == DocumentStatus.PENDING and status.ready
        assert reported and missing  # stopped halfway: some parts in, some not
        sent_before = proxy.requests

        with Uploader(api, threads=4, backoff=FAST, progress=False) as again:
            result = again.resume(path, doc)
        wait_available(settings, doc)

    assert result.parts_sent == len(missing) and result.parts_skipped == len(reported)
    assert proxy.requests - sent_before == len(missing)  # only the missing parts went
    assert result.status == DocumentStatus.UPLOADED and result.multipart
    api.close()


def test_one_put_over_http_and_typed_errors(
    settings: Settings,
    api_url: str,
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
) -> None:
    small = generated_file(tmp_path / "notes.txt", 2 * MIB + 3, seed=12)
    # A wrong guess the other way (everything in parts): the 400 says a SHA-256 is needed.
    api = HttpApi(api_url, headers=OWNER, multipart_threshold_bytes=1)
    with worker_running(inline_worker), Uploader(api, backoff=FAST, progress=False) as up:
        result = up.upload(small, content_type="text/plain")
        wait_available(settings, result.document_id)
        assert (result.multipart, result.parts_sent, proxy.requests) == (False, 1, 1)
        assert api.threshold >= small.stat().st_size

        # The library's typed errors come back from the JSON bodies.
        with pytest.raises(NotFound):
            up.resume(small, uuid4())
        other = HttpApi(api_url, headers={"X-Owner-Id": "carol"})
        with Uploader(other, progress=False) as as_carol, pytest.raises(NotFound):
            as_carol.resume(small, result.document_id)
        nobody = HttpApi(api_url)
        with Uploader(nobody, progress=False) as anonymous, pytest.raises(HttpApiError) as exc:
            anonymous.upload(small)
        assert exc.value.http_status == 401
        big = generated_file(tmp_path / "huge.bin", 3 * PART, seed=13)
        limit = small.stat().st_size + PART
        with psycopg.connect(settings.database_url) as conn:
            Outbox(settings).set_limit(conn, owner_id="bob", limit_bytes=limit)
        with pytest.raises(QuotaExceeded) as quota:
            up.upload(big)
        assert (quota.value.requested, quota.value.limit) == (3 * PART, limit)
    for a in (api, other, nobody):
        a.close()
