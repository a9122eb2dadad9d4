"""Multipart uploads with the real processes (relay, ``dramatiq worker.actors``, sweeper as
child processes): the whole flow, and a worker SIGKILLed after CompleteMultipartUpload and
before its transaction committed."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import Processes
from tests.support.multipart import (
    MULTIPART_SETTINGS,
    THREE_PARTS,
    keys_listed,
    request,
    send_parts,
    uploads_of,
)
from tests.support.worker import (
    all_events,
    all_in,
    blob_exists,
    doc_row,
    lock_waiters,
    outbox_idle,
    quota_row,
    wait_procs,
)

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[Any]
#: The handler's lock of the owner's quota row (lifecycle.lock: event, quota, document).
LOCK_QUOTA_SQL = "%FROM s3outbox.quotas q%FOR UPDATE%"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings(**MULTIPART_SETTINGS)


def test_a_worker_killed_between_complete_and_its_commit_ends_available_once(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    """The verify worker lists the parts, completes the upload (the object exists), then
    waits in its transaction for the owner's quota row, which the test holds (a confirm
    does not lock it): SIGKILL it there. Its transaction never commits. The rescue sends the
    event again once the worker is gone; the next attempt finds the upload completed
    (ListParts: NoSuchUpload) and the HEAD decides: available, charged once, the dead
    worker's attempt counted as one failure."""
    processes.start("relay", "worker")
    up = request(outbox, conn, THREE_PARTS)
    wait_procs(
        processes,
        lambda: doc_row(settings, up.id)["upload_id"] is not None,
        timeout=60,
        what="the multipart upload created by a worker",
    )
    send_parts(outbox, conn, up)
    with psycopg.connect(settings.database_url) as holder:
        holder.execute(
            "SELECT 1 FROM s3outbox.quotas WHERE owner_id = 'alice' FOR UPDATE"
        ).fetchone()
        outbox.confirm(conn, owner_id="alice", document_id=up.id)
        conn.commit()
        wait_procs(
            processes,
            lambda: lock_waiters(settings, LOCK_QUOTA_SQL) >= 1,
            timeout=60,
            what="the verify blocked on the quota lock, after its Complete",
        )
        assert blob_exists(settings, up.key)  # completed in storage...
        assert uploads_of(settings, up.key) == []
        processes.kill("worker", signal.SIGKILL)  # ...and killed before its commit
        holder.rollback()
    assert doc_row(settings, up.id)["status"] == DocumentStatus.UPLOADED
    processes.start("worker")
    wait_procs(
        processes,
        lambda: all_in(settings, [up.id], DocumentStatus.AVAILABLE) and outbox_idle(settings),
        timeout=90,
        what="the verify sent again and finished",
    )
    [verify] = [e for e in all_events(settings) if e["topic"] == "verify"]
    assert verify["status"] == "done" and verify["failures"] == 1, verify
    q = quota_row(settings, "alice")
    assert (q["used_bytes"], q["reserved_bytes"]) == (THREE_PARTS, 0)
    assert doc_row(settings, up.id)["charged_bytes"] == THREE_PARTS
    assert keys_listed(settings, up.key) == [up.key]


def test_delete_during_upload_with_the_processes_leaves_nothing(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    processes.start("relay", "worker", "sweeper")
    up = request(outbox, conn, THREE_PARTS)
    wait_procs(
        processes,
        lambda: doc_row(settings, up.id)["upload_id"] is not None,
        timeout=60,
        what="the multipart upload created by a worker",
    )
    send_parts(outbox, conn, up, [1, 2])
    outbox.delete(conn, owner_id="alice", document_id=up.id)
    conn.commit()
    wait_procs(
        processes,
        lambda: all_in(settings, [up.id], DocumentStatus.DELETED),
        timeout=60,
        what="the document deleted",
    )
    assert uploads_of(settings, up.key) == [] and keys_listed(settings, up.key) == []
    assert quota_row(settings, "alice")["reserved_bytes"] == 0
