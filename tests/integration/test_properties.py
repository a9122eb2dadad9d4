"""Property-based tests: a Hypothesis state machine drives the library, the relay, the actors'
event processor and the sweeper against the real servers, in random orders, and checks
DESIGN.md's invariants after every step and once everything has settled.

Time is simulated: the machine keeps a clock ``now`` and passes it as ``now=`` to every call,
so "the URL expired", "the verify deadline passed" and "the dispatch went stale" happen by
moving the clock, never by sleeping; the relay's own rescues follow that clock too. One thing
needs the real clock: presigned URLs. Storage checks a signature's date and lifetime against
its own clock, which no test can move, so a URL is signed on the real clock with a long real
lifetime; the machine decides from the simulated clock whether a PUT is still allowed, and in
addition never sends one after the real signature may have died (``IssuedUrl.usable``). That
real-clock condition only ever removes a PUT from a step (on a very slow run), it never turns
a step's assertion true or false.

Profiles: ``ci`` (default) and ``long`` (``HYPOTHESIS_PROFILE=long``). The run must exercise
what it is about (``COVERAGE``): documents made available, rejected, expired and deleted,
events rescued, actions interleaved into a handler's window; otherwise it fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from hypothesis import HealthCheck, Phase, event
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg_pool import ConnectionPool

from harness.invariants import check_invariants, judge_client
from outbox import (
    LIVE_STATUSES,
    DocumentStatus,
    InvalidState,
    NotFound,
    Outbox,
    QuotaBelowUsage,
    QuotaExceeded,
    Settings,
    UploadWindowClosed,
)
from outbox.presign import object_key
from tests.support.core import put
from tests.support.props import DocModel, InterleavingStorage, IssuedUrl, sha256_hex
from tests.support.worker import lose_messages as drop_queue
from worker.events import EventProcessor, Outcome
from worker.pool import make_pool
from worker.relay import Relay
from worker.sweeper import Sweeper

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
    "print_blob": True,
    # Failing examples are replayed first on the next run; kept where pytest keeps its cache
    # (already ignored by git).
    "database": DirectoryBasedExampleDatabase(
        str(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis")
    ),
}
hsettings.register_profile("ci", max_examples=50, stateful_step_count=30, **_COMMON)
hsettings.register_profile("long", max_examples=300, stateful_step_count=60, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

OWNERS = ("alice", "bob", "carol")
# A small pool, so the same content is requested again (de-duplication, refreshed URLs).
CONTENTS: tuple[tuple[bytes, str], ...] = (
    (b"x", "text/plain"),
    (b"%PDF-1.7\n" + b"p" * 691, "application/pdf"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 6, "image/png"),
    (b"a,b,c\n" + b"1,2,3\n" * 430, "text/csv"),
)
LIMITS = (0, 700, 1600, 3000, 4000, 10_000, None)  # None: exactly used + reserved
TTLS = (120, 600, 3600)  # seconds; also the real lifetime of the signature
MACHINE_SETTINGS: dict[str, Any] = {
    "upload_url_ttl_seconds": 600,
    "upload_url_max_ttl_seconds": 3600,
    "default_quota_bytes": 4000,
    "verify_deadline_seconds": 120.0,
    "retry_base_seconds": 1.0,
    "retry_max_seconds": 60.0,
    "max_failures": 5,
    "redispatch_after_seconds": 300.0,
    "purge_grace_seconds": 5.0,
    "done_retention_seconds": 3600.0,
    "relay_batch_size": 50,
    "sweeper_batch_size": 50,
}
_NEXT: dict[str, set[str]] = {
    "pending": {"uploaded", "available", "expired", "deleting"},
    "uploaded": {"available", "rejected", "deleting"},
    # Waiting on the owner's upload of the same content: ends with it.
    "waiting": {"available", "rejected", "deleting"},
    "available": {"deleting"},
    "rejected": {"deleted"},
    "expired": {"deleted"},
    "deleting": {"deleted"},
    "deleted": set(),
}


def _reachable(status: str) -> set[str]:
    seen, todo = {status}, [status]
    while todo:
        for nxt in _NEXT[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


#: Every status a document in a given status may be found in later.
REACHABLE = {status: _reachable(status) for status in _NEXT}
# What may land between a handler's look at storage and its transaction (None: nothing).
BETWEEN = st.sampled_from([None, None, None, "delete", "confirm", "put", "request", "tight_limit"])
SWEEPER_JOBS = ("expire_abandoned", "rescue_stale", "prune_done")
LIVE = {s.value for s in LIVE_STATUSES}
#: What the runs exercised (printed by the test: ``pytest -s``); also Hypothesis events.
SEEN: Counter[str] = Counter()
#: How an example's first documents start (``seed_documents``): requested only, uploaded
#: and never confirmed, confirmed, confirmed without an upload, the same with a verify that
#: already snoozed, tampered with and confirmed.
SEED_KINDS = (
    "requested",
    "uploaded",
    "confirmed",
    "confirmed_missing",
    "snoozed",
    "tampered",
    # The same content again under a second name, at once (it waits on the upload), or once
    # the first was verified (it shares the blob).
    "second_name",
    "shared",
    # Verified, then the same content uploaded by the next owner: its own URL, then a dedup
    # moves its document to the first blob (across owners).
    "other_owner",
)
#: The shared-content seeds, one of which most examples get on top of ``seeds``.
BLOB_SEEDS = ("shared", "other_owner", "second_name", "both_deleted")
SEED_TTL = 60  # seconds: shorter than any rule's, so a few small moves of the clock expire it
#: What a run must have exercised, or it proved little: the test fails without each of them.
#: Counted in the steps only (not in the final settling, which reaches every end state by
#: itself). With 25 examples of 30 steps (and before ``seed_documents``) a run often had no
#: rescue, rejection, expiry or snooze at all: swarm testing switches rules off per example,
#: and most of these paths need three rules in order. With the seeded starts and 50
#: examples, over 8 runs with other seeds each label came up at least 4 times, most of them
#: dozens of times. Rarer paths (each kind of interleaving, stale attempts, lost messages)
#: are printed (``pytest -s``), not required.
COVERAGE = (
    "reached uploaded",
    "reached available",
    "reached rejected",
    "reached deleting",
    "reached deleted",
    "step: verify done",
    "step: verify snoozed",
    "step: expire done",  # an abandoned upload expired (to expired, or available if it came)
    "step: purge done",
    "events rescued",
    "request: retry",
    "request: wait",
    "request: share",
    # The same content again once its last reference was deleted (the blob deleting, its
    # purge maybe not run yet): a new blob of its own, never the deleting one.
    "request: after the last reference left",
    "delete: one of several references",
    "delete: the last reference",
    "moved to a shared blob",  # a dedup across owners
    "right PUT while pending",
    "upload confirmed",
    "interleaved: any",
)


def note(label: str) -> None:
    SEEN[label] += 1
    with contextlib.suppress(InvalidArgument):  # outside Hypothesis (a replayed case)
        event(label)


@dataclass
class World:
    """What every example shares (boto3 clients cost ~0.1-1 s to build): one settings object
    with the test's own key prefix and queue, the library, storage, a pool and the sweeper.
    Each example starts from empty tables and an empty key prefix."""

    settings: Settings
    outbox: Outbox
    storage: InterleavingStorage
    pool: ConnectionPool[Any]
    processor: EventProcessor
    sweeper: Sweeper
    judge: Any  # the invariant checker's own S3 client

    @classmethod
    def create(cls, base: Settings) -> World:
        token = uuid.uuid4().hex[:10]
        settings = Settings(
            **{
                **base.model_dump(),
                **MACHINE_SETTINGS,
                "key_prefix": f"props-{token}/",
                "queue_name": f"props{token}",
            }
        )
        storage = InterleavingStorage(settings)
        pool = make_pool(settings, max_size=2)
        return cls(
            settings,
            Outbox(settings),
            storage,
            pool,
            EventProcessor(settings, pool, storage),
            Sweeper(settings),
            judge_client(settings),
        )

    def reset(self) -> None:
        self.storage.disarm()
        with psycopg.connect(self.settings.database_url, autocommit=True) as c:
            c.execute(
                "TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas, s3outbox.blobs"
                " RESTART IDENTITY"
            )
        paginator = self.storage.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.settings.s3_bucket, Prefix=self.settings.key_prefix
        ):
            for obj in page.get("Contents", []):
                self.storage.client.delete_object(Bucket=self.settings.s3_bucket, Key=obj["Key"])

    def close(self) -> None:
        self.reset()
        self.sweeper.close()
        self.pool.close()


class OutboxMachine(RuleBasedStateMachine):
    """The whole system, one step at a time, with a simulated clock."""

    world: World  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        world = self.world
        world.reset()
        self.settings = world.settings
        self.outbox = world.outbox
        self.storage = world.storage
        self.processor = world.processor
        self.sweeper = world.sweeper
        self.judge = world.judge
        self.db = psycopg.connect(self.settings.database_url, autocommit=True)
        self.conn = psycopg.connect(self.settings.database_url)  # the web app's
        # A relay per example: it rescues stale events by the clock it is given (``now``).
        self.relay = Relay(self.settings)
        self.relay.broker.flush(self.settings.queue_name)
        self.now = datetime.now(UTC)
        self.grace = timedelta(seconds=self.settings.purge_grace_seconds)
        self.docs: list[DocModel] = []
        self.by_id: dict[uuid.UUID, DocModel] = {}
        self.messages: list[tuple[int, int]] = []  # every (event id, attempt) a relay sent
        self.lost: set[tuple[int, int]] = set()  # messages Redis lost: never delivered
        self.status_after_teardown: dict[uuid.UUID, str] = {}
        self.finished_events: dict[int, str] = {}
        self.rescues: dict[int, int] = {}  # event id -> rescues, as the last check saw it
        self.settling = False  # the steps are over: what happens now is not the steps' coverage

    # -- helpers -------------------------------------------------------------------------

    def status(self, doc: DocModel) -> str:
        row = self.db.execute(
            "SELECT status FROM s3outbox.documents WHERE id = %s", (doc.id,)
        ).fetchone()
        assert row is not None, f"document {doc.id} vanished"
        return str(row[0])

    def quota(self, owner: str) -> tuple[int, int, int]:
        """(limit, used, reserved) as committed; an unknown owner has the default limit."""
        row = self.db.execute(
            "SELECT limit_bytes, used_bytes, reserved_bytes FROM s3outbox.quotas"
            " WHERE owner_id = %s",
            (owner,),
        ).fetchone()
        if row is None:
            return self.settings.default_quota_bytes, 0, 0
        return int(row[0]), int(row[1]), int(row[2])

    def owner_content(self, owner: str, body: bytes) -> list[tuple[Any, ...]]:
        """The owner's live documents of this content: (id, status, created_at, filename,
        key, blob status), oldest first."""
        return self.db.execute(
            "SELECT d.id, d.status, d.created_at, d.filename, d.object_key, b.status"
            " FROM s3outbox.documents d JOIN s3outbox.blobs b ON b.object_key = d.object_key"
            " WHERE d.owner_id = %s AND d.sha256 = %s"
            " AND d.status IN ('pending', 'uploaded', 'waiting', 'available')"
            " ORDER BY d.created_at, d.id",
            (owner, sha256_hex(body)),
        ).fetchall()

    def content_left(self, owner: str, body: bytes) -> bool:
        """Whether a blob of the owner's content went ``deleting`` with its last reference
        (its object maybe not purged yet)."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT FROM s3outbox.documents d"
            " JOIN s3outbox.blobs b ON b.object_key = d.object_key"
            " WHERE d.owner_id = %s AND d.sha256 = %s AND b.status = 'deleting')",
            (owner, sha256_hex(body)),
        ).fetchone()
        assert row is not None
        return bool(row[0])

    def live_on_key(self, key: str) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM s3outbox.documents WHERE object_key = %s"
            " AND status IN ('pending', 'uploaded', 'waiting', 'available')",
            (key,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def pick(self, items: list[Any], index: int) -> Any:
        return items[index % len(items)]

    def usable_urls(self) -> list[IssuedUrl]:
        return [
            u
            for d in self.docs
            for u in d.urls
            if u.usable(self.now, self.settings.purge_grace_seconds)
        ]

    def head_tuple(self, key: str) -> tuple[int, str | None, str | None] | None:
        info = self.storage.head(key)
        return None if info is None else (info.size, info.content_type, info.sha256_b64)

    def waiting_on(self, doc: DocModel) -> list[DocModel]:
        """The documents waiting on ``doc``'s blob (they end with its upload)."""
        return [
            d
            for d in self.docs
            if d is not doc and d.key == doc.key and self.status(d) == DocumentStatus.WAITING
        ]

    def note_put(self, doc: DocModel, status_before: str) -> None:
        doc.last_write = "good"
        doc.good_while_pending = status_before == DocumentStatus.PENDING
        for waiting in self.waiting_on(doc):
            waiting.last_write = "good"

    def note_tamper(self, doc: DocModel) -> None:
        for d in (doc, *self.waiting_on(doc)):
            d.last_write = "bad"
            d.good_while_pending = False
            d.tampered += 1

    def request(
        self, owner: str, content: int, ttl: int, *, name: int = 0, commit: bool = True
    ) -> IssuedUrl | None:
        """request_upload under filename ``name`` (0 or 1), checked against the quota and the
        rules of documents and blobs: the same request again (name, type, size) is a retry of
        the document it made; the owner's content verified is shared by a new available
        document, still uploading is waited on by a new waiting one; else a new upload.
        Returns the upload URL this request issued (None when it issued none)."""
        # Every request at its own instant (a microsecond later), as in life: the blobs it
        # makes are ordered by creation, not by their random keys (which a replay changes).
        self.now += timedelta(microseconds=1)
        body, ctype = CONTENTS[content]
        filename = f"file-{content}-{name}.bin"
        limit, used, reserved = self.quota(owner)
        same = self.owner_content(owner, body)
        retry = next((r for r in same if r[1] != "available" and r[3] == filename), None)
        verified = next((r for r in same if r[5] == "verified"), None)
        uploading = next((r for r in same if r[5] == "uploading"), None)
        expect = "retry" if retry else "share" if verified else "wait" if uploading else "new"
        left = expect == "new" and self.content_left(owner, body)
        try:
            ticket = self.outbox.request_upload(
                self.conn,
                owner_id=owner,
                filename=filename,
                content_type=ctype,
                size=len(body),
                sha256=sha256_hex(body),
                expires_in=ttl,
                now=self.now,
            )
        except QuotaExceeded as exc:
            self.conn.rollback()
            assert expect != "retry", "a retry needs no new reservation"
            assert used + reserved + len(body) > limit, (used, reserved, len(body), limit)
            assert (exc.used, exc.reserved, exc.limit) == (used, reserved, limit)
            return None
        except UploadWindowClosed:
            self.conn.rollback()
            assert retry is not None and retry[1] == DocumentStatus.PENDING
            left = self.window_left(retry[2])
            assert left < min(ttl, 60), f"refused with {left}s of the upload window left"
            note("request: upload window closed")
            return None
        if not commit:
            self.conn.rollback()
            assert self.owner_content(owner, body) == same, "a rolled-back request left a row"
            assert self.quota(owner)[1:] == (used, reserved)
            return None
        self.conn.commit()
        doc_id = ticket.document.id
        note(f"request: {expect}")
        size = len(body)
        if expect == "retry":
            assert retry is not None
            assert ticket.deduplicated and doc_id == retry[0]
            assert (ticket.url is None) == (retry[1] != DocumentStatus.PENDING)
            assert self.quota(owner)[1:] == (used, reserved), "a retry reserved again"
        elif expect == "share":
            assert verified is not None
            assert ticket.deduplicated and ticket.url is None and doc_id != verified[0]
            assert ticket.document.status == DocumentStatus.AVAILABLE
            assert ticket.document.object_key == verified[4]
            assert self.quota(owner)[1:] == (used + size, reserved), "a share is charged"
        elif expect == "wait":
            assert uploading is not None
            assert ticket.deduplicated and ticket.url is None and doc_id != uploading[0]
            assert ticket.document.status == DocumentStatus.WAITING
            assert ticket.document.object_key == uploading[4]
            assert self.quota(owner)[1:] == (used, reserved + size), "a wait is reserved"
        else:
            assert not ticket.deduplicated and ticket.url is not None
            assert used + reserved + size <= limit
            assert self.quota(owner)[1:] == (used, reserved + size)
            # Invariant 8: a new blob's key is the server's, whatever the filename (so never
            # the key of a blob that went deleting with its last reference).
            assert ticket.document.object_key == object_key(self.settings, doc_id)
            if left:
                note("request: after the last reference left")
        if ticket.url is not None:
            # This URL's expiry: the request's instant + the TTL, cut to what remains of the
            # document's upload window (its creation + the longest TTL) for a fresh URL.
            granted = ttl if retry is None else min(ttl, int(self.window_left(retry[2])))
            assert ticket.expires_at == self.now + timedelta(seconds=granted), "not this URL's"
            created = ticket.document.created_at
            assert ticket.expires_at <= created + timedelta(seconds=self.max_ttl)
            # Never shortened: the document's expiry is the latest of its URLs'.
            known = self.by_id.get(doc_id)
            issued = [u.expires_at for u in known.urls] if known is not None else []
            latest = max([ticket.expires_at, *issued])
            assert ticket.document.upload_expires_at == latest, "the expiry is not the latest"
        doc = self.by_id.get(doc_id)
        if doc is None:
            doc = DocModel(doc_id, owner, ticket.document.object_key, body, ctype)
            doc.last_status = ticket.document.status.value
            if expect == "wait":  # what was written to the blob so far is its uploader's
                uploader = self.by_id.get(uploading[0]) if uploading else None
                doc.last_write = uploader.last_write if uploader else "none"
            self.docs.append(doc)
            self.by_id[doc_id] = doc
        if ticket.url is None:
            return None
        granted = (ticket.expires_at - self.now).total_seconds()
        issued = IssuedUrl(
            ticket,
            body,
            ticket.expires_at,
            # The signature dies `granted` real seconds after signing; 30 s margin for the PUT.
            time.monotonic() + granted - 30,
        )
        doc.urls.append(issued)
        return issued

    @property
    def max_ttl(self) -> int:
        return self.settings.upload_url_max_ttl_seconds

    def window_left(self, created_at: datetime) -> float:
        """Seconds left, at the simulated clock, of a pending document's upload window."""
        return (created_at + timedelta(seconds=self.max_ttl) - self.now).total_seconds()

    def put_right(self, url: IssuedUrl) -> None:
        doc = self.by_id[url.ticket.document.id]
        before = self.status(doc)
        resp = put(url.ticket, url.body)
        assert resp.status_code == 200, resp.text
        self.note_put(doc, before)
        note(f"right PUT while {before}")

    def record_dispatched(self) -> None:
        for event_id, attempts in self.db.execute(
            "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched' ORDER BY id"
        ).fetchall():
            if (event_id, attempts) not in self.messages:
                self.messages.append((event_id, attempts))

    def process(self, event_id: int, attempt: int, now: datetime) -> Outcome:
        before = self.db.execute(
            "SELECT status, attempts, topic FROM s3outbox.events WHERE id = %s", (event_id,)
        ).fetchone()
        if before is not None and before[1] != attempt:
            note("message of an older attempt")
        outcome = self.processor.process(event_id, attempt, now=now)
        note(f"outcome {outcome.value}")
        if before is not None and not self.settling:
            note(f"step: {before[2]} {outcome.value}")
        if before is None or before[0] in ("done", "dead"):
            assert outcome == Outcome.SKIPPED, (event_id, before, outcome)
        assert outcome not in (Outcome.RETRY, Outcome.DEAD), self.event_errors()
        return outcome

    def event_errors(self) -> list[tuple[Any, ...]]:
        return self.db.execute(
            "SELECT id, topic, status, failures, last_error FROM s3outbox.events"
            " WHERE failures > 0 OR status = 'dead'"
        ).fetchall()

    # -- where each example starts ----------------------------------------------------------

    @initialize(
        seeds=st.lists(
            st.tuples(st.sampled_from(SEED_KINDS), st.integers(0, len(CONTENTS) - 1)),
            min_size=1,
            max_size=4,
        ),
        # Lost messages twice as often: a rescue needs them (or an unlikely run of steps).
        then=st.sampled_from(
            [None, "sent", "lost_long_ago", "lost_long_ago", "handled", "expired"]
        ),
        # One more seed of shared content in most examples: two seeds of one owner's content
        # in a list of up to four are too rare for the rules of blobs to be exercised every run.
        blob_seed=st.sampled_from((*BLOB_SEEDS, None)),
        blob_content=st.integers(0, len(CONTENTS) - 1),
    )
    def seed_documents(
        self,
        seeds: list[tuple[str, int]],
        then: str | None,
        blob_seed: str | None = None,
        blob_content: int = 0,
    ) -> None:
        """A few documents in states that lead somewhere, made with the rules' own code: a
        30-step example seldom builds a document whose object never comes, or one tampered
        with before its verify, and then also moves the clock past its deadline. Their URLs
        are short (``SEED_TTL``), so most moves of the clock expire them. ``then``: the relay
        has sent their events and no worker has taken them yet, or Redis lost them long
        enough ago that they are stale, or the workers handled them once, or their URLs
        expired and the processes did a round (abandoned ones expired, lost confirms found).
        ``blob_seed``: one more of the shared-content kinds; ``both_deleted`` is ``shared``
        whose two documents are then deleted, one of two references and then the last, and
        the same content asked for again at once (a new blob, never the deleting one)."""
        for k, (kind, content) in enumerate(seeds):
            self.seed_one(OWNERS[k % len(OWNERS)], kind, content, k)
        if blob_seed is not None:
            k = len(seeds)
            kind = "shared" if blob_seed == "both_deleted" else blob_seed
            first = self.seed_one(OWNERS[k % len(OWNERS)], kind, blob_content, k)
            if blob_seed == "both_deleted" and first is not None:
                for doc in [d for d in self.docs if d.key == first.key]:
                    self.delete(self.docs.index(doc), True, again=doc is not first)
        if then in ("sent", "lost_long_ago", "handled"):
            self.relay_once()
        if then == "lost_long_ago":
            self.lose_messages(then_wait=True)
        elif then == "handled":
            self.work(random.Random(len(seeds)), None)
        elif then == "expired":
            self.now += timedelta(seconds=SEED_TTL + 1) + self.grace
            self.workers_round(random.Random(len(seeds)), None)

    def seed_one(self, owner: str, kind: str, content: int, k: int) -> DocModel | None:
        """One seeded document of ``kind`` (``SEED_KINDS``); None when its request issued no
        URL (over quota, or content the owner has already)."""
        issued = self.request(owner, content, SEED_TTL)
        if issued is None:
            return None
        doc: DocModel = self.by_id[issued.ticket.document.id]
        if kind in ("uploaded", "confirmed", "tampered", "shared", "other_owner"):
            self.put_right(issued)
        if kind == "tampered":
            self.tamper_with(doc, "same_size_checksum")
        if kind in (
            "confirmed",
            "confirmed_missing",
            "snoozed",
            "tampered",
            "shared",
            "other_owner",
        ):
            self.outbox.confirm(self.conn, owner_id=owner, document_id=doc.id, now=self.now)
            self.conn.commit()
        if kind in ("snoozed", "shared", "other_owner"):
            # A worker already looked for the object: not there yet, so it snoozed; or
            # there, so the document is available.
            self.handle_events_of(doc)
        if kind in ("second_name", "shared"):
            self.request(owner, content, SEED_TTL, name=1)
        if kind == "other_owner":
            self.seed_other_owner(doc, OWNERS[(k + 1) % len(OWNERS)], content)
        note(f"seeded {kind}")
        return doc

    def handle_events_of(self, doc: DocModel) -> None:
        """The relay sends, and a worker handles, the events of ``doc`` there are now."""
        self.relay.run_once(now=self.now)
        self.record_dispatched()
        for event_id, attempt in self.db.execute(
            "SELECT id, attempts FROM s3outbox.events"
            " WHERE status = 'dispatched' AND document_id = %s ORDER BY id",
            (doc.id,),
        ).fetchall():
            self.process(event_id, attempt, self.now)

    def seed_other_owner(self, first: DocModel, owner: str, content: int) -> None:
        """``owner`` uploads ``first``'s content too: a URL of its own (no existence leak),
        its verify queues a dedup, which moves its document to ``first``'s blob (if that is
        still verified) and purges its own object."""
        issued = self.request(owner, content, SEED_TTL)
        if issued is None:
            return  # over quota, or the owner has this content already: no upload
        doc = self.by_id[issued.ticket.document.id]
        assert doc.key != first.key, "another owner's request got the first owner's blob"
        self.put_right(issued)
        self.outbox.confirm(self.conn, owner_id=owner, document_id=doc.id, now=self.now)
        self.conn.commit()
        self.handle_events_of(doc)  # verify: available, a dedup queued
        self.handle_events_of(doc)  # the dedup (the relay sends what verify queued)

    # -- the web app ---------------------------------------------------------------------

    @rule(
        owner=st.sampled_from(OWNERS),
        content=st.integers(0, len(CONTENTS) - 1),
        ttl=st.sampled_from(TTLS),
        commit=st.sampled_from([True, True, True, True, False]),
        name=st.integers(0, 1),
    )
    def request_upload(
        self, owner: str, content: int, ttl: int, commit: bool, name: int = 0
    ) -> None:
        self.request(owner, content, ttl, name=name, commit=commit)

    @rule(
        owner=st.sampled_from(OWNERS),
        content=st.integers(0, len(CONTENTS) - 1),
        confirm=st.booleans(),
        name=st.integers(0, 1),
    )
    def upload(self, owner: str, content: int, confirm: bool, name: int = 0) -> None:
        """The usual browser flow in one step: request, PUT the right body with the URL just
        issued, maybe confirm that document. (No URL issued: refused over quota, a retry of
        a document already confirmed, or the content is the owner's already: shared or
        waited on; nothing to upload.)"""
        issued = self.request(owner, content, self.settings.upload_url_ttl_seconds, name=name)
        if issued is None:
            return
        # Just issued at self.now with the full TTL: storage and the model both take it.
        assert issued.usable(self.now, self.settings.purge_grace_seconds)
        doc = self.by_id[issued.ticket.document.id]
        self.put_right(issued)
        if confirm and self.status(doc) == DocumentStatus.PENDING:
            self.outbox.confirm(self.conn, owner_id=owner, document_id=doc.id, now=self.now)
            self.conn.commit()
            note("upload confirmed")

    @rule(owner=st.sampled_from(OWNERS), limit=st.sampled_from(LIMITS))
    def set_limit(self, owner: str, limit: int | None) -> None:
        _old, used, reserved = self.quota(owner)
        if limit is None:
            limit = used + reserved
        try:
            quota = self.outbox.set_limit(self.conn, owner_id=owner, limit_bytes=limit)
        except QuotaBelowUsage:
            self.conn.rollback()
            assert used + reserved > limit
            return
        self.conn.commit()
        assert used + reserved <= limit
        assert (quota.limit_bytes, quota.used_bytes, quota.reserved_bytes) == (
            limit,
            used,
            reserved,
        )

    @precondition(lambda self: bool(self.usable_urls()))
    @rule(
        i=st.integers(0, 1000),
        how=st.sampled_from(["right", "same_size", "longer"]),
        late=st.booleans(),
    )
    def put(self, i: int, how: str, late: bool) -> None:
        """PUT with a URL storage still takes; ``late`` prefers one whose document is no
        longer live (the PUT that arrives after the purge)."""
        urls = self.usable_urls()
        if late:
            gone = [u for u in urls if self.status(self.by_id[u.ticket.document.id]) not in LIVE]
            urls = gone or urls
        url: IssuedUrl = self.pick(urls, i)
        if how == "right":
            self.put_right(url)
            return
        key = url.ticket.document.object_key  # the URL's (its document may share another now)
        wrong = {
            "same_size": bytes([url.body[0] ^ 0xFF]) + url.body[1:],
            "longer": url.body + b"!",
        }[how]
        before = self.head_tuple(key)
        resp = put(url.ticket, wrong)
        assert not resp.ok, f"storage took a body that does not match the signed URL ({how})"
        assert self.head_tuple(key) == before, "a refused PUT changed the object"

    @precondition(lambda self: bool(self.docs))
    @rule(i=st.integers(0, 1000), other_owner=st.booleans())
    def confirm(self, i: int, other_owner: bool) -> None:
        doc: DocModel = self.pick(self.docs, i)
        owner = next(o for o in OWNERS if o != doc.owner) if other_owner else doc.owner
        before = self.status(doc)
        try:
            got = self.outbox.confirm(self.conn, owner_id=owner, document_id=doc.id, now=self.now)
        except NotFound:
            self.conn.rollback()
            assert other_owner
            return
        except InvalidState:
            self.conn.rollback()
            assert before not in LIVE
            return
        self.conn.commit()
        assert not other_owner, "another owner confirmed a document"
        expected = DocumentStatus.UPLOADED if before == DocumentStatus.PENDING else before
        assert got.status == expected and self.status(doc) == expected

    @precondition(lambda self: bool(self.docs))
    @rule(
        i=st.integers(0, 1000),
        commit=st.sampled_from([True, True, True, False]),
        shared=st.booleans(),
        again=st.booleans(),
    )
    def delete(self, i: int, commit: bool, shared: bool = False, again: bool = False) -> None:
        """Delete a document (``shared``: one of a blob's several live references, if there
        is one); ``again``: then the owner asks for the same content at once (after the last
        reference, the blob is deleting and its purge not run yet: the losing order of the
        race of a new reference against the last delete, which must get a new blob)."""
        docs = self.docs
        if shared:
            docs = [
                d for d in self.docs if self.status(d) in LIVE and self.live_on_key(d.key) > 1
            ] or self.docs
        doc: DocModel = self.pick(docs, i)
        before = self.status(doc)
        had = self.head_tuple(doc.key)
        others = self.live_on_key(doc.key) - (before in LIVE)
        got = self.outbox.delete(self.conn, owner_id=doc.owner, document_id=doc.id, now=self.now)
        if not commit:
            self.conn.rollback()
            assert self.status(doc) == before
            # Invariant 3: nothing touched storage for a delete that did not commit.
            assert self.head_tuple(doc.key) == had
            return
        self.conn.commit()
        doc.deleted_by_test = True
        if before in LIVE:
            assert got.status == DocumentStatus.DELETING
            note("delete: one of several references" if others else "delete: the last reference")
        elif before in (DocumentStatus.REJECTED, DocumentStatus.EXPIRED):
            assert got.status == DocumentStatus.DELETED
        else:
            assert got.status == before
        # The blob lives exactly while a live document references it (the documents waiting
        # on an upload deleted before it finished were rejected with it).
        left = self.live_on_key(doc.key)
        blob = self.db.execute(
            "SELECT status FROM s3outbox.blobs WHERE object_key = %s", (doc.key,)
        ).fetchone()
        assert blob is not None, f"the blob of {doc.id} vanished"
        assert (blob[0] in ("deleting", "deleted")) == (left == 0), (doc.id, blob[0], left)
        if again and before in LIVE:
            content = next(n for n, (b, _t) in enumerate(CONTENTS) if b == doc.body)
            self.request(doc.owner, content, max(TTLS), name=1)

    @precondition(lambda self: bool(self.docs))
    @rule(i=st.integers(0, 1000), other_owner=st.booleans())
    def download(self, i: int, other_owner: bool) -> None:
        doc: DocModel = self.pick(self.docs, i)
        owner = next(o for o in OWNERS if o != doc.owner) if other_owner else doc.owner
        status = self.status(doc)
        try:
            ticket = self.outbox.download_url(self.conn, owner_id=owner, document_id=doc.id)
        except NotFound:
            assert other_owner
            return
        except InvalidState:
            assert status != DocumentStatus.AVAILABLE
            return
        finally:
            self.conn.rollback()
        # Invariant 2: only the owner, only available; and what it serves is the content.
        assert not other_owner and status == DocumentStatus.AVAILABLE
        got = requests.get(ticket.url, timeout=30)
        assert got.status_code == 200 and got.content == doc.body

    # -- storage behind the system's back ------------------------------------------------

    @precondition(lambda self: bool(self.docs))
    @rule(
        i=st.integers(0, 1000),
        how=st.sampled_from(["same_size", "same_size_checksum", "other_size", "content_type"]),
    )
    def tamper(self, i: int, how: str) -> None:
        """Overwrite a not yet verified document's object with boto3, bypassing the URL."""
        candidates = [
            d
            for d in self.docs
            if self.status(d) in (DocumentStatus.PENDING, DocumentStatus.UPLOADED)
        ]
        if not candidates:
            return
        self.tamper_with(self.pick(candidates, i), how)

    def tamper_with(self, doc: DocModel, how: str) -> None:
        body, ctype = doc.body, doc.content_type
        extra: dict[str, Any] = {}
        if how.startswith("same_size"):
            body = body[:-1] + bytes([body[-1] ^ 0x55])
        elif how == "other_size":
            body = body + b"\x00tampered"
        else:
            ctype = "application/octet-stream"
        if how != "same_size":
            extra["ChecksumAlgorithm"] = "SHA256"
        self.storage.client.put_object(
            Bucket=self.settings.s3_bucket, Key=doc.key, Body=body, ContentType=ctype, **extra
        )
        self.note_tamper(doc)

    # -- the workers ---------------------------------------------------------------------

    @rule()
    def relay_once(self) -> None:
        """One relay round: it sends every due event (fewer than a batch here). It rescues
        stale ones after sending, so what it rescued waits for its next round."""
        due = (
            "SELECT id, rescues FROM s3outbox.events"
            " WHERE status = 'pending' AND available_at <= %s"
        )
        before = dict(self.db.execute(due, (self.now,)).fetchall())
        self.relay.run_once(now=self.now)
        self.record_dispatched()
        left = dict(self.db.execute(due, (self.now,)).fetchall())
        behind = {i for i, rescues in left.items() if i in before or rescues == 0}
        assert not behind, f"the relay left due events behind: {behind}"

    @rule(rnd=st.randoms(use_true_random=False), between=BETWEEN)
    def work(self, rnd: Any, between: str | None) -> None:
        """A relay round, then every message it has sent and nobody finished, in any order;
        ``between`` lands in the first handler that looks at storage."""
        self.relay.run_once(now=self.now)
        self.record_dispatched()
        pending = list(
            self.db.execute(
                "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched'"
            ).fetchall()
        )
        rnd.shuffle(pending)
        fired = self.storage.fired
        for event_id, attempt in pending:
            if (event_id, attempt) in self.lost:
                continue
            if between is not None and self.storage.fired == fired:
                self.arm(event_id, between)
            try:
                self.process(event_id, attempt, self.now)
            finally:
                self.storage.disarm()

    @rule(then_wait=st.booleans())
    def lose_messages(self, then_wait: bool = False) -> None:
        """Redis restarts empty: every message sent and not yet handled is gone (really: the
        queue's keys are deleted, so a rescue, which asks Redis, finds them missing); its event
        stays dispatched until a rescue sends it again (invariant 5; a rescue is never a
        failure, so however often this happens the event is not dead). With ``then_wait``,
        the clock moves past ``redispatch_after_seconds``, so the next relay or sweeper round
        finds them stale."""
        drop_queue(self.settings)
        for event_id, attempt in self.db.execute(
            "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched'"
        ).fetchall():
            self.lost.add((event_id, attempt))
            note("message lost")
        if then_wait:
            self.move_clock("redispatch", 1)

    @rule(rnd=st.randoms(use_true_random=False), between=BETWEEN)
    def workers_round(self, rnd: Any, between: str | None) -> None:
        """What the processes do in one round: every sweeper job, then a relay round and
        its messages."""
        self.sweeper.run_once(now=self.now)
        self.work(rnd, between)

    def arm(self, event_id: int, action: str) -> None:
        row = self.db.execute(
            "SELECT document_id FROM s3outbox.events WHERE id = %s", (event_id,)
        ).fetchone()
        doc = self.by_id.get(row[0]) if row is not None else None
        if doc is not None:
            self.storage.arm(lambda: self.interleave(doc, action))

    @precondition(lambda self: bool(self.messages))
    @rule(
        i=st.integers(0, 1000),
        between=BETWEEN,
        any_message=st.booleans(),
    )
    def run_message(self, i: int, between: str | None, any_message: bool) -> None:
        """Handle one message a relay sent: any of them, maybe again, maybe stale (or, without
        ``any_message``, one whose event is unfinished); with ``between``, another real action
        lands between the handler's look at storage and its transaction."""
        unfinished = {
            event_id
            for (event_id,) in self.db.execute(
                "SELECT id FROM s3outbox.events WHERE status IN ('pending', 'dispatched')"
            ).fetchall()
        }
        choices = [m for m in self.messages if m not in self.lost]
        if not any_message and any(m[0] in unfinished for m in choices):
            choices = [m for m in choices if m[0] in unfinished]
        if not choices:
            return
        event_id, attempt = self.pick(choices, i)
        if between is not None:
            self.arm(event_id, between)
        try:
            self.process(event_id, attempt, self.now)
        finally:
            self.storage.disarm()

    def interleave(self, doc: DocModel, action: str) -> None:
        note(f"interleaved {action}")
        note("interleaved: any")
        if action == "delete":
            self.outbox.delete(self.conn, owner_id=doc.owner, document_id=doc.id, now=self.now)
            self.conn.commit()
            doc.deleted_by_test = True
        elif action == "confirm":
            try:
                self.outbox.confirm(self.conn, owner_id=doc.owner, document_id=doc.id, now=self.now)
                self.conn.commit()
            except InvalidState:
                self.conn.rollback()
        elif action == "put":
            urls = [u for u in doc.urls if u.usable(self.now, self.settings.purge_grace_seconds)]
            if urls:
                self.put_right(urls[-1])
        elif action == "tight_limit":
            self.set_limit(doc.owner, None)
        elif action == "request":
            content = next(n for n, (b, _t) in enumerate(CONTENTS) if b == doc.body)
            self.request(doc.owner, content, max(TTLS), name=1)

    @rule(job=st.sampled_from(SWEEPER_JOBS))
    def sweep(self, job: str) -> None:
        self.sweeper.run_job(job, now=self.now)
        if job == "expire_abandoned":
            overdue = self.db.execute(
                "SELECT count(*) FROM s3outbox.documents WHERE status = 'pending'"
                " AND expire_requested_at IS NULL AND upload_expires_at <= %s",
                (self.now - self.grace,),
            ).fetchone()
            assert overdue is not None and overdue[0] == 0

    # -- time ----------------------------------------------------------------------------

    @rule(
        to=st.sampled_from(["seconds", "url_expiry", "verify_deadline", "redispatch"]),
        seconds=st.integers(1, 90),
        then_work=st.booleans(),
    )
    def advance_clock(self, to: str, seconds: int, then_work: bool = False) -> None:
        """Move the clock; with ``then_work``, the processes do a round at the new time (what
        usually happens when time passes: without it, a 30-step example rarely reaches an
        expiry, a verify deadline or a rescue)."""
        self.move_clock(to, seconds)
        if then_work:
            self.workers_round(random.Random(seconds), None)

    def move_clock(self, to: str, seconds: int) -> None:
        step = timedelta(seconds=seconds)
        if to == "url_expiry":
            future = [u.expires_at for d in self.docs for u in d.urls if u.expires_at >= self.now]
            if future:
                # Just before, or just after the URL + grace (the skew margin).
                target = min(future) + self.grace
                step = target - self.now + timedelta(seconds=seconds % 3 - 1)
        elif to == "verify_deadline":
            step = timedelta(seconds=self.settings.verify_deadline_seconds + seconds)
        elif to == "redispatch":
            step = timedelta(seconds=self.settings.redispatch_after_seconds + seconds)
        self.now += max(step, timedelta(seconds=1))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def system_invariants(self) -> None:
        SEEN["steps checked"] += 1
        report = check_invariants(self.settings, self.judge, settled=False, now=self.now)
        assert report.ok, report.summary()
        assert not self.event_errors(), "a handler failed although every server works"

    @invariant()
    def model_invariants(self) -> None:
        rows = self.db.execute("SELECT id, owner_id, object_key, status FROM s3outbox.documents")
        for doc_id, owner, key, status in rows.fetchall():
            doc = self.by_id.get(doc_id)
            assert doc is not None, f"a document the test never requested: {doc_id}"
            assert owner == doc.owner
            # Invariant 8: the key of a blob made by a document of this content (its own, or
            # one it shares: a second name, or a dedup across owners once verified).
            maker = self.by_id.get(uuid.UUID(key.removeprefix(self.settings.key_prefix)))
            assert maker is not None and maker.body == doc.body, f"{doc_id}: key {key}"
            if key != doc.key:
                note("moved to a shared blob")
                doc.key = key
            if doc.deleted_by_test:
                assert status in ("deleting", "deleted"), f"{doc_id}: deleted, now {status}"
            if doc.last_write == "bad":
                assert status != "available", f"{doc_id}: tampered, yet available"
            # Only moves DESIGN.md's state diagram allows (several may happen in one step).
            assert status in REACHABLE[doc.last_status], f"{doc_id}: {doc.last_status}->{status}"
            if status != doc.last_status:
                note(f"reached {status}")
            doc.last_status = status
        # A finished event stays finished (or is pruned).
        rows = self.db.execute("SELECT id, status, rescues FROM s3outbox.events").fetchall()
        events = {event_id: status for event_id, status, _ in rows}
        for event_id, status in self.finished_events.items():
            assert events.get(event_id, status) == status, f"event {event_id} came back"
        self.finished_events.update((i, s) for i, s in events.items() if s in ("done", "dead"))
        for event_id, _status, rescues in rows:
            if rescues > self.rescues.get(event_id, 0):
                note("events rescued")
            self.rescues[event_id] = rescues

    # -- the end -------------------------------------------------------------------------

    def settle(self) -> datetime:
        """Relay, every actor message and the sweeper, with the clock far ahead, until
        nothing is left to do. Returns the clock it ended with."""
        self.settling = True
        now = self.now + timedelta(days=1)
        step = timedelta(
            seconds=max(self.settings.retry_max_seconds, self.settings.redispatch_after_seconds) + 1
        )
        for _round in range(30):
            self.sweeper.run_job("expire_abandoned", now=now)
            self.sweeper.run_job("rescue_stale", now=now)
            self.relay.run_once(now=now)
            for event_id, attempt in self.db.execute(
                "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched' ORDER BY id"
            ).fetchall():
                if (event_id, attempt) not in self.lost:  # lost ones wait for a rescue
                    self.process(event_id, attempt, now)
            busy = self.db.execute(
                "SELECT (SELECT count(*) FROM s3outbox.events"
                "        WHERE status IN ('pending', 'dispatched'))"
                " + (SELECT count(*) FROM s3outbox.documents"
                "    WHERE status IN ('pending', 'uploaded', 'deleting'))"
            ).fetchone()
            assert busy is not None
            if busy[0] == 0:
                return now
            now += step
        raise AssertionError("the system did not settle in 30 rounds")

    def teardown(self) -> None:
        SEEN["examples"] += 1
        try:
            if not hasattr(self, "relay"):
                return
            now = self.settle()
            report = check_invariants(self.settings, self.judge, settled=True, now=now)
            assert report.ok, report.summary()
            for doc in self.docs:
                status = self.status(doc)
                self.status_after_teardown[doc.id] = status
                note(f"settled {status}")
                if doc.deleted_by_test:
                    assert status == DocumentStatus.DELETED, (doc.id, status)
                elif doc.good_while_pending and doc.last_write == "good":
                    # The right body arrived before anything verified the document.
                    assert status == DocumentStatus.AVAILABLE, (doc.id, status)
                if self.live_on_key(doc.key) == 0:
                    assert self.head_tuple(doc.key) is None, f"{doc.id} {status}: blob left"
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        self.storage.disarm()
        self.relay.broker.flush(self.settings.queue_name)
        self.relay.broker.close()
        self.relay.close()
        self.conn.close()
        self.db.close()


@pytest.fixture
def world(base_settings: Settings) -> Iterator[World]:
    w = World.create(base_settings)
    yield w
    w.close()


@pytest.mark.timeout(1800)
def test_outbox_state_machine(world: World) -> None:
    machine = type("Machine", (OutboxMachine,), {"world": world})
    SEEN.clear()
    profile = hsettings.get_profile(PROFILE)
    run_state_machine_as_test(
        machine,
        settings=hsettings(
            profile, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
        ),
    )
    print(f"\nprofile {PROFILE}:", dict(sorted(SEEN.items())))
    # A run that never got there proved nothing about it.
    assert SEEN["examples"] >= profile.max_examples, dict(SEEN)
    never = [label for label in COVERAGE if SEEN[label] == 0]
    assert not never, f"the run never exercised {never}: {dict(sorted(SEEN.items()))}"


def test_refreshed_url_with_a_shorter_ttl_leaves_no_orphan(world: World) -> None:
    """A case the machine found, replayed step by step: content requested with a long URL,
    then again with a short one. The short expiry must not expire the document while the
    long URL still works, or a PUT with it leaves an object no row owns (invariant 7)."""
    machine = type("Machine", (OutboxMachine,), {"world": world})()
    try:
        machine.request_upload(owner="alice", content=1, ttl=3600, commit=True)
        machine.request_upload(owner="alice", content=1, ttl=120, commit=True)
        (doc,) = machine.docs
        assert len(doc.urls) == 2
        machine.advance_clock(to="url_expiry", seconds=2)  # 1 s past the short URL + grace
        machine.sweep(job="expire_abandoned")
        machine.work(rnd=random.Random(0), between=None)
        machine.system_invariants()
        assert machine.status(doc) == DocumentStatus.PENDING
        (usable,) = machine.usable_urls()
        assert usable is doc.urls[0]
        machine.put(i=0, how="right", late=True)  # the long URL still works
        machine.model_invariants()
    finally:
        machine.teardown()  # settles; the document must end available, with no orphan
    assert machine.status_after_teardown[doc.id] == DocumentStatus.AVAILABLE
