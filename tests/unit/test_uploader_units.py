"""The upload helper's pieces that need no server: reading a file by range, the retry
policy, what a storage error means for the next attempt, the HTTP API's error bodies turned
back into typed errors, and the library importing (and uploading) without tqdm."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from outbox import (
    FileChanged,
    HttpApiError,
    InvalidState,
    NotFound,
    QuotaExceeded,
    UploadFailed,
    UploadInterrupted,
    UploadNotReady,
)
from outbox.uploader import Backoff
from outbox.uploader.files import LocalFile
from outbox.uploader.http_api import error_from
from outbox.uploader.progress import Progress
from outbox.uploader.transport import failure

ROOT = Path(__file__).resolve().parents[2]


def test_a_range_is_read_in_chunks_of_one_reused_buffer(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    f = LocalFile(path, chunk_bytes=1024)
    views = list(f.chunks(1000, 5000))
    # Every chunk is a view of the same 1 KiB buffer (never the whole range in memory).
    assert len(views) == 5 and all(v.obj is views[0].obj for v in views)
    assert len(views[0].obj) == 1024  # type: ignore[arg-type]
    assert f.sha256(1000, 5000) == hashlib.sha256(data[1000:6000]).hexdigest()
    assert f.sha256(9000, 1000) == hashlib.sha256(data[9000:]).hexdigest()


def test_a_file_that_shrank_or_changed_raises_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 4096)
    f = LocalFile(path, chunk_bytes=1024)
    f.check_unchanged()  # as opened
    path.write_bytes(b"x" * 100)
    with pytest.raises(FileChanged):
        f.check_unchanged()
    with pytest.raises(FileChanged):
        f.sha256(0, 4096)
    assert issubclass(FileChanged, UploadFailed) and FileChanged.http_status == 409
    with pytest.raises(IsADirectoryError):
        LocalFile(tmp_path)
    with pytest.raises(FileNotFoundError):
        LocalFile(tmp_path / "absent")


def test_backoff_delays_are_jittered_doubling_and_capped() -> None:
    b = Backoff(attempts=5, base_seconds=1.0, max_seconds=3.0)
    for attempt, cap in ((1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0)):
        delays = [b.delay(attempt) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered
    with pytest.raises(ValueError):
        Backoff(attempts=0)


@pytest.mark.parametrize(
    ("status", "body", "retryable", "fresh_url", "rehash"),
    [
        (503, b"<Error><Code>SlowDown</Code></Error>", True, False, False),
        (500, b"", True, False, False),
        (400, b"<Error><Code>BadDigest</Code></Error>", True, True, True),
        (403, b"<Error><Code>AccessDenied</Code></Error>", True, True, False),
        (404, b"<Error><Code>NoSuchUpload</Code></Error>", False, False, False),
        (400, b"<Error><Code>IncompleteBody</Code></Error>", False, False, False),
    ],
)
def test_what_a_storage_error_means_for_the_next_attempt(
    status: int, body: bytes, retryable: bool, fresh_url: bool, rehash: bool
) -> None:
    f = failure(status, body)
    assert (f.status, f.retryable, f.fresh_url, f.rehash) == (status, retryable, fresh_url, rehash)
    if body:
        assert f.code is not None and f.code in f.message


def test_api_error_bodies_come_back_as_the_librarys_typed_errors() -> None:
    nf = error_from(404, {"error": "not_found", "message": "document not found"})
    assert type(nf) is NotFound and nf.message == "document not found"
    nr = error_from(409, {"error": "upload_not_ready", "message": "m", "retry_after": 1})
    assert type(nr) is UploadNotReady and nr.details["retry_after"] == 1
    st = error_from(409, {"error": "invalid_state", "message": "m", "status": "expired"})
    assert type(st) is InvalidState and st.details["status"] == "expired"
    body = {"error": "quota_exceeded", "used": 1, "reserved": 2, "limit": 10, "requested": 9}
    q = error_from(413, body)
    assert isinstance(q, QuotaExceeded) and (q.requested, q.limit) == (9, 10)
    other = error_from(401, {"error": "unauthorized", "message": "who are you"})
    assert type(other) is HttpApiError
    assert (other.http_status, other.code) == (401, "unauthorized")
    html = error_from(502, "<html>bad gateway</html>")
    assert type(html) is HttpApiError and html.http_status == 502
    assert issubclass(UploadInterrupted, UploadFailed)


def test_progress_counts_bytes_given_back_and_calls_back(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    p = Progress(100, label="x", enabled=False, callback=lambda d, t: seen.append((d, t)))
    p.add(60)
    p.add(-20)  # a failed attempt's bytes taken back
    p.add(60)
    p.close()
    assert p.done == 100 and seen == [(60, 100), (40, 100), (100, 100)]


NO_TQDM = """
import sys
from pathlib import Path

class NoTqdm:
    def find_spec(self, name, path=None, target=None):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoTqdm())
import outbox
from outbox.uploader import Uploader
from outbox.uploader.progress import Progress
from worker.ops.progress import bar

assert "tqdm" not in sys.modules
p = Progress(10, label="x", enabled=None)
p.add(10)
p.close()
try:
    Progress(10, label="x", enabled=True)
except ImportError:
    pass
else:
    raise AssertionError("a bar asked for without tqdm must raise ImportError")
bar(True, "objects", "obj").update(3)
try:
    Uploader(object(), progress=True)  # type: ignore[arg-type]
except ImportError as exc:
    assert "s3-outbox[progress]" in str(exc), exc
else:
    raise AssertionError("progress=True without tqdm must raise ImportError")
Uploader(object(), progress=None).close()  # type: ignore[arg-type]
print("ok")
"""


def test_the_library_imports_and_uploads_without_tqdm() -> None:
    """tqdm is the optional ``progress`` extra: with it made unimportable, the library and
    the helper import, a bar asked for on a terminal (``None``) is silently not shown, one
    asked for explicitly raises ``ImportError`` naming the extra."""
    run = subprocess.run(
        [sys.executable, "-c", NO_TQDM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
