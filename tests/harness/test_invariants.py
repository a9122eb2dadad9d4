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
from collections.abc import Callable
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
    names = {CheckName.QUOTA, CheckName.CHARGES, CheckName.KEYS, CheckName.BLOBS}
    names |= {CheckName.OBJECTS, CheckName.METADATA}
    if settled:
        names |= {CheckName.EVENTS, CheckName.WAITING, CheckName.ORPHANS}
    return set(names)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    """alice and bob keep an object each (no dedup across owners), so their keys can be
    swapped, and each object judged on its own."""
    return make_settings(dedup_across_owners=False)


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
    world.sql(  # and its blob, purged as far as the database knows
        "UPDATE s3outbox.blobs SET status = 'deleted' WHERE object_key = %s", (carol.object_key,)
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


def _move_to_new_blob(world: World, doc: Document, key: str, status: str) -> None:
    """Give ``doc`` a new blob row at ``key`` (same content, ``status``) and retire its old
    one, as far as the database knows (the old object stays)."""
    world.sql(
        "INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)"
        " SELECT %s, size, sha256, content_type, %s FROM s3outbox.blobs WHERE object_key = %s",
        (key, status, doc.object_key),
    )
    world.sql("UPDATE s3outbox.documents SET object_key = %s WHERE id = %s", (key, doc.id))
    world.sql(
        "UPDATE s3outbox.blobs SET status = 'deleted' WHERE object_key = %s", (doc.object_key,)
    )


def test_an_uploading_row_whose_key_is_not_prefix_plus_its_id(world: World) -> None:
    carol = world.carol
    _move_to_new_blob(world, carol, f"{world.settings.key_prefix}{carol.id}.pdf", "uploading")
    report = world.fails(CheckName.KEYS, settled=False)
    problems = report.check(CheckName.KEYS).problems
    assert len(problems) == 2  # the blob's key, and the uploading document's
    assert all(str(carol.id) in p for p in problems)


def test_documents_may_swap_blobs_of_the_same_content(world: World) -> None:
    """alice's and bob's rows swap keys: each document references a verified blob of its
    content, uploaded by a document (the other's), which is what sharing a blob is (a dedup
    across owners does the same): the judge accepts it."""
    a, b = world.alice, world.bob
    with psycopg.connect(world.settings.database_url) as c:
        swap = "UPDATE s3outbox.documents SET object_key = %s WHERE id = %s"
        c.execute(swap, (b.object_key, a.id))
        c.execute(swap, (a.object_key, b.id))
    world.passes()


def test_a_blob_whose_key_is_no_documents_id(world: World) -> None:
    """alice's object copied to a key of a UUID no document has, her row moved to it, her
    own blob retired and its object deleted: every object matches and has a live row, every
    key is the prefix + a UUID; only the rule "a blob's key is the prefix + the id of the
    document that uploaded it" tells."""
    alice, bucket = world.alice, world.settings.s3_bucket
    other = f"{world.settings.key_prefix}{uuid.uuid4()}"
    world.s3.copy_object(
        Bucket=bucket,
        Key=other,
        CopySource={"Bucket": bucket, "Key": alice.object_key},
        ChecksumAlgorithm="SHA256",
    )
    _move_to_new_blob(world, alice, other, "verified")
    world.s3.delete_object(Bucket=bucket, Key=alice.object_key)
    report = world.fails(CheckName.KEYS)
    (problem,) = report.check(CheckName.KEYS).problems
    assert repr(other) in problem


# -- 1, 3 and 7: documents and blobs -------------------------------------------------------


def test_a_live_blob_no_live_document_references(world: World) -> None:
    """carol's row leaves its live state (reservation released) but her blob stays
    uploading: a blob kept alive by nothing."""
    carol = world.carol
    world.sql(
        "UPDATE s3outbox.documents SET status = 'expired', reserved_bytes = 0 WHERE id = %s",
        (carol.id,),
    )
    world.sql(
        "UPDATE s3outbox.quotas SET reserved_bytes = reserved_bytes - %s WHERE owner_id = %s",
        (carol.declared_size, carol.owner_id),
    )
    report = world.fails(CheckName.BLOBS, settled=False)
    (problem,) = report.check(CheckName.BLOBS).problems
    assert carol.object_key in problem and "uploading with 0 live documents" in problem


@pytest.mark.parametrize("status", ["deleting", "deleted", "uploading"])
def test_an_available_document_on_a_blob_not_verified(world: World, status: str) -> None:
    """The row says the blob is being (or was) purged, or never verified, while an
    available document references it: what invariant 3 forbids (its object would go)."""
    alice = world.alice
    world.sql(
        "UPDATE s3outbox.blobs SET status = %s WHERE object_key = %s", (status, alice.object_key)
    )
    report = world.fails(CheckName.BLOBS, settled=False)
    problems = report.check(CheckName.BLOBS).problems
    assert any(str(alice.id) in p and f"({status})" in p for p in problems), problems


def test_a_waiting_document_with_no_upload_to_wait_on(world: World, outbox: Outbox) -> None:
    carol = world.carol
    with psycopg.connect(world.settings.database_url) as c:
        waiting = request(outbox, c, "carol", world.carol_body, filename="copy.pdf").document
    assert waiting.status == DocumentStatus.WAITING
    world.passes(settled=False)  # waiting on carol's upload in progress: as it should
    world.sql("UPDATE s3outbox.documents SET status = 'available' WHERE id = %s", (carol.id,))
    world.sql(
        "UPDATE s3outbox.blobs SET status = 'uploading' WHERE object_key = %s", (carol.object_key,)
    )
    report = world.fails(CheckName.BLOBS, CheckName.CHARGES, settled=False)
    assert any(
        str(waiting.id) in p and "no document uploading it" in p
        for p in report.check(CheckName.BLOBS).problems
    )


def test_a_document_that_declares_other_content_than_its_blob(world: World) -> None:
    bob = world.bob
    world.sql("UPDATE s3outbox.documents SET sha256 = %s WHERE id = %s", ("ab" * 32, bob.id))
    report = world.fails(CheckName.BLOBS)
    (problem,) = report.check(CheckName.BLOBS).problems
    assert str(bob.id) in problem and "ab" * 32 in problem


def test_a_shared_object_unlike_its_blob_names_every_document(world: World) -> None:
    """bob shares alice's blob (his own retired and purged), then the shared object is
    overwritten: one object, one problem naming both documents."""
    alice, bob = world.alice, world.bob
    world.sql(
        "UPDATE s3outbox.documents SET object_key = %s WHERE id = %s", (alice.object_key, bob.id)
    )
    world.sql(
        "UPDATE s3outbox.blobs SET status = 'deleted' WHERE object_key = %s", (bob.object_key,)
    )
    world.s3.delete_object(Bucket=world.settings.s3_bucket, Key=bob.object_key)
    world.passes()
    world.put_raw(alice.object_key, _other_bytes(world.body), alice.content_type)
    report = world.fails(CheckName.OBJECTS)
    (problem,) = report.check(CheckName.OBJECTS).problems
    assert str(alice.id) in problem and str(bob.id) in problem


def test_a_blob_left_deleting_once_settled(world: World) -> None:
    carol = world.carol
    world.sql(
        "UPDATE s3outbox.documents SET status = 'deleted', reserved_bytes = 0 WHERE id = %s",
        (carol.id,),
    )
    world.sql(
        "UPDATE s3outbox.quotas SET reserved_bytes = reserved_bytes - %s WHERE owner_id = %s",
        (carol.declared_size, carol.owner_id),
    )
    world.sql(
        "UPDATE s3outbox.blobs SET status = 'deleting' WHERE object_key = %s", (carol.object_key,)
    )
    world.s3.delete_object(Bucket=world.settings.s3_bucket, Key=carol.object_key)
    world.passes(settled=False)
    report = world.fails(CheckName.WAITING)
    assert report.check(CheckName.WAITING).problems == [f"blob {carol.object_key} is deleting"]


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
