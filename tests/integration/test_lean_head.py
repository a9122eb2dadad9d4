"""The workers' lean HeadObject (worker/lean_head.py) answers as boto3's head_object does, on
the real storage server: the same ObjectInfo for an object with and without a stored
checksum and with foreign metadata, None for a missing key, the same errors (403 with wrong
credentials, a missing bucket, storage unreachable) and boto3's standard-mode retries."""

from __future__ import annotations

import base64
import hashlib
import http.server
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from pydantic import SecretStr

from outbox import Settings
from tests.support.util import wait_for
from worker.lean_head import LeanHead
from worker.storage import BucketMissing, Storage, unavailable

BODY = b"%PDF-1.7\n" + bytes(range(256)) * 4


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def both(settings: Settings) -> tuple[Storage, Storage]:
    lean, boto = Storage(settings), Storage(settings, lean_head=False)
    assert lean.lean and not boto.lean
    return lean, boto


def _put(storage: Storage, key: str, **extra: Any) -> None:
    storage.client.put_object(
        Bucket=storage.bucket, Key=key, Body=BODY, ContentType="application/pdf", **extra
    )


def test_lean_is_the_default_and_boto3_when_asked_or_given_a_client(settings: Settings) -> None:
    assert Storage(settings).lean
    assert not Storage(settings.model_copy(update={"s3_lean_head": False})).lean
    assert not Storage(settings, Storage(settings).client).lean


def test_an_object_with_its_checksum_reads_the_same(both: tuple[Storage, Storage]) -> None:
    lean, boto = both
    key = f"{lean.settings.key_prefix}{uuid.uuid4()}"
    _put(lean, key, ChecksumSHA256=_b64_sha256(BODY))
    info = lean.head(key)
    assert info is not None
    assert (info.size, info.content_type, info.sha256_b64) == (
        len(BODY),
        "application/pdf",
        _b64_sha256(BODY),
    )
    assert info.foreign_metadata == ()
    assert info == boto.head(key)


def test_an_object_without_a_stored_checksum_has_none(both: tuple[Storage, Storage]) -> None:
    lean, boto = both
    key = f"{lean.settings.key_prefix}{uuid.uuid4()}"
    _put(lean, key)
    info = lean.head(key)
    assert info is not None and info.sha256_b64 is None and info.size == len(BODY)
    assert info == boto.head(key)


def test_foreign_metadata_is_seen_as_boto3_sees_it(both: tuple[Storage, Storage]) -> None:
    lean, boto = both
    key = f"{lean.settings.key_prefix}{uuid.uuid4()}"
    _put(
        lean,
        key,
        ChecksumSHA256=_b64_sha256(BODY),
        ContentEncoding="gzip",
        CacheControl="max-age=60",
        ContentDisposition="inline",
        ContentLanguage="de",
        Expires="Wed, 21 Oct 2037 07:28:00 GMT",
        WebsiteRedirectLocation="/elsewhere",
        Metadata={"Origin": "uploader"},
    )
    info = lean.head(key)
    assert info is not None
    headers = dict(info.foreign_metadata)
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Cache-Control"] == "max-age=60"
    assert headers["Content-Disposition"] == "inline"
    assert headers["Content-Language"] == "de"
    assert "2037" in headers["Expires"]
    assert headers["x-amz-meta-origin"] == "uploader"
    assert info == boto.head(key)


def test_a_missing_key_and_an_odd_key_read_the_same(both: tuple[Storage, Storage]) -> None:
    lean, boto = both
    prefix = lean.settings.key_prefix
    assert lean.head(f"{prefix}{uuid.uuid4()}") is None
    odd = f"{prefix}a b+c/ü~%20?x=1#y"
    assert lean.head(odd) is None
    _put(lean, odd)
    info = lean.head(odd)
    assert info is not None and info.size == len(BODY)
    assert info == boto.head(odd)


def test_wrong_credentials_answer_a_403_that_is_unavailability(settings: Settings) -> None:
    wrong = settings.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret")})
    errors = []
    for storage in (Storage(wrong), Storage(wrong, lean_head=False)):
        with pytest.raises(ClientError) as caught:
            storage.head(f"{settings.key_prefix}{uuid.uuid4()}")
        errors.append(caught.value)
    lean, boto = errors
    assert lean.response["Error"]["Code"] == boto.response["Error"]["Code"] == "403"
    assert lean.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert lean.operation_name == boto.operation_name == "HeadObject"
    assert unavailable(lean) == unavailable(boto) == "access_denied"


def test_a_missing_bucket_is_not_a_missing_object(settings: Settings) -> None:
    gone = settings.model_copy(update={"s3_bucket": f"no-such-{uuid.uuid4().hex[:12]}"})
    for storage in (Storage(gone), Storage(gone, lean_head=False)):
        with pytest.raises(BucketMissing) as caught:
            storage.head(f"{settings.key_prefix}{uuid.uuid4()}")
        assert unavailable(caught.value) == "bucket_missing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_storage_is_a_connection_error(settings: Settings) -> None:
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{_free_port()}"})
    storage = Storage(down)
    assert storage.lean
    with pytest.raises(EndpointConnectionError) as caught:
        storage.head("k")
    assert unavailable(caught.value) == "connection"


