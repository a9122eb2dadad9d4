"""A catalog of hostile input for every public call. Each case must raise exactly the
documented error type with its HTTP status, change nothing in the database, and leave the
caller's transaction usable."""

from __future__ import annotations

import base64
import contextlib
import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from outbox import (
    FileTooLarge,
    InvalidInput,
    InvalidState,
    NotFound,
    Outbox,
    PartsMissing,
    Settings,
    UploadNotReady,
    UploadWindowClosed,
    ValidationFailed,
    errors,
)
from outbox.errors import OutboxError, UnsupportedContentType
from tests.support.api import body_of, sha, snapshot
from tests.support.core import InlineWorker
from worker.events import EventProcessor
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import Storage

BODY = body_of(100, seed=b"bad-input")
GOOD = {
    "owner_id": "alice",
    "filename": "ok.txt",
    "content_type": "text/plain",
    "size": len(BODY),
    "sha256": sha(BODY),
}


class World:
    """A baseline: alice has one pending document and a quota row (all committed); with
    ``multipart`` also three multipart documents (above the threshold of
    ``MULTIPART_WORLD``): ``ready`` (its upload created by a worker, part 1's URL issued),
    ``unready`` (its upload not created yet) and ``gone`` (deleted)."""

    def __init__(
        self,
        outbox: Outbox,
        conn: psycopg.Connection[Any],
        worker: InlineWorker | None = None,
    ) -> None:
        self.outbox = outbox
        self.conn = conn
        other = body_of(50, seed=b"baseline")
        self.doc = outbox.request_upload(
            conn, **{**GOOD, "size": 50, "sha256": sha(other)}
        ).document
        conn.commit()
        if worker is None:
            return
        big = {**GOOD, "size": MULTIPART_SIZE, "sha256": None}
        self.ready = outbox.request_upload(conn, **big).document
        conn.commit()
        worker.drain()
        self.part_url(part_number=1)
        self.unready = outbox.request_upload(conn, **big).document
        self.gone = outbox.request_upload(conn, **big).document
        outbox.delete(conn, owner_id="alice", document_id=self.gone.id)
        conn.commit()

    def part_url(self, **overrides: Any) -> Any:
        kwargs = {
            "owner_id": "alice",
            "document_id": self.ready.id,
            "part_number": 1,
            "sha256": "ab" * 32,
            **overrides,
        }
        return self.outbox.part_url(self.conn, **kwargs)

    def report_part(self, **overrides: Any) -> Any:
        kwargs = {
            "owner_id": "alice",
            "document_id": self.ready.id,
            "part_number": 1,
            "etag": '"0123456789abcdef0123456789abcdef"',
            **overrides,
        }
        return self.outbox.report_part(self.conn, **kwargs)

    def upload_status(self, **overrides: Any) -> Any:
        kwargs = {"owner_id": "alice", "document_id": self.ready.id, **overrides}
        return self.outbox.upload_status(self.conn, **kwargs)

    def upload(self, **overrides: Any) -> Any:
        return self.outbox.request_upload(self.conn, **{**GOOD, **overrides})

    def doc_call(self, name: str, **overrides: Any) -> Any:
        kwargs: dict[str, Any] = {"owner_id": "alice", "document_id": self.doc.id, **overrides}
        return getattr(self.outbox, name)(self.conn, **kwargs)

    def list(self, **overrides: Any) -> Any:
        return self.outbox.list(self.conn, **{"owner_id": "alice", **overrides})

    def quota(self, **overrides: Any) -> Any:
        return self.outbox.quota(self.conn, **{"owner_id": "alice", **overrides})

    def set_limit(self, **overrides: Any) -> Any:
        kwargs = {"owner_id": "alice", "limit_bytes": 10**6, **overrides}
        return self.outbox.set_limit(self.conn, **kwargs)


Case = tuple[str, Callable[[World], Any], type[OutboxError], int]
CASES: list[Case] = []


def case(name: str, expected: type[OutboxError], status: int, call: Callable[[World], Any]):
    CASES.append((name, call, expected, status))


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- size ----------------------------------------------------------------------------------
for label, value in [
    ("0", 0),
    ("-1", -1),
    ("True", True),
    ("1.5", 1.5),
    ("str", "10"),
    ("None", None),
]:
    case(f"size={label}", InvalidInput, 400, lambda w, v=value: w.upload(size=v))
case("size>max", FileTooLarge, 413, lambda w: w.upload(size=10 * 1024 * 1024 + 1))
case("size=huge", FileTooLarge, 413, lambda w: w.upload(size=2**70))

