"""The upload helper (``outbox.uploader``) through the library, on the real PostgreSQL and
storage, every byte over real HTTP.

The part URLs are signed for a pass-through fault proxy in front of storage (the public
endpoint; the workers use storage directly), so the tests count the PUTs storage was sent
and make one fail: a 503 or a dropped connection. The worker runs in a thread beside the
helper (``worker_running``): it creates the multipart upload while the helper waits on
``UploadNotReady``, and verifies what is confirmed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from psycopg_pool import ConnectionPool

from harness.faultproxy import FaultProxy, FaultRates
from outbox import (
    DocumentStatus,
    FileChanged,
    NotFound,
    Outbox,
    OutboxError,
    Settings,
    UploadInterrupted,
)
from outbox.settings import MIB
from outbox.uploader import Backoff, LibraryApi, Uploader
from outbox.uploader.core import AHEAD
from tests.support.core import ROOT, InlineWorker, child_env, doc_status
from tests.support.multipart import MULTIPART_SETTINGS, PART
from tests.support.uploads import Watched, worker_running
from tests.support.util import wait_for
from worker.demo import generated_file
from worker.storage import Storage

NO_FAULTS = FaultRates(http_500=0, http_503=0, drop=0, delay=0, stale_share=0)
#: Five parts: four of 5 MiB and a short last one.
FIVE_PARTS = 4 * PART + 777
FAST = Backoff(attempts=4, base_seconds=0.05, max_seconds=0.2)


@pytest.fixture
def proxy(base_settings: Settings) -> Iterator[FaultProxy]:
    with FaultProxy(base_settings.s3_endpoint_url, NO_FAULTS) as p:
        yield p


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None, proxy: FaultProxy) -> Settings:
    """Parts of 5 MiB above 5 MiB; URLs signed for the proxy, workers straight to storage."""
    return make_settings(
        **{**MULTIPART_SETTINGS, "max_upload_bytes": 256 * MIB},
        s3_public_endpoint_url=proxy.url,
    )


@pytest.fixture
def pool(settings: Settings) -> Iterator[ConnectionPool[Any]]:
    p: ConnectionPool[Any] = ConnectionPool(
        settings.database_url, min_size=1, max_size=6, open=False
    )
    p.open(wait=True, timeout=30)
    yield p
    p.close()


@pytest.fixture
def api(outbox: Outbox, pool: ConnectionPool[Any]) -> LibraryApi:
    return LibraryApi(outbox, owner_id="alice", connect=pool.connection)


def file_of(tmp_path: Path, size: int, seed: int = 1) -> Path:
    return generated_file(tmp_path / f"file-{size}-{seed}.bin", size, seed=seed)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def stored_sha256(settings: Settings, outbox: Outbox, pool: ConnectionPool[Any], doc: UUID) -> str:
    """The SHA-256 of the object storage holds for ``doc`` (read back in full)."""
    with pool.connection() as conn:
        key = outbox.get(conn, owner_id="alice", document_id=doc).object_key
    body = Storage(settings).client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def wait_available(settings: Settings, doc: UUID) -> None:
    wait_for(
        lambda: doc_status(settings, doc) == DocumentStatus.AVAILABLE,
        timeout=60,
        message=f"document {doc} available (now {doc_status(settings, doc)})",
    )


def test_a_large_file_goes_in_parallel_parts_after_the_upload_exists(
    settings: Settings,
    api: LibraryApi,
    outbox: Outbox,
    pool: ConnectionPool[Any],
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
) -> None:
    path = file_of(tmp_path, FIVE_PARTS)
    # Four threads must each be asking for a part URL at the same moment to pass this
    # barrier (a helper sending one part at a time would break it and fail).
    together = threading.Barrier(4, timeout=30)
    first_asks: set[int] = set()
    lock = threading.Lock()

    def before_part_url(number: int) -> None:
        with lock:
            first = number not in first_asks
            first_asks.add(number)
        if first and number <= 4:
            together.wait()

    # The worker starts only once the helper was told "not ready": it must wait and retry.
    told_not_ready = threading.Event()

    def on_error(exc: OutboxError) -> None:
        if exc.code == "upload_not_ready":
            told_not_ready.set()

    watched = Watched(api, before_part_url=before_part_url, on_error=on_error)
    started: list[UUID] = []
    with (
        worker_running(inline_worker, gate=told_not_ready),
        Uploader(watched, threads=4, backoff=FAST, progress=False) as uploader,
    ):
        result = uploader.upload(path, on_started=started.append)
        wait_available(settings, result.document_id)

    assert started == [result.document_id]
    assert (result.multipart, result.part_count, result.size) == (True, 5, FIVE_PARTS)
    assert (result.parts_sent, result.parts_skipped, result.retries) == (5, 0, 0)
    assert result.bytes_sent == FIVE_PARTS and result.status == DocumentStatus.UPLOADED
    assert "upload_not_ready" in watched.named("part_url_error")
    assert sorted(watched.named("report_part")) == [1, 2, 3, 4, 5]
    assert proxy.requests == 5  # one PUT per part, nothing sent twice
    assert stored_sha256(settings, outbox, pool, result.document_id) == sha256_of(path)
    with pool.connection() as conn:
        assert outbox.quota(conn, owner_id="alice").used_bytes == FIVE_PARTS


@pytest.mark.parametrize("fault", ["http_503", "drop"])
def test_a_part_that_fails_once_is_retried(
    settings: Settings,
    api: LibraryApi,
    outbox: Outbox,
    pool: ConnectionPool[Any],
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
    fault: str,
) -> None:
    """The first part PUT storage is sent fails (a 503, or the connection reset before or
    after storage took the body): that part is sent again and the upload completes."""
    path = file_of(tmp_path, FIVE_PARTS, seed=2)
    proxy.force(fault)
    with (
        worker_running(inline_worker),
        Uploader(api, threads=4, backoff=FAST, progress=False) as uploader,
    ):
        result = uploader.upload(path)
        wait_available(settings, result.document_id)

    assert proxy.faults()[fault] == 1
    assert result.retries == 1 and result.parts_sent == 5
    assert proxy.requests == 6  # five parts, one of them twice
    assert result.bytes_sent == FIVE_PARTS
    assert stored_sha256(settings, outbox, pool, result.document_id) == sha256_of(path)


def test_a_part_storage_keeps_failing_ends_in_upload_failed(
    api: LibraryApi, proxy: FaultProxy, inline_worker: InlineWorker, tmp_path: Path
) -> None:
    path = file_of(tmp_path, FIVE_PARTS, seed=3)
    proxy.force("http_500", times=1000)
    with (
        worker_running(inline_worker),
        Uploader(api, threads=2, backoff=FAST, progress=False) as uploader,
        pytest.raises(OutboxError) as failed,
    ):
        uploader.upload(path)
    assert failed.value.code == "upload_failed"
    details = failed.value.details
    assert details["attempts"] == FAST.attempts and details["storage_status"] == 500
    assert details["part_number"] in range(1, 6) and details["document_id"] is not None
    # The first failure stopped the other parts: no more than each thread's attempts (the
    # two sending and those preparing the next parts, which send once a slot frees).
    assert proxy.requests <= (2 + AHEAD) * FAST.attempts


def test_resume_after_an_interrupted_run_sends_only_the_missing_parts(
    settings: Settings,
    api: LibraryApi,
    outbox: Outbox,
    pool: ConnectionPool[Any],
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
) -> None:
    path = file_of(tmp_path, FIVE_PARTS, seed=4)
    stop = threading.Event()

    def stop_after_two_parts(done: int, _total: int) -> None:
        if done >= 2 * PART:
            stop.set()

    with worker_running(inline_worker):
        first = Uploader(
            api,
            threads=1,
            backoff=FAST,
            progress=False,
            on_progress=stop_after_two_parts,
            stop=stop,
        )
        with first, pytest.raises(UploadInterrupted) as interrupted:
            first.upload(path)
        doc = UUID(interrupted.value.details["document_id"])
        with pool.connection() as conn:
            status = outbox.upload_status(conn, owner_id="alice", document_id=doc)
        # The part being sent when the stop came was finished and reported: two full parts
        # (one sent at a time, the next ones prepared meanwhile, so not always parts 1 and
        # 2), each PUT once; the short last part was not sent.
        assert status.document.status == DocumentStatus.PENDING
        assert len(status.missing) == 3 and 5 in status.missing
        assert proxy.requests == 2

        with Uploader(api, threads=4, backoff=FAST, progress=False) as again:
            result = again.resume(path, doc)
        wait_available(settings, doc)

    assert result.document_id == doc
    assert (result.parts_sent, result.parts_skipped) == (3, 2)
    assert result.bytes_sent == FIVE_PARTS - 2 * PART
    assert proxy.requests == 2 + 3  # only the missing parts went to storage
    assert stored_sha256(settings, outbox, pool, doc) == sha256_of(path)
    # Resuming a finished document sends nothing.
    with Uploader(api, progress=False) as third:
        done = third.resume(path, doc)
    assert done.status == DocumentStatus.AVAILABLE and done.parts_sent == 0
    assert proxy.requests == 5


def test_resume_refuses_another_file_or_document(
    api: LibraryApi, outbox: Outbox, pool: ConnectionPool[Any], tmp_path: Path
) -> None:
    with pool.connection() as conn:
        ticket = outbox.request_upload(
            conn,
            owner_id="alice",
            filename="big.bin",
            content_type="application/octet-stream",
            size=FIVE_PARTS,
        )
    other_size = file_of(tmp_path, FIVE_PARTS + 1, seed=5)
    with Uploader(api, progress=False) as uploader:
        with pytest.raises(FileChanged):
            uploader.resume(other_size, ticket.document.id)
        with pytest.raises(NotFound):
            uploader.resume(other_size, uuid4())
        bob = LibraryApi(outbox, owner_id="bob", connect=pool.connection)
        with Uploader(bob, progress=False) as as_bob, pytest.raises(NotFound):
            as_bob.resume(file_of(tmp_path, FIVE_PARTS, seed=5), ticket.document.id)


def test_a_small_file_takes_one_put(
    settings: Settings,
    api: LibraryApi,
    outbox: Outbox,
    pool: ConnectionPool[Any],
    proxy: FaultProxy,
    inline_worker: InlineWorker,
    tmp_path: Path,
) -> None:
    path = file_of(tmp_path, 3 * MIB + 5, seed=6)
    watched = Watched(api)
    with (
        worker_running(inline_worker),
        Uploader(watched, backoff=FAST, progress=False) as uploader,
    ):
        result = uploader.upload(path, content_type="application/octet-stream")
        wait_available(settings, result.document_id)
    assert (result.multipart, result.part_count, result.parts_sent) == (False, 1, 1)
    assert watched.named("part_url") == [] and proxy.requests == 1
    with pool.connection() as conn:
        doc = outbox.get(conn, owner_id="alice", document_id=result.document_id)
    assert doc.sha256 == sha256_of(path) and doc.multipart is None
    assert stored_sha256(settings, outbox, pool, result.document_id) == doc.sha256

    # The same content again, once verified: a second document sharing the stored blob
    # (available at once, charged its size), nothing sent.
    with Uploader(api, progress=False) as uploader:
        again = uploader.upload(path, content_type="application/octet-stream")
    assert again.deduplicated and again.document_id != result.document_id
    assert again.parts_sent == 0 and proxy.requests == 1
    with pool.connection() as conn:
        second = outbox.get(conn, owner_id="alice", document_id=again.document_id)
    assert second.status == DocumentStatus.AVAILABLE
    assert second.object_key == doc.object_key


CHILD = """
import json, re, sys
from psycopg_pool import ConnectionPool
from outbox import Outbox
from outbox.uploader import LibraryApi, Uploader

