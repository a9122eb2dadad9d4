"""`s3-outbox reconcile`: orphan objects, broken available documents and stuck documents are
found by a dry run that changes nothing, repaired through the outbox by --apply, and a second
--apply does nothing more. Real servers; drift is made behind the library's back."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from harness.invariants import check_invariants
from outbox import DocumentStatus
from tests.support.core import doc_status, settings_env
from tests.support.repair import (
    available,
    body_for,
    bucket_snapshot,
    db_snapshot,
    execute,
    raw_put,
    uploaded,
)
from worker import cli
from worker.ops.reconcile import reconcile
from worker.sweeper import Sweeper


def test_dry_run_reports_apply_repairs_and_a_second_apply_does_nothing(
    outbox, conn, inline_worker, storage, settings
):
    prefix = settings.key_prefix
    # Healthy documents that must come out untouched.
    healthy = available(outbox, conn, inline_worker, "alice", body_for("healthy"))
    pending = uploaded(outbox, conn, "alice", body_for("pending"), confirm=False)
    # Broken: the object was deleted behind our back / replaced with other bytes.
    missing_body, changed_body = body_for("missing", 1500), body_for("changed", 2500)
    missing = available(outbox, conn, inline_worker, "alice", missing_body)
    changed = available(outbox, conn, inline_worker, "alice", changed_body)
    storage.delete(missing.object_key)
    raw_put(storage, changed.object_key, b"not what was verified")
    # Stuck: uploaded whose verify event vanished, deleting whose purge event vanished.
    stuck_up = uploaded(outbox, conn, "bob", body_for("stuck-uploaded"))
    stale = settings.verify_deadline_seconds + settings.redispatch_after_seconds + 60
    execute(
        settings,
        "UPDATE s3outbox.documents SET confirmed_at = confirmed_at - make_interval(secs => %s)"
        " WHERE id = %s",
        (stale, stuck_up.id),
    )
    execute(settings, "DELETE FROM s3outbox.events WHERE document_id = %s", (stuck_up.id,))
    stuck_del = available(outbox, conn, inline_worker, "bob", body_for("stuck-deleting"))
    outbox.delete(conn, owner_id="bob", document_id=stuck_del.id)
    conn.commit()
    execute(settings, "DELETE FROM s3outbox.events WHERE document_id = %s", (stuck_del.id,))
    # Orphans: no row (UUID key and a stray name), and a late PUT after an upload expired.
    no_row, stray = f"{prefix}{uuid.uuid4()}", f"{prefix}stray.bin"
    raw_put(storage, no_row)
    raw_put(storage, stray)
    late = outbox.request_upload(
        conn,
        owner_id="carol",
        filename="late.bin",
        content_type="application/octet-stream",
        size=10,
        sha256="0" * 64,
    )
    conn.commit()
    # Expired so long ago that its purge's re-check (after the longest upload) is past too:
    # the late object is one the re-check missed.
    long_ago = settings.max_upload_seconds + settings.purge_grace_seconds + 3600
    execute(
        settings,
        "UPDATE s3outbox.documents SET upload_expires_at = now() - make_interval(secs => %s)"
        " WHERE id = %s",
        (long_ago, late.document.id),
    )
    Sweeper(settings).run_once()
    inline_worker.drain()
    assert doc_status(settings, late.document.id) == "expired"
    raw_put(storage, late.document.object_key)

    db_before, bucket_before = db_snapshot(settings), bucket_snapshot(settings, storage)
    dry = reconcile(settings, horizon=0, storage=storage)
    assert db_snapshot(settings) == db_before
    assert bucket_snapshot(settings, storage) == bucket_before

    orphans = {o.key: o for o in dry.orphans}
    assert set(orphans) == {no_row, stray, late.document.object_key, stuck_del.object_key}
    assert orphans[late.document.object_key].document_status == "expired"
    assert orphans[stuck_del.object_key].action.startswith("left to the purge")
    assert {o.action for k, o in orphans.items() if k != stuck_del.object_key} == {
        "would queue a purge"
    }
    broken = {b.document_id: b for b in dry.broken}
    assert set(broken) == {missing.id, changed.id}
    assert broken[missing.id].problem == "object missing from storage"
    assert broken[changed.id].problem.startswith("size mismatch")
    assert {(s.document_id, s.missing_event) for s in dry.stuck} == {
        (stuck_up.id, "verify"),
        (stuck_del.id, "purge"),
    }
    # healthy, pending, changed, stuck_up, stuck_del, and the three orphans.
    assert dry.objects_listed == 8
    assert (dry.to_repair, dry.repaired, dry.clean) == (7, 0, False)

    used_before = outbox.quota(conn, owner_id="alice").used_bytes
    applied = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert (applied.to_repair, applied.repaired, applied.events_queued) == (7, 7, 7)
    assert applied.documents_rejected == 2
    assert applied.bytes_released == len(missing_body) + len(changed_body)
    quota = outbox.quota(conn, owner_id="alice")
    conn.commit()
    assert quota.used_bytes == used_before - len(missing_body) - len(changed_body)
    assert doc_status(settings, missing.id) == "rejected"
    assert doc_status(settings, changed.id) == "rejected"

    after_first = db_snapshot(settings)
    again = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert db_snapshot(settings) == after_first
    assert (again.to_repair, again.repaired, again.events_queued) == (0, 0, 0)
    assert again.clean

    inline_worker.drain()
    for key in (no_row, stray, late.document.object_key, changed.object_key):
        assert storage.head(key) is None, key
    assert doc_status(settings, stuck_del.id) == "deleted"
    assert storage.head(stuck_del.object_key) is None
    assert doc_status(settings, stuck_up.id) == "available"
    for doc in (healthy, pending, stuck_up):
        assert storage.head(doc.object_key) is not None
    assert doc_status(settings, healthy.id) == "available"
    assert doc_status(settings, pending.id) == "pending"

    final = reconcile(settings, horizon=0, storage=storage)
    assert (final.orphan_count, final.broken_count, final.stuck_count) == (0, 0, 0)
    report = check_invariants(settings, settled=True)
    assert report.ok, report.summary()


def test_objects_newer_than_the_horizon_are_left_alone(settings, storage):
    key = f"{settings.key_prefix}{uuid.uuid4()}"
    raw_put(storage, key)
    fresh = reconcile(settings, apply=True, storage=storage)  # default horizon: one hour
    assert (fresh.orphan_count, fresh.young_unowned, fresh.events_queued) == (0, 1, 0)
    assert execute(settings, "SELECT count(*) FROM s3outbox.events") == [(0,)]
    # Two hours later the same object is an orphan.
    later = fresh.now + timedelta(hours=2)
    old = reconcile(settings, now=later, storage=storage)
    assert [o.key for o in old.orphans] == [key]
    assert old.young_unowned == 0


def test_an_orphan_purge_never_deletes_a_live_documents_object(
    outbox, conn, inline_worker, storage, settings
):
    doc = available(outbox, conn, inline_worker, "alice", body_for("live"))
    # An orphan purge naming a live document's key (a row that became live after the scan).
    execute(
        settings,
        "INSERT INTO s3outbox.events (topic, document_id, object_key) VALUES ('purge', %s, %s)",
        (uuid.uuid4(), doc.object_key),
    )
    inline_worker.drain()
    assert storage.head(doc.object_key) is not None
    assert execute(settings, "SELECT status FROM s3outbox.events WHERE object_key IS NOT NULL") == [
        ("done",)
    ]
    assert doc_status(settings, doc.id) == DocumentStatus.AVAILABLE


def test_concurrent_applies_queue_one_purge_per_orphan(settings, storage):
    keys = [f"{settings.key_prefix}{uuid.uuid4()}" for _ in range(20)]
    for key in keys:
        raw_put(storage, key)
    start = threading.Barrier(3)

    def run() -> int:
        start.wait()
        return reconcile(settings, apply=True, horizon=0, storage=storage).events_queued

    with ThreadPoolExecutor(3) as pool:
        queued = list(pool.map(lambda _: run(), range(3)))
    assert sum(queued) == len(keys)
    rows = execute(settings, "SELECT object_key, count(*) FROM s3outbox.events GROUP BY object_key")
    assert sorted(rows) == sorted((k, 1) for k in keys)


def test_pagination_over_thousands_of_keys(settings, storage):
    n = 2600
    keys = [f"{settings.key_prefix}{uuid.uuid4()}" for _ in range(n)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: raw_put(storage, k, b"x"), keys))

    dry = reconcile(settings, horizon=0, storage=storage)
    assert (dry.objects_listed, dry.orphan_count) == (n, n)
    assert len(dry.orphans) == dry.sample_limit == 1000  # counts exact, lists bounded
    small = reconcile(settings, horizon=0, storage=storage, page_size=700, sample_limit=10)
    assert (small.objects_listed, small.orphan_count, len(small.orphans)) == (n, n, 10)

    applied = reconcile(settings, apply=True, horizon=0, storage=storage)
    assert applied.events_queued == n
    queued = execute(settings, "SELECT object_key FROM s3outbox.events")
    assert sorted(k for (k,) in queued) == sorted(keys)
    assert reconcile(settings, apply=True, horizon=0, storage=storage).events_queued == 0
    for i in range(0, n, 1000):  # leave no litter on servers that outlive the session
        storage.client.delete_objects(
            Bucket=storage.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
        )


@pytest.fixture
def cli_env(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def run_cli(capsys: Any, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_cli(cli_env, settings, storage, capsys):
    key = f"{settings.key_prefix}{uuid.uuid4()}"
    raw_put(storage, key)
    code, out = run_cli(capsys, "reconcile", "--horizon", "0", "--json")
    report = json.loads(out)
    assert code == 1 and report["orphan_count"] == 1 and report["orphans"][0]["key"] == key
    assert report["clean"] is False and report["applied"] is False

    code, out = run_cli(capsys, "reconcile", "--horizon", "0", "--apply")
    assert code == 0
    assert "purge queued" in out and "applied: 1 repairs" in out

    code, out = run_cli(capsys, "reconcile", "--horizon", "0")
    assert code == 0
    assert "purge already queued" in out and "nothing to repair." in out

    code, out = run_cli(capsys, "reconcile")  # default horizon: the new object is left alone
    assert code == 0 and "orphan objects: 0" in out