# -- sha256 --------------------------------------------------------------------------------
for label, value in [
    ("short", "ab" * 31),
    ("long", "ab" * 33),
    ("non-hex", "g" * 64),
    ("spaces", " " + "a" * 63),
    ("newline", "a" * 64 + "\n"),
    ("base64", base64.b64encode(bytes.fromhex(sha(BODY))).decode()),
    ("empty", ""),
    ("None", None),
    ("bytes", bytes.fromhex(sha(BODY))),
    ("arabic-digits", "\u0661" * 64),
]:
    case(f"sha256={label}", InvalidInput, 400, lambda w, v=value: w.upload(sha256=v))

# -- filename ------------------------------------------------------------------------------
for label, value in [
    ("empty", ""),
    ("blank", "   "),
    ("dotdot-slash", "../x"),
    ("slash", "a/b"),
    ("backslash", "a\\b"),
    ("nul", "a\x00b"),
    ("lf", "a\nb"),
    ("cr", "a\rb"),
    ("tab", "a\tb"),
    ("del", "a\x7fb"),
    ("c1", "a\x85b"),
    ("rlo", "\u202egpj.exe"),
    ("lri", "a\u2066b"),
    ("rlm", "a\u200fb"),
    ("10000", "a" * 10_000),
    ("256", "a" * 256),
    ("dot", "."),
    ("dotdot", ".."),
    ("dots", "..."),
    ("dot-space", ". ."),
    ("leading", " leading"),
    ("trailing", "trailing "),
    ("nbsp", "\u00a0x.txt"),
    ("surrogate", "a\ud800b.txt"),
    ("zero-width-space", "invoice\u200b.pdf"),
    ("bom", "\ufeffreport.pdf"),
]:
    case(f"filename={label}", ValidationFailed, 422, lambda w, v=value: w.upload(filename=v))
for label, value in [("None", None), ("int", 123), ("bytes", b"a.txt")]:
    case(f"filename={label}", InvalidInput, 400, lambda w, v=value: w.upload(filename=v))

# -- content type --------------------------------------------------------------------------
for label, value in [
    ("crlf", "text/plain\r\nX: y"),
    ("param", "text/plain; charset=utf-8"),
    ("empty", ""),
    ("bare", "TEXT"),
    ("not-allowed", "application/x-msdownload"),
    ("html", "text/html"),
    ("svg", "image/svg+xml"),
    ("int", 123),
    ("None", None),
    ("spaces", " text/plain"),
    ("wildcard", "*/*"),
    ("unicode", "text/pla\u0131n"),
]:
    case(
        f"content_type={label}",
        UnsupportedContentType,
        415,
        lambda w, v=value: w.upload(content_type=v),
    )

# -- expires_in ----------------------------------------------------------------------------
for label, value in [
    ("0", 0),
    ("-1", -1),
    ("max+1", 3601),
    ("float", 1.5),
    ("str", "60"),
    ("True", True),
]:
    case(f"upload expires_in={label}", InvalidInput, 400, lambda w, v=value: w.upload(expires_in=v))

# -- owner ids, for every call -------------------------------------------------------------
OWNER_CALLS: dict[str, Callable[[World, Any], Any]] = {
    "request_upload": lambda w, o: w.upload(owner_id=o),
    "confirm": lambda w, o: w.doc_call("confirm", owner_id=o),
    "delete": lambda w, o: w.doc_call("delete", owner_id=o),
    "get": lambda w, o: w.doc_call("get", owner_id=o),
    "download_url": lambda w, o: w.doc_call("download_url", owner_id=o),
    "list": lambda w, o: w.list(owner_id=o),
    "quota": lambda w, o: w.quota(owner_id=o),
    "set_limit": lambda w, o: w.set_limit(owner_id=o),
}
for call_name, call in OWNER_CALLS.items():
    for label, value in [
        ("empty", ""),
        ("None", None),
        ("201", "o" * 201),
        ("nul", "a\x00b"),
        ("newline", "a\nb"),
        ("surrogate", "a\udc00"),
        ("int", 42),
    ]:
        case(f"{call_name} owner_id={label}", InvalidInput, 400, lambda w, v=value, c=call: c(w, v))

