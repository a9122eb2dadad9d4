"""The judge (harness/invariants.py) judged: each violation it must find is planted on the real
servers, behind the system's back, and exactly its check must fail, after a control run on the
same state without it passed.

The state every test starts from (``world``) is a settled system made the usual way (presigned
PUT over HTTP, confirm, relay and event processor): alice and bob each own an available
document with the same bytes (so their keys can be swapped without changing what each object
holds), carol owns a pending document whose object is already uploaded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest

from harness.invariants import CheckName, InvariantReport, check_invariants, judge_client
from outbox import DocumentStatus, Outbox, Settings
from outbox.models import Document
from tests.support.core import InlineWorker, put
from tests.support.worker import after, body_of, db_now, query, request, s3_client, upload
from worker.storage import Storage

Conn = psycopg.Connection[Any]


@dataclass
class World:
    settings: Settings
    judge: Any  # the judge's boto3 client
    s3: Any  # another client, to change storage behind everyone's back
    alice: Document
    bob: Document
    carol: Document  # pending, its object uploaded
    body: bytes  # alice's and bob's content
    carol_body: bytes

    def check(self, *, settled: bool = True, **kwargs: Any) -> InvariantReport:
        return check_invariants(self.settings, self.judge, settled=settled, **kwargs)

    def passes(self, *, settled: bool = True, **kwargs: Any) -> InvariantReport:
        """The control: the checks run and pass (before anything was planted)."""
        report = self.check(settled=settled, **kwargs)
        assert report.ok, report.summary()
        assert {c.name for c in report.checks} >= _expected_names(settled)
        return report

    def fails(self, *names: CheckName, settled: bool = True, **kwargs: Any) -> InvariantReport:
        """Exactly the checks ``names`` fail."""
        report = self.check(settled=settled, **kwargs)
        assert report.failed() == set(names), report.summary()
        return report

    def put_raw(self, key: str, body: bytes, content_type: str, **extra: Any) -> None:
        self.s3.put_object(
            Bucket=self.settings.s3_bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            **extra,
        )

    def sql(self, statement: str, params: Any = None) -> None:
        query(self.settings, statement, params)


def _expected_names(settled: bool) -> set[str]:
    names = {CheckName.QUOTA, CheckName.CHARGES, CheckName.KEYS}
    names |= {CheckName.OBJECTS, CheckName.METADATA}
    if settled:
        names |= {CheckName.EVENTS, CheckName.WAITING, CheckName.ORPHANS}
    return set(names)


@pytest.fixture
def world(settings: Settings, outbox: Outbox, conn: Conn, inline_worker: InlineWorker) -> World:
    body = body_of(1000)
    alice = upload(outbox, conn, "alice", body).document
    bob = upload(outbox, conn, "bob", body).document
    carol_body = body_of(700)
    carol_ticket = request(outbox, conn, "carol", carol_body)
    assert put(carol_ticket, carol_body).status_code == 200
    inline_worker.drain()
    docs = {d.id: outbox.get(conn, owner_id=d.owner_id, document_id=d.id) for d in (alice, bob)}
    conn.commit()
    assert {d.status for d in docs.values()} == {DocumentStatus.AVAILABLE}
    assert alice.object_key != bob.object_key
    w = World(
        settings,
        judge_client(settings),
        s3_client(settings),
        docs[alice.id],
        docs[bob.id],
        carol_ticket.document,
        body,
        carol_body,
    )
    report = w.passes()
    assert report.objects_listed == 3
    assert report.documents == {"available": 2, "pending": 1}
    return w


def _orphan_key(settings: Settings) -> str:
    return f"{settings.key_prefix}{uuid.uuid4()}"


# -- 7: objects without a live row ---------------------------------------------------------


def test_an_object_without_a_row_is_an_orphan_once_settled(world: World) -> None:
    key = _orphan_key(world.settings)
    world.put_raw(key, b"nobody's", "text/plain")
    # While things move, an object may precede its row's commit: reported, not failed.
    report = world.passes(settled=False)
    assert report.orphan_objects == [key]
    report = world.fails(CheckName.ORPHANS)
    assert report.check(CheckName.ORPHANS).problems == [key]


@pytest.mark.parametrize("status", ["rejected", "expired", "deleted"])
def test_an_object_whose_row_left_the_live_states_is_an_orphan(world: World, status: str) -> None:
    carol = world.carol
    # The row moves on consistently (its reservation released); only the blob stays.
    world.sql(
        "UPDATE s3outbox.documents SET status = %s, reserved_bytes = 0 WHERE id = %s",
        (status, carol.id),
    )
    world.sql(
        "UPDATE s3outbox.quotas SET reserved_bytes = reserved_bytes - %s WHERE owner_id = %s",
        (carol.declared_size, carol.owner_id),
    )
    report = world.fails(CheckName.ORPHANS)
    assert report.orphan_objects == [carol.object_key]


# -- 1 and 3: an available document's object -----------------------------------------------


def test_a_missing_object_of_an_available_document(world: World) -> None:
    world.s3.delete_object(Bucket=world.settings.s3_bucket, Key=world.alice.object_key)
    report = world.fails(CheckName.OBJECTS)
    (problem,) = report.check(CheckName.OBJECTS).problems
    assert str(world.alice.id) in problem and "missing" in problem


def _other_bytes(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0x55])


@pytest.mark.parametrize(
    ("how", "stored_checksum"),
    [
        ("other_bytes", True),  # the stored SHA-256 differs
        ("other_bytes", False),  # no stored SHA-256: the judge hashes the body
        ("other_size", True),
        ("content_type", True),
    ],
)
def test_an_object_unlike_its_row(world: World, how: str, stored_checksum: bool) -> None:
    doc = world.alice
    body, ctype = world.body, doc.content_type
    if how == "other_bytes":
        body = _other_bytes(body)
    elif how == "other_size":
        body = body + b"\x00"
    else:
        ctype = "text/html"
    extra = {"ChecksumAlgorithm": "SHA256"} if stored_checksum else {}
    world.put_raw(doc.object_key, body, ctype, **extra)
    head = world.s3.head_object(
        Bucket=world.settings.s3_bucket, Key=doc.object_key, ChecksumMode="ENABLED"
    )
    assert ("ChecksumSHA256" in head) == stored_checksum  # the path the judge must take
    report = world.fails(CheckName.OBJECTS)
    (problem,) = report.check(CheckName.OBJECTS).problems
    assert str(doc.id) in problem
    # Without looking at objects, nothing is seen.
    world.passes(verify_objects=False)


def test_the_right_bytes_without_a_stored_checksum_pass(world: World) -> None:
    """The control of the hashing path: same bytes, no stored SHA-256, the body is hashed."""
    world.put_raw(world.alice.object_key, world.body, world.alice.content_type)
    head = world.s3.head_object(
        Bucket=world.settings.s3_bucket, Key=world.alice.object_key, ChecksumMode="ENABLED"
    )
    assert "ChecksumSHA256" not in head
    world.passes()


@pytest.mark.parametrize(
    "metadata",
    [{"ContentEncoding": "gzip"}, {"CacheControl": "max-age=31536000"}, {"ContentLanguage": "de"}],
)
def test_an_available_object_with_response_affecting_metadata(
    world: World, metadata: dict[str, str]
) -> None:
    doc = world.alice
    world.put_raw(
        doc.object_key, world.body, doc.content_type, ChecksumAlgorithm="SHA256", **metadata
    )
    report = world.fails(CheckName.METADATA)
    (problem,) = report.check(CheckName.METADATA).problems
    assert str(doc.id) in problem and next(iter(metadata)) in problem


# -- 4: quotas -----------------------------------------------------------------------------


_ONE_MORE = {
    "used_bytes": "UPDATE s3outbox.quotas SET used_bytes = used_bytes + 1 WHERE owner_id = %s",
    "reserved_bytes": "UPDATE s3outbox.quotas SET reserved_bytes = reserved_bytes + 1"
    " WHERE owner_id = %s",
}


@pytest.mark.parametrize("column", sorted(_ONE_MORE))
def test_quota_drift(world: World, column: str) -> None:
    # alice uses what she was charged, carol reserves what she declared; one byte more of
    # either is drift.
    owner = "alice" if column == "used_bytes" else "carol"
    world.sql(_ONE_MORE[column], (owner,))
    report = world.fails(CheckName.QUOTA)
    (problem,) = report.check(CheckName.QUOTA).problems
    assert problem.startswith(f"owner {owner}:")
    assert report.quota_mismatches == 1


def test_over_the_limit_cannot_be_planted(world: World) -> None:
    """used + reserved > limit is refused by the schema's CHECK (the last line of defence),
    so the judge's bound check can never see it; what can be planted is drift (above)."""
    with pytest.raises(psycopg.errors.CheckViolation):
        world.sql(
            "UPDATE s3outbox.quotas SET limit_bytes = used_bytes + reserved_bytes - 1"
            " WHERE owner_id = 'alice'"
        )
    world.passes()


