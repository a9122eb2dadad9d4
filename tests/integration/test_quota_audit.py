"""`s3-outbox quota audit`: drift between quota rows and documents is reported by a dry run
that changes nothing, fixed per owner under the quota row lock by --fix (a fix that would
break used + reserved <= limit is refused and explained), and a concurrent upload is never
miscounted."""

from __future__ import annotations

import json
import threading

import pytest

from harness.invariants import check_invariants
from tests.support.core import settings_env
from tests.support.repair import available, body_for, db_snapshot, execute, uploaded
from tests.support.util import wait_for
from worker import cli
from worker.ops.quota_audit import audit_quotas


def quota_row(settings, owner):
    rows = execute(
        settings,
        "SELECT limit_bytes, used_bytes, reserved_bytes FROM s3outbox.quotas WHERE owner_id = %s",
        (owner,),
    )
    return rows[0] if rows else None


def test_audit_reports_fix_corrects_and_refuses_what_would_break_the_limit(
    outbox, conn, inline_worker, storage, settings
):
    a = available(outbox, conn, inline_worker, "alice", body_for("a", 1000))
    b = uploaded(outbox, conn, "bob", body_for("b", 700), confirm=False)  # reserved
    d = available(outbox, conn, inline_worker, "dave", body_for("d", 800))
    e = available(outbox, conn, inline_worker, "erin", body_for("e", 300))
    outbox.set_limit(conn, owner_id="carol", limit_bytes=10_000)
    conn.commit()
    sizes = {"alice": a.declared_size, "bob": b.declared_size, "dave": d.declared_size}
    # Drift, made directly.
    execute(
        settings,
        "UPDATE s3outbox.quotas SET used_bytes = used_bytes + 100 WHERE owner_id = 'alice'",
    )
    execute(settings, "UPDATE s3outbox.quotas SET reserved_bytes = 0 WHERE owner_id = 'bob'")
    execute(settings, "UPDATE s3outbox.quotas SET used_bytes = 50 WHERE owner_id = 'carol'")
    execute(  # the documents hold 800 bytes but the limit is 100: not fixable
        settings,
        "UPDATE s3outbox.quotas SET used_bytes = 0, limit_bytes = 100 WHERE owner_id = 'dave'",
    )
    execute(settings, "DELETE FROM s3outbox.quotas WHERE owner_id = 'erin'")

    before = db_snapshot(settings)
    dry = audit_quotas(settings)
    assert db_snapshot(settings) == before
    drift = {x.owner_id: x for x in dry.drift}
    assert set(drift) == {"alice", "bob", "carol", "dave", "erin"}
    assert (drift["alice"].used_diff, drift["alice"].reserved_diff) == (100, 0)
    assert (drift["bob"].used_diff, drift["bob"].reserved_diff) == (0, -sizes["bob"])
    assert drift["carol"].used_diff == 50
    assert drift["dave"].action.startswith("cannot be fixed")
    assert drift["erin"].limit_bytes is None and drift["erin"].charged_sum == e.declared_size
    assert (dry.drift_count, dry.fixed, dry.clean) == (5, 0, False)

    fixed = audit_quotas(settings, fix=True)
    assert (fixed.drift_count, fixed.fixed, fixed.refused) == (5, 4, 1)
    dave = next(x for x in fixed.drift if x.owner_id == "dave")
    assert dave.refused and "above the limit of 100" in dave.action
    assert "Raise the owner's limit to at least 800" in dave.action
    assert quota_row(settings, "alice") == (settings.default_quota_bytes, sizes["alice"], 0)
    assert quota_row(settings, "bob") == (settings.default_quota_bytes, 0, sizes["bob"])
    assert quota_row(settings, "carol") == (10_000, 0, 0)
    assert quota_row(settings, "dave") == (100, 0, 0)  # untouched: refused
    assert quota_row(settings, "erin") == (settings.default_quota_bytes, e.declared_size, 0)

    after = db_snapshot(settings)
    again = audit_quotas(settings, fix=True)
    assert db_snapshot(settings) == after
    assert (again.drift_count, again.fixed, again.refused) == (1, 0, 1)  # only dave remains

    # The operator raises dave's limit; the next fix succeeds and invariant 4 holds again.
    outbox.set_limit(conn, owner_id="dave", limit_bytes=1000)
    conn.commit()
    assert audit_quotas(settings, fix=True).fixed == 1
    assert audit_quotas(settings).drift_count == 0
    report = check_invariants(settings, settled=False, verify_objects=False)
    assert report.ok, report.summary()


def test_fix_recomputes_under_the_lock_so_a_concurrent_upload_is_counted(
    outbox, conn, inline_worker, storage, settings
):
    a = available(outbox, conn, inline_worker, "alice", body_for("a", 1000))
    execute(settings, "UPDATE s3outbox.quotas SET used_bytes = 5000 WHERE owner_id = 'alice'")
    # An upload request holds alice's quota row lock, uncommitted, while the fix runs.
    body = body_for("concurrent", 600)
    outbox.request_upload(
        conn,
        owner_id="alice",
        filename="c.bin",
        content_type="application/octet-stream",
        size=len(body),
        sha256="a" * 64,
    )
    result = {}
    fixer = threading.Thread(
        target=lambda: result.setdefault("report", audit_quotas(settings, fix=True))
    )
    fixer.start()
    wait_for(
        lambda: (
            execute(
                settings,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%FROM s3outbox.quotas WHERE owner_id%%FOR UPDATE%%'",
            )
            == [(1,)]
        ),
        message="the fix to wait for the quota row lock",
    )
    conn.commit()
    fixer.join(timeout=30)
    report = result["report"]
    assert report.fixed == 1
    # Recomputed after the upload committed: its reservation is counted, the charge corrected.
    assert quota_row(settings, "alice") == (settings.default_quota_bytes, a.declared_size, 600)
    assert audit_quotas(settings).drift_count == 0


@pytest.fixture
def cli_env(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def test_cli(cli_env, settings, capsys):
    execute(
        settings,
        "INSERT INTO s3outbox.quotas (owner_id, limit_bytes, used_bytes) VALUES ('zed', 100, 40)",
    )
    assert cli.main(["quota", "audit", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["drift_count"] == 1 and out["drift"][0]["used_diff"] == 40
    assert cli.main(["quota", "audit", "--fix"]) == 0
    text = capsys.readouterr().out
    assert "zed: limit 100; used 40 vs charged 0 (+40)" in text and "fixed 1, refused 0." in text
    assert cli.main(["quota", "audit"]) == 0
    assert "every quota matches its documents." in capsys.readouterr().out