# -- document ids, for every call that takes one -------------------------------------------
for call_name in ("confirm", "delete", "get", "download_url"):
    for label, value in [
        ("not-a-uuid", "not-a-uuid"),
        ("empty", ""),
        ("int", 123),
        ("None", None),
        ("bytes", uuid.uuid4().bytes),
        ("sql", "' OR '1'='1"),
    ]:
        case(
            f"{call_name} document_id={label}",
            InvalidInput,
            400,
            lambda w, v=value, c=call_name: w.doc_call(c, document_id=v),
        )
    case(
        f"{call_name} document_id=unknown",
        NotFound,
        404,
        lambda w, c=call_name: w.doc_call(c, document_id=uuid.uuid4()),
    )
    case(
        f"{call_name} document_id=unknown-str",
        NotFound,
        404,
        lambda w, c=call_name: w.doc_call(c, document_id=str(uuid.uuid4())),
    )

# -- list ----------------------------------------------------------------------------------
for label, value in [
    ("0", 0),
    ("501", 501),
    ("str", "5"),
    ("-1", -1),
    ("True", True),
    ("float", 5.0),
]:
    case(f"list limit={label}", InvalidInput, 400, lambda w, v=value: w.list(limit=v))
for label, value in [
    ("garbage", "!!!not base64!!!"),
    ("random-b64", _cursor(b"\xff\xfe\xfd")),
    ("no-sep", _cursor(b"2024-01-01T00:00:00+00:00")),
    ("naive-time", _cursor(b"2024-01-01T00:00:00|" + str(uuid.uuid4()).encode())),
    ("bad-uuid", _cursor(b"2024-01-01T00:00:00+00:00|nope")),
    ("bad-time", _cursor(b"yesterday|" + str(uuid.uuid4()).encode())),
    ("too-long", "A" * 201),
    ("int", 123),
    ("empty", ""),
]:
    case(f"list cursor={label}", InvalidInput, 400, lambda w, v=value: w.list(cursor=v))
for label, value in [("unknown", "archived"), ("upper", "PENDING"), ("empty", ""), ("int", 1)]:
    case(f"list status={label}", InvalidInput, 400, lambda w, v=value: w.list(status=v))
for label, value in [("str", "garbage"), ("int", 1), ("None", None)]:
    case(
        f"list include_deleted={label}",
        InvalidInput,
        400,
        lambda w, v=value: w.list(include_deleted=v),
    )

# -- trace ids ----------------------------------------------------------------------------
for label, value in [
    ("nul", "a\x00b"),
    ("long", "t" * 129),
    ("empty", ""),
    ("space", "a b"),
    ("int", 7),
]:
    case(f"upload trace_id={label}", InvalidInput, 400, lambda w, v=value: w.upload(trace_id=v))
    case(
        f"confirm trace_id={label}",
        InvalidInput,
        400,
        lambda w, v=value: w.doc_call("confirm", trace_id=v),
    )

# -- multipart: request_upload, part_url, report_part, upload_status, confirm ----------------
MULTIPART_SIZE = 6 * 1024 * 1024  # two parts of the catalog's multipart settings
case(
    "upload sha256 given above the threshold",
    InvalidInput,
    400,
    lambda w: w.upload(size=MULTIPART_SIZE),
)
case(
    "confirm multipart with parts missing",
    PartsMissing,
    409,
    lambda w: w.outbox.confirm(w.conn, owner_id="alice", document_id=w.ready.id),
)
MULTIPART_CALLS: dict[str, Callable[..., Any]] = {
    "part_url": lambda w, **kw: w.part_url(**kw),
    "report_part": lambda w, **kw: w.report_part(**kw),
    "upload_status": lambda w, **kw: w.upload_status(**kw),
}
for call_name, call in MULTIPART_CALLS.items():
    for label, value in [
        ("empty", ""),
        ("None", None),
        ("201", "o" * 201),
        ("nul", "a\x00b"),
        ("int", 42),
    ]:
        case(
            f"{call_name} owner_id={label}",
            InvalidInput,
            400,
            lambda w, v=value, c=call: c(w, owner_id=v),
        )
    for label, value in [
        ("not-a-uuid", "not-a-uuid"),
        ("int", 123),
        ("None", None),
        ("sql", "' OR '1'='1"),
    ]:
        case(
            f"{call_name} document_id={label}",
            InvalidInput,
            400,
            lambda w, v=value, c=call: c(w, document_id=v),
        )
    case(
        f"{call_name} document_id=unknown",
        NotFound,
        404,
        lambda w, c=call: c(w, document_id=uuid.uuid4()),
    )
    case(f"{call_name} another owner's", NotFound, 404, lambda w, c=call: c(w, owner_id="bob"))