def test_documents_holding_bytes_without_a_quota_row(world: World) -> None:
    world.sql("DELETE FROM s3outbox.quotas WHERE owner_id = 'bob'")
    report = world.fails(CheckName.QUOTA)
    assert report.check(CheckName.QUOTA).problems == [
        "owner bob: documents hold bytes but no quota row"
    ]


# -- 1 and 4: charges and reservations -----------------------------------------------------


def test_a_charge_on_an_unverified_document(world: World) -> None:
    carol = world.carol
    # The quota follows (no drift): only the charge is where it must not be.
    size = carol.declared_size
    world.sql(
        "UPDATE s3outbox.documents SET charged_bytes = %s, reserved_bytes = 0 WHERE id = %s",
        (size, carol.id),
    )
    world.sql(
        "UPDATE s3outbox.quotas SET used_bytes = used_bytes + %s,"
        " reserved_bytes = reserved_bytes - %s WHERE owner_id = 'carol'",
        (size, size),
    )
    report = world.fails(CheckName.CHARGES)
    (problem,) = report.check(CheckName.CHARGES).problems
    assert str(carol.id) in problem and "pending" in problem


def test_a_reservation_on_an_available_document(world: World) -> None:
    alice = world.alice
    size = alice.declared_size
    world.sql("UPDATE s3outbox.documents SET reserved_bytes = %s WHERE id = %s", (size, alice.id))
    world.sql(
        "UPDATE s3outbox.quotas SET reserved_bytes = reserved_bytes + %s WHERE owner_id = 'alice'",
        (size,),
    )
    report = world.fails(CheckName.CHARGES)
    (problem,) = report.check(CheckName.CHARGES).problems
    assert str(alice.id) in problem and "available" in problem