def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

outbox = Outbox()
outbox.presigner.client  # made once per process (botocore loads its S3 model): not the upload's
pool = ConnectionPool(outbox.settings.database_url, min_size=5, max_size=5, open=False)
pool.open(wait=True, timeout=30)
api = LibraryApi(outbox, owner_id="alice", connect=pool.connection)
with Uploader(api, threads=4, progress=False) as uploader:
    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    result = uploader.upload(sys.argv[1])
    peak = kib("VmHWM")
pool.close()
print(json.dumps({"before_kib": before, "peak_kib": peak, "parts": result.parts_sent,
                  "document_id": str(result.document_id)}))
"""


def test_memory_stays_bounded_while_a_large_file_is_streamed(
    settings: Settings, inline_worker: InlineWorker, tmp_path: Path
) -> None:
    """A 160 MiB file in 32 parts, 4 at a time, in a process of its own: its peak resident
    memory during the upload (Linux's VmHWM, reset just before) grows by a small fraction
    of the file: a 1 MiB chunk per thread plus the threads and connections (about 10 MiB
    here), not whole parts (4 x 5 MiB more) or the file (160 MiB)."""
    size = 160 * MIB
    path = file_of(tmp_path, size, seed=7)
    with worker_running(inline_worker):
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)],
            env=child_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["parts"] == 32
    grown = (out["peak_kib"] - out["before_kib"]) * 1024
    assert grown < 16 * MIB, f"peak RSS grew {grown / MIB:.1f} MiB for a {size // MIB} MiB file"
    assert doc_status(settings, out["document_id"]) in ("uploaded", "available")