for call_name in ("part_url", "report_part"):
    call = MULTIPART_CALLS[call_name]
    for label, value in [
        ("0", 0),
        ("-1", -1),
        ("10001", 10_001),
        ("beyond-the-plan", 3),
        ("True", True),
        ("float", 1.0),
        ("str", "1"),
        ("None", None),
    ]:
        case(
            f"{call_name} part_number={label}",
            InvalidInput,
            400,
            lambda w, v=value, c=call: c(w, part_number=v),
        )
    case(
        f"{call_name} on a single-PUT document",
        InvalidState,
        409,
        lambda w, c=call: c(w, document_id=w.doc.id),
    )
    case(
        f"{call_name} before the upload exists",
        UploadNotReady,
        409,
        lambda w, c=call: c(w, document_id=w.unready.id),
    )
    case(
        f"{call_name} on a deleted document",
        InvalidState,
        409,
        lambda w, c=call: c(w, document_id=w.gone.id),
    )
for label, value in [
    ("short", "ab" * 31),
    ("non-hex", "g" * 64),
    ("base64", base64.b64encode(bytes(32)).decode()),
    ("empty", ""),
    ("None", None),
    ("bytes", bytes(32)),
]:
    case(f"part_url sha256={label}", InvalidInput, 400, lambda w, v=value: w.part_url(sha256=v))
for label, value in [("0", 0), ("max+1", 3601), ("str", "60"), ("True", True)]:
    case(
        f"part_url expires_in={label}",
        InvalidInput,
        400,
        lambda w, v=value: w.part_url(expires_in=v),
    )
case(
    "part_url past the upload window",
    UploadWindowClosed,
    409,
    lambda w: w.part_url(now=datetime.now(UTC) + timedelta(days=8)),
)
for label, value in [
    ("empty", ""),
    ("space", '"a b"'),
    ("nul", "a\x00b"),
    ("newline", "abc\n"),
    ("non-ascii", '"\u00e9"'),
    ("257", "e" * 257),
    ("int", 123),
    ("None", None),
]:
    case(f"report_part etag={label}", InvalidInput, 400, lambda w, v=value: w.report_part(etag=v))
case(
    "report_part of a part without a URL",
    InvalidState,
    409,
    lambda w: w.report_part(part_number=2),
)

# -- set_limit / download expiry -----------------------------------------------------------
for label, value in [
    ("-1", -1),
    ("str", "5"),
    ("float", 5.0),
    ("True", True),
    ("None", None),
    ("2**63", 2**63),
]:
    case(
        f"set_limit limit={label}", InvalidInput, 400, lambda w, v=value: w.set_limit(limit_bytes=v)
    )
for label, value in [("0", 0), ("max+1", 301), ("str", "60")]:
    case(
        f"download expires_in={label}",
        InvalidInput,
        400,
        lambda w, v=value: w.doc_call("download_url", expires_in=v),
    )


#: Documents above 5 MiB are uploaded in parts of 5 MiB (the catalog's largest upload is 10).
MULTIPART_WORLD = {
    "multipart_threshold_bytes": 5 * 1024 * 1024,
    "multipart_part_size_bytes": 5 * 1024 * 1024,
}


@contextlib.contextmanager
def inline_worker_for(settings: Settings) -> Iterator[InlineWorker]:
    relay = Relay(settings)
    pool = make_pool(settings, max_size=2)
    try:
        yield InlineWorker(settings, relay, EventProcessor(settings, pool, Storage(settings)))
    finally:
        pool.close()
        relay.close()


@pytest.fixture(scope="module")
def catalog_world(base_settings: Settings) -> Iterator[tuple[World, Settings]]:
    """One baseline for the whole catalog (cases must change nothing, so they can share it;
    a case that leaked a write would also show up in every later case's snapshot)."""
    token = uuid.uuid4().hex[:10]
    settings = Settings(
        **{
            **base_settings.model_dump(),
            "key_prefix": f"test-{token}/",
            "queue_name": f"q{token}",
            **MULTIPART_WORLD,
        }
    )
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        c.execute(
            "TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas,"
            " s3outbox.document_parts, s3outbox.blobs"
        )
    with psycopg.connect(settings.database_url) as conn, inline_worker_for(settings) as worker:
        yield World(Outbox(settings), conn, worker), settings