# -- 8: keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        "not-a-uuid",
        "report.pdf",
        "UPPER",  # the canonical UUID in upper case
        "braces",  # {uuid}
        "nested",  # another folder inside the prefix
        "suffix",  # a UUID followed by more
    ],
)
def test_an_object_key_that_is_not_prefix_plus_uuid(world: World, tail: str) -> None:
    ident = str(uuid.uuid4())
    tail = {
        "UPPER": ident.upper(),
        "braces": "{" + ident + "}",
        "nested": f"sub/{ident}",
        "suffix": f"{ident}.pdf",
    }.get(tail, tail)
    key = f"{world.settings.key_prefix}{tail}"
    world.put_raw(key, b"x", "text/plain")
    report = world.fails(CheckName.KEYS, settled=False)
    (problem,) = report.check(CheckName.KEYS).problems
    assert repr(key) in problem


def test_a_row_whose_key_is_not_prefix_plus_its_id(world: World) -> None:
    carol = world.carol
    world.sql(
        "UPDATE s3outbox.documents SET object_key = %s WHERE id = %s",
        (f"{world.settings.key_prefix}{carol.id}.pdf", carol.id),
    )
    report = world.fails(CheckName.KEYS, settled=False)
    (problem,) = report.check(CheckName.KEYS).problems
    assert str(carol.id) in problem


def test_a_key_that_is_another_documents(world: World) -> None:
    """alice's and bob's rows swap keys: each object still matches the row that now names
    it (same bytes), each key is still the prefix + a UUID, and every object has a live row;
    only the rule "a document's key is the prefix + its own id" tells."""
    a, b = world.alice, world.bob
    with psycopg.connect(world.settings.database_url) as c:
        swap = "UPDATE s3outbox.documents SET object_key = %s WHERE id = %s"
        c.execute(swap, (f"{a.object_key}.swap", a.id))
        c.execute(swap, (a.object_key, b.id))
        c.execute(swap, (b.object_key, a.id))
    report = world.fails(CheckName.KEYS)
    problems = report.check(CheckName.KEYS).problems
    assert len(problems) == 2
    assert {str(a.id), str(b.id)} == {p.split()[1] for p in problems}


