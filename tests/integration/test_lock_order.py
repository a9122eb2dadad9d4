"""Lock order: the library locks an owner's quota row before their document rows, in every
call, so concurrent calls of one owner wait for each other instead of deadlocking."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from outbox import DocumentStatus, Outbox, Settings
from tests.support.api import body_of, quota_row, request, sql
from tests.support.util import wait_for


def test_delete_while_a_transaction_refreshes_the_same_upload_does_not_deadlock(
    outbox: Outbox, settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    first, second = body_of(100), body_of(200)
    pending = request(outbox, conn, second, owner="o")
    conn.commit()
    # One web request, one transaction: an upload of other content (the owner's quota row is
    # now locked until commit) ...
    request(outbox, conn, first, owner="o")
    errors: list[BaseException] = []

    def delete_elsewhere() -> None:
        with psycopg.connect(settings.database_url) as other:
            try:
                outbox.delete(other, owner_id="o", document_id=pending.document.id)
                other.commit()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=delete_elsewhere)
    thread.start()
    try:
        # ... while another request deletes the pending upload and has to wait for a lock ...
        wait_for(
            lambda: sql(
                settings,
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ("%s3outbox.quotas%",),
            ),
            timeout=15,
            message="the delete to wait for the owner's quota lock",
        )
        # ... then the first transaction asks for the pending content again (a fresh URL).
        again = request(outbox, conn, second, owner="o")
        conn.commit()
    finally:
        thread.join(timeout=30)
    assert not errors, errors
    assert again.document.id == pending.document.id
    status = outbox.get(conn, owner_id="o", document_id=pending.document.id).status
    assert status == DocumentStatus.DELETING
    assert quota_row(settings, "o") == (settings.default_quota_bytes, 0, len(first))