@pytest.mark.parametrize(("name", "call", "expected", "status"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input(catalog_world, name, call, expected, status):
    world, settings = catalog_world
    conn = world.conn
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.upload_url_max_ttl_seconds == 3600
    assert settings.download_url_ttl_seconds == 300
    before = snapshot(settings)
    assert before["s3outbox.documents"] and before["s3outbox.quotas"]
    conn.execute("CREATE TEMP TABLE mine (v int) ON COMMIT DROP")
    conn.execute("INSERT INTO mine VALUES (1)")
    try:
        with pytest.raises(OutboxError) as err:
            call(world)
        exc = err.value
        assert type(exc) is expected, f"{name}: {type(exc).__name__}: {exc}"
        assert exc.http_status == status
        body = exc.to_dict()
        assert body["error"] == exc.code and body["message"] == str(exc)
        # The caller's transaction is usable and keeps its own writes.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT v FROM mine").fetchall() == [(1,)]
        conn.commit()
    finally:
        conn.rollback()  # whatever happened, the next case starts clean
    assert snapshot(settings) == before


def test_the_catalog_is_not_vacuous(outbox, conn, settings):
    """The baseline itself works with the good values, so each case fails for its own input."""
    world = World(outbox, conn)
    ticket = world.upload()
    assert ticket.url is not None
    assert world.doc_call("get").id == world.doc.id
    assert world.list().items
    assert world.quota().reserved_bytes == 150
    assert world.set_limit().limit_bytes == 10**6
    conn.commit()


def test_the_multipart_catalog_is_not_vacuous(make_settings, clean_db):
    """The multipart baseline works with the good values, and its deleted document is
    deleting, so each multipart case fails for its own input."""
    settings = make_settings(**MULTIPART_WORLD)
    with psycopg.connect(settings.database_url) as conn, inline_worker_for(settings) as worker:
        world = World(Outbox(settings), conn, worker)
        assert world.ready.multipart is not None and world.ready.multipart.part_count == 2
        assert world.part_url(part_number=2).size == MULTIPART_SIZE - 5 * 1024 * 1024
        assert world.report_part().etag == '"0123456789abcdef0123456789abcdef"'
        status = world.upload_status()
        assert status.ready and [p.part_number for p in status.parts] == [1]
        assert world.upload_status(document_id=world.unready.id).ready is False
        assert world.upload_status(document_id=world.gone.id).document.status == "deleting"
        conn.commit()


def test_boundary_values_are_accepted(outbox, conn, settings):
    world = World(outbox, conn)
    world.upload(filename="a" * settings.max_filename_length, expires_in=3600)
    world.upload(size=1, sha256=sha(b"x"), owner_id="o" * 200, expires_in=1)
    world.upload(content_type="TEXT/PLAIN", sha256=sha(b"y"), size=1)
    world.upload(filename="日本語 ファイル.txt", sha256=sha(b"z"), size=1)
    assert len(world.list(limit=500, status="pending").items) == 4
    assert len(world.list(owner_id="o" * 200).items) == 1
    assert world.list(limit=1).next_cursor is not None
    world.set_limit(limit_bytes=2**63 - 1)
    conn.commit()
    pending = outbox.list(conn, owner_id="alice", limit=500).items
    assert {d.content_type for d in pending} == {"text/plain"}


# -- the error classes ---------------------------------------------------------------------


def _error_classes() -> list[type[OutboxError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, OutboxError)
    ]


def test_every_error_class_has_an_http_status_and_to_dict():
    classes = _error_classes()
    assert len(classes) >= 9
    codes = set()
    for cls in classes:
        assert isinstance(cls.http_status, int) and not isinstance(cls.http_status, bool)
        assert 400 <= cls.http_status <= 599, cls
        assert isinstance(cls.code, str) and cls.code
        if cls is errors.QuotaExceeded:
            exc: OutboxError = cls(used=1, reserved=2, limit=3, requested=4)
        else:
            exc = cls("boom", extra=1)
        body = exc.to_dict()
        assert body["error"] == cls.code
        assert isinstance(body["message"], str) and body["message"]
        assert exc.http_status == cls.http_status
        codes.add(cls.code)
    assert len(codes) == len(classes)  # codes tell the errors apart
    assert {c.http_status for c in classes if c is not OutboxError} <= {
        400,
        404,
        409,
        413,
        415,
        422,
        503,  # the database is not migrated yet, or a migration could not take its lock
        # The upload helper's own (client side, for an app that relays them): it gave up or
        # the API answered an error of no class (502), it was stopped (499).
        499,
        502,
    }