def test_a_key_of_another_id_that_no_document_has(world: World) -> None:
    carol = world.carol
    other = f"{world.settings.key_prefix}{uuid.uuid4()}"
    world.sql("UPDATE s3outbox.documents SET object_key = %s WHERE id = %s", (other, carol.id))
    # carol's object, under her own id, has no row any more either: an orphan once settled.
    report = world.fails(CheckName.KEYS, settled=False)
    assert report.orphan_objects == [carol.object_key]


# -- 5: events and documents left waiting --------------------------------------------------


def _verify_event(world: World, doc: Document) -> int:
    (row,) = query(
        world.settings,
        "SELECT id, status FROM s3outbox.events WHERE document_id = %s AND topic = 'verify'",
        (doc.id,),
    )
    assert row["status"] == "done"
    return int(row["id"])


@pytest.mark.parametrize("status", ["pending", "dispatched"])
def test_an_unfinished_due_event(world: World, status: str) -> None:
    event_id = _verify_event(world, world.alice)
    world.sql(
        "UPDATE s3outbox.events SET status = %s, available_at = now(), finished_at = NULL"
        " WHERE id = %s",
        (status, event_id),
    )
    world.passes(settled=False)  # while things move, an unfinished event is normal
    report = world.fails(CheckName.EVENTS)
    (problem,) = report.check(CheckName.EVENTS).problems
    assert problem.startswith(f"event {event_id} verify {status}")
    assert report.lost_events == 1


def test_a_pending_event_is_late_only_once_due(world: World) -> None:
    event_id = _verify_event(world, world.alice)
    now = db_now(world.settings)
    world.sql(
        "UPDATE s3outbox.events SET status = 'pending', available_at = %s, finished_at = NULL"
        " WHERE id = %s",
        (after(now, 600), event_id),
    )
    world.passes(now=now)  # a follow-up scheduled for later is not late
    world.passes()  # nor by the database's clock
    world.fails(CheckName.EVENTS, now=after(now, 601))


def test_a_document_left_uploaded(world: World) -> None:
    world.sql("UPDATE s3outbox.documents SET status = 'uploaded' WHERE id = %s", (world.carol.id,))
    world.passes(settled=False)
    world.fails(CheckName.WAITING)


def test_a_pending_document_past_its_url(world: World) -> None:
    expires: datetime = world.carol.upload_expires_at
    world.passes(now=after(expires, -1))
    report = world.fails(CheckName.WAITING, now=after(expires, 1))
    assert report.check(CheckName.WAITING).problems == [f"document {world.carol.id} is pending"]


# -- the prefix ----------------------------------------------------------------------------


def test_objects_outside_the_prefix_are_ignored_inside_judged(world: World) -> None:
    prefix = world.settings.key_prefix
    assert prefix.endswith("/")
    outside = [
        f"{prefix[:-1]}-other/{uuid.uuid4()}",  # shares the prefix's text, not its folder
        f"{prefix[:-1]}",
        f"elsewhere/{prefix}not-a-uuid",
    ]
    try:
        for key in outside:
            world.put_raw(key, b"not ours", "text/plain")
        report = world.passes()
        assert report.objects_listed == 3
        inside = _orphan_key(world.settings)
        world.put_raw(inside, b"ours", "text/plain")
        report = world.fails(CheckName.ORPHANS)
        assert report.orphan_objects == [inside]
        assert report.objects_listed == 4
    finally:
        for key in outside:
            world.s3.delete_object(Bucket=world.settings.s3_bucket, Key=key)


# -- the judge's own tools -----------------------------------------------------------------


def test_the_judge_does_not_take_the_workers_storage(world: World, storage: Storage) -> None:
    with pytest.raises(TypeError, match="boto3 S3 client"):
        check_invariants(world.settings, storage, settled=True)  # type: ignore[arg-type]
    # Without a client it builds its own.
    report = check_invariants(world.settings, settled=True)
    assert report.ok, report.summary()