@pytest.fixture
def answering() -> Iterator[Callable[[int], tuple[str, list[str]]]]:
    """A local HTTP server that answers every request with one status: its URL, and the
    methods of the requests it got (what a client sent, and how often)."""
    servers: list[http.server.HTTPServer] = []

    def start(status: int) -> tuple[str, list[str]]:
        seen: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                seen.append(self.command)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (500, 3), (400, 1), (404, 1)])
def test_retries_are_boto3_standard_mode(
    settings: Settings,
    answering: Callable[[int], tuple[str, list[str]]],
    status: int,
    attempts: int,
) -> None:
    """5xx answers are tried 3 times in all, as boto3's standard mode does; others once."""
    url, seen = answering(status)
    storage = Storage(settings.model_copy(update={"s3_endpoint_url": url}))
    assert storage.lean
    with pytest.raises(ClientError) as caught:
        storage.head_object("k")
    assert caught.value.response["Error"]["Code"] == str(status)
    assert len(seen) == attempts
    expected = "server_error" if status >= 500 else None
    assert unavailable(caught.value) == expected


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], tuple[str, list[int]]]]:
    """A local TCP server that hands each accepted connection to ``serve``: its URL, and a
    list that counts the connections it accepted."""
    sockets: list[socket.socket] = []

    def start(serve: Callable[[socket.socket], None]) -> tuple[str, list[int]]:
        accepted: list[int] = []
        listener = socket.create_server(("127.0.0.1", 0))
        sockets.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                accepted.append(1)
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}", accepted

    yield start
    for listener in sockets:
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_connection_closed_without_an_answer_is_a_connection_error_tried_three_times(
    settings: Settings,
    raw_server: Callable[[Callable[[socket.socket], None]], tuple[str, list[int]]],
) -> None:
    """Never a status: a dropped connection cannot read as a missing object."""

    def hang_up(conn: socket.socket) -> None:
        _read_request(conn)
        conn.close()

    url, accepted = raw_server(hang_up)
    storage = Storage(settings.model_copy(update={"s3_endpoint_url": url}))
    assert storage.lean
    with pytest.raises(ConnectionClosedError) as caught:
        storage.head_object("k")
    assert unavailable(caught.value) == "connection"
    assert len(accepted) == 3


def test_no_answer_within_the_read_timeout_is_a_read_timeout(
    settings: Settings,
    raw_server: Callable[[Callable[[socket.socket], None]], tuple[str, list[int]]],
) -> None:
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        _read_request(conn)
        release.wait(30)
        conn.close()

    url, _ = raw_server(stall)
    head = LeanHead(settings, f"{url}/bucket", connect_timeout=1.0, read_timeout=0.2)
    try:
        with pytest.raises(ReadTimeoutError) as caught:
            head.head_object("k")
        assert unavailable(caught.value) == "connection"
    finally:
        release.set()
        head.close()


def test_a_kept_connection_the_server_closed_is_replaced_before_the_next_call(
    settings: Settings,
    raw_server: Callable[[Callable[[socket.socket], None]], tuple[str, list[int]]],
) -> None:
    """The server answers as if keeping the connection, then closes it while idle (a storage
    server's idle timeout): the next HEAD goes over a new connection, with no error."""
    answered: list[bytes] = []

    def answer_once(conn: socket.socket) -> None:
        answered.append(_read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Type: text/plain\r\n\r\n")
        conn.close()

    url, accepted = raw_server(answer_once)
    head = LeanHead(settings, f"{url}/bucket")
    try:
        for _ in range(3):
            assert head.head_object("k")["ContentLength"] == 7
            wait_for(lambda: len(answered) == len(accepted), timeout=5)
        assert len(accepted) == 3
        assert all(request.startswith(b"HEAD /bucket/k HTTP/1.1\r\n") for request in answered)
    finally:
        head.close()


def test_the_connection_of_a_thread_that_ended_is_closed_when_another_thread_calls(
    settings: Settings,
    raw_server: Callable[[Callable[[socket.socket], None]], tuple[str, list[int]]],
) -> None:
    """A caller with a thread pool per call (each thread makes its own handle and keeps its
    connection alive) does not pile up open connections."""
    closed: list[int] = []

    def keep_alive(conn: socket.socket) -> None:
        while _read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        closed.append(1)
        conn.close()

    url, accepted = raw_server(keep_alive)
    head = LeanHead(settings, f"{url}/bucket")
    try:
        for _ in range(3):
            worker = threading.Thread(target=head.head_object, args=("k",))
            worker.start()
            worker.join()
        # Each thread's handle closed the one of the thread before it: the last one's is open.
        wait_for(lambda: len(closed) == 2, timeout=5)
        assert len(accepted) == 3
        assert head.head_object("k")["ContentLength"] == 3
        wait_for(lambda: len(closed) == 3, timeout=5)
        assert len(accepted) == 4
    finally:
        head.close()
