"""Secrets never reach logs, metrics or the outbox table: the S3 secret access key, the
signatures of presigned URLs, and the database password.

The logging is the project's own (``outbox.logs.configure``: its handler, ContextFilter and
formatter), captured from that handler; botocore, boto3, urllib3 and s3transfer are then turned
up to DEBUG as well, the worst an operator can do. The database URL carries a password (the
embedded PostgreSQL trusts local connections, so any password works)."""

from __future__ import annotations

import io
import logging
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
import requests
from prometheus_client import start_http_server
from prometheus_client.registry import REGISTRY

from outbox import DocumentStatus, Outbox, Settings
from outbox.logs import JsonFormatter, configure, log_context, redact
from outbox.presign import Presigner
from tests.support.core import dispatched_events, put, sha256_hex
from worker.events import EventProcessor, Outcome
from worker.metrics import OutboxCollector
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import Storage

NOISY = ("botocore", "boto3", "urllib3", "s3transfer")
DB_PASSWORD = f"pw-{uuid.uuid4().hex}"
WRONG_SECRET = f"wrong-secret-{uuid.uuid4().hex}"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def signature_of(url: str) -> str:
    values = parse_qs(urlsplit(url).query)["X-Amz-Signature"]
    assert len(values) == 1 and re.fullmatch(r"[0-9a-f]{64}", values[0])
    return values[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What an s3-outbox process configured with ``configure("DEBUG")`` writes, with boto and
    urllib3 at DEBUG too. Restores the logging configuration afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_noisy = {name: logging.getLogger(name).level for name in NOISY}
    configure(level="DEBUG")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        for existing in list(root.handlers):
            root.removeHandler(existing)
        for saved in saved_handlers:
            root.addHandler(saved)
        root.setLevel(saved_level)
        for name, level in saved_noisy.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def secret_settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    settings = make_settings(max_failures=1)
    secret_url = with_password(settings.database_url, DB_PASSWORD)
    with psycopg.connect(secret_url) as c:  # trust auth: the password is accepted, unused
        c.execute("SELECT 1")
    return make_settings(max_failures=1, database_url=secret_url)


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    assert secrets and all(len(s) >= 8 for s in secrets)  # long enough not to match by chance
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"


def test_full_lifecycle_leaks_no_secret(secret_settings: Settings, log_output: io.StringIO) -> None:
    settings = secret_settings
    outbox = Outbox(settings)
    storage = Storage(settings)
    pool = make_pool(settings, max_size=2)
    processor = EventProcessor(settings, pool, storage)
    relay = Relay(settings)
    signatures: list[str] = []

    def work() -> list[Outcome]:
        relay.run_once()
        return [processor.process(i, a) for i, a in dispatched_events(settings)]

    try:
        with psycopg.connect(settings.database_url) as conn:
            # Upload, verify, download, delete, purge.
            body = b"%PDF-1.7\n" + b"s" * 2000
            ticket = outbox.request_upload(
                conn,
                owner_id="alice",
                filename="secret-plans.pdf",
                content_type="application/pdf",
                size=len(body),
                sha256=sha256_hex(body),
            )
            conn.commit()
            assert ticket.url is not None
            signatures.append(signature_of(ticket.url))
            assert put(ticket, body).status_code == 200
            doc_id = ticket.document.id
            outbox.confirm(conn, owner_id="alice", document_id=doc_id)
            conn.commit()
            assert work() == [Outcome.DONE]
            got = outbox.get(conn, owner_id="alice", document_id=doc_id)
            assert got.status == DocumentStatus.AVAILABLE
            download = outbox.download_url(conn, owner_id="alice", document_id=doc_id)
            signatures.append(signature_of(download.url))
            assert requests.get(download.url, timeout=30).content == body
            outbox.delete(conn, owner_id="alice", document_id=doc_id)
            conn.commit()
            assert Outcome.DONE in work()
            got = outbox.get(conn, owner_id="alice", document_id=doc_id)
            assert got.status == DocumentStatus.DELETED

            # Storage refuses a worker with the wrong secret: the event is postponed (a
            # configuration error is not the event's failure), its last error recorded.
            other = b"second document " * 50
            ticket2 = outbox.request_upload(
                conn,
                owner_id="alice",
                filename="b.txt",
                content_type="text/plain",
                size=len(other),
                sha256=sha256_hex(other),
            )
            conn.commit()
            assert ticket2.url is not None
            signatures.append(signature_of(ticket2.url))
            assert put(ticket2, other).status_code == 200
            outbox.confirm(conn, owner_id="alice", document_id=ticket2.document.id)
            conn.commit()
            wrong = Settings(**{**settings.model_dump(), "s3_secret_access_key": WRONG_SECRET})
            failing = EventProcessor(settings, pool, Storage(wrong))
            relay.run_once()
            ((event_id, attempt),) = dispatched_events(settings)
            assert failing.process(event_id, attempt) == Outcome.POSTPONED
            row = conn.execute(
                "SELECT status, last_error FROM s3outbox.events WHERE id = %s", (event_id,)
            ).fetchone()
            conn.commit()
            assert row is not None and row[0] == "pending" and row[1]

            # Presign with the wrong secret too (a signature nobody may see either).
            signatures.append(
                signature_of(
                    Presigner(wrong).put_url(
                        key=f"{settings.key_prefix}{uuid.uuid4()}",
                        content_type="text/plain",
                        size=3,
                        sha256_hex=sha256_hex(b"abc"),
                        expires_in=60,
                    )[0]
                )
            )
    finally:
        relay.close()
        pool.close()

    secrets = [
        settings.s3_secret_access_key.get_secret_value(),
        WRONG_SECRET,
        DB_PASSWORD,
        *signatures,
    ]
    logged = log_output.getvalue()
    # The capture works and saw the whole story, boto's DEBUG lines included.
    for expected in ("upload requested", "upload confirmed", "delete requested", "postponed"):
        assert expected in logged, expected
    assert " botocore" in logged and " urllib3" in logged
    assert_clean(logged, secrets, "the logs")
    assert_clean(str(row[1]), secrets, "last_error of the postponed event")


def test_metrics_scrape_leaks_no_secret(secret_settings: Settings, log_output: io.StringIO) -> None:
    """A real scrape over HTTP while the collector reads the database through a URL with a
    password, and once more when the database cannot be reached at that URL."""
    settings = secret_settings
    unreachable = Settings(
        **{
            **settings.model_dump(),
            "database_url": with_password(
                settings.database_url.replace(
                    f":{urlsplit(settings.database_url).port}/", f":{free_port()}/"
                ),
                DB_PASSWORD,
            ),
        }
    )
    texts: list[str] = []
    for current in (settings, unreachable):
        collector = OutboxCollector(current)
        REGISTRY.register(collector)
        port = free_port()
        server, thread = start_http_server(port, addr="127.0.0.1")
        try:
            texts.append(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
            REGISTRY.unregister(collector)
    up, down = texts
    assert "s3outbox_database_up 1.0" in up and "s3outbox_events_dispatched_total" in up
    assert "s3outbox_database_up 0.0" in down
    assert "metrics could not read the database" in log_output.getvalue()
    secrets = [settings.s3_secret_access_key.get_secret_value(), DB_PASSWORD]
    assert_clean(up + down, secrets, "the metrics")
    assert_clean(log_output.getvalue(), secrets, "the logs")


# -- redact and the formatters ---------------------------------------------------------------


def _presigned(settings: Settings) -> str:
    return Presigner(settings).put_url(
        key="documents/00000000-0000-4000-8000-000000000000",
        content_type="application/pdf",
        size=10,
        sha256_hex=sha256_hex(b"0123456789"),
        expires_in=900,
    )[0]


SIG = "a" * 24 + "0123456789abcdef" * 2 + "f" * 8  # 64 hex characters
CASES: list[tuple[str, list[str]]] = [
    (f"GET /b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIG}&x=1", [SIG]),
    (
        "X-Amz-Credential=AKIDEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=1",
        ["AKIDEXAMPLE"],
    ),
    ("X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLETOKENxyz&X-Amz-Expires=60", ["FQoGZXIvYXdz"]),
    (
        "Authorization: AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={SIG}",
        [SIG],
    ),
    ("postgresql://postgres:hunter2-very-secret@db.internal:5432/app", ["hunter2-very-secret"]),
    ("redis://:redis-pass-123456@cache:6379/0", ["redis-pass-123456"]),
    ("host=db user=app password=pg-pass-abcdef dbname=app", ["pg-pass-abcdef"]),
    ('{"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG"}', ["wJalrXUtnFEMI"]),
    ("secret: s3outbox-dev-secret", ["s3outbox-dev-secret"]),
    ("SECRET='quoted-secret-value'", ["quoted-secret-value"]),
]


@pytest.mark.parametrize(("text", "hidden"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_redact_hides(text: str, hidden: list[str]) -> None:
    cleaned = redact(text)
    for secret in hidden:
        assert secret not in cleaned, cleaned
    assert "REDACTED" in cleaned
    assert redact(cleaned) == cleaned  # idempotent


def test_redact_a_real_presigned_url_keeps_what_is_useful(base_settings: Settings) -> None:
    url = _presigned(base_settings)
    signature = signature_of(url)
    cleaned = redact(url)
    assert signature not in cleaned
    assert base_settings.s3_access_key_id not in cleaned
    # Still useful for debugging: where it points, and when it was signed.
    assert cleaned.startswith(urlsplit(url)._replace(query="").geturl())
    assert "X-Amz-Date=" in cleaned and "X-Amz-Expires=900" in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "event 12 (verify) done",
        "document rejected: sha256 mismatch: stored checksum differs from the declared one",
        "http://127.0.0.1:58333/s3outbox/documents/0a0b",
        "size mismatch: declared 10 bytes, stored 11",
    ):
        assert redact(text) == text


def test_context_filter_redacts_arguments_and_exceptions() -> None:
    """A secret passed as a %-argument, in extra fields or in a traceback is redacted by the
    project's handler in both text and JSON format."""
    url = f"http://s3/b/k?X-Amz-Signature={SIG}"
    for json_lines in (False, True):
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        configure(level="DEBUG", json_lines=json_lines)
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        if json_lines:
            assert isinstance(handler.formatter, JsonFormatter)
        stream = io.StringIO()
        handler.setStream(stream)
        try:
            log = logging.getLogger("s3outbox.test")
            with log_context(trace_id="t1", document_id="d1"):
                log.info("presigned %s for %s", url, "postgresql://u:hunter2-secret@h/db")
                log.info(
                    "with extras",
                    extra={"target": url, "dsn": "postgresql://u:hunter2-secret@h/db"},
                )
                try:
                    raise RuntimeError(f"boom {url}")
                except RuntimeError:
                    log.exception("failed")
        finally:
            for existing in list(root.handlers):
                root.removeHandler(existing)
            for saved in saved_handlers:
                root.addHandler(saved)
            root.setLevel(saved_level)
        text = stream.getvalue()
        assert "presigned" in text and "RuntimeError" in text and "t1" in text
        assert SIG not in text and "hunter2-secret" not in text, text
