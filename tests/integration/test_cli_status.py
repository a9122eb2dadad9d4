"""The operator CLI against the real database: ``s3-outbox status`` (table and ``--json``),
``events show ID`` and ``events retry`` (``--dead --topic``, ``--id``), each run as a real
``python -m worker.cli`` subprocess with the test's settings in its environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any
from uuid import UUID

import psycopg
import pytest

from outbox import Outbox, Settings
from outbox.constants import DocumentStatus, EventStatus, Topic
from tests.support.core import ROOT, settings_env, sha256_hex

Conn = psycopg.Connection[Any]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def upload(outbox: Outbox, conn: Conn, owner: str, body: bytes, *, confirm: bool) -> UUID:
    ticket = outbox.request_upload(
        conn,
        owner_id=owner,
        filename=f"{owner}.txt",
        content_type="text/plain",
        size=len(body),
        sha256=sha256_hex(body),
    )
    if confirm:
        outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
    conn.commit()
    return ticket.document.id


def add_dead_event(settings: Settings, topic: str, document_id: UUID, error: str) -> int:
    """An event as the workers leave it after its last failed attempt."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "INSERT INTO s3outbox.events (topic, document_id, status, attempts, failures,"
            " last_error, dispatched_at, finished_at)"
            " VALUES (%s, %s, 'dead', 8, 8, %s, now(), now()) RETURNING id",
            (topic, document_id, error),
        ).fetchone()
    assert row is not None
    return int(row[0])


def event_row(settings: Settings, event_id: int) -> tuple[str, int]:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "SELECT status, failures FROM s3outbox.events WHERE id = %s", (event_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


@pytest.fixture
def seeded(settings: Settings, outbox: Outbox, conn: Conn) -> dict[str, Any]:
    """Two owners: 'heavy' at 95% of a small limit, 'light' with little; events of each kind."""
    outbox.set_limit(conn, owner_id="heavy", limit_bytes=1000)
    conn.commit()
    heavy = upload(outbox, conn, "heavy", b"h" * 950, confirm=True)
    light = upload(outbox, conn, "light", b"light body", confirm=False)
    dead = add_dead_event(settings, Topic.VERIFY, heavy, "storage said 503\nSlowDown")
    return {"heavy": heavy, "light": light, "dead": dead}


def test_status_json_reports_backlog_lag_dead_events_and_quotas(
    settings: Settings, seeded: dict[str, Any]
) -> None:
    result = run_cli(settings, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    counts = {(r["topic"], r["status"]): r["count"] for r in report["events"]}
    # The confirm queued one verify event (pending: no relay runs), plus the dead one.
    assert counts == {("verify", "pending"): 1, ("verify", "dead"): 1}
    assert report["documents"] == {"uploaded": 1, "pending": 1}
    assert report["oldest_pending_seconds"] >= 0
    assert [r["topic"] for r in report["lag_by_topic"]] == ["verify"]

    [dead] = report["dead"]
    assert dead["id"] == seeded["dead"]
    assert dead["document_id"] == str(seeded["heavy"])
    assert dead["last_error"] == "storage said 503\nSlowDown"
    assert dead["failures"] == 8 and dead["finished_at"]

    assert [q["owner_id"] for q in report["quotas"]] == ["heavy", "light"]
    assert report["quotas"][0] == {
        "owner_id": "heavy",
        "limit": 1000,
        "used": 0,
        "reserved": 950,
        "percent": 95.0,
    }
    assert report["quota_totals"]["owners"] == 2
    assert report["quota_totals"]["owners_above_90_percent"] == 1
    assert report["quota_totals"]["reserved"] == 950 + len(b"light body")


def test_status_table_is_aligned_and_readable(settings: Settings, seeded: dict[str, Any]) -> None:
    result = run_cli(settings, "status")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for heading in ("DOCUMENTS", "EVENTS", "DEAD EVENTS", "QUOTAS"):
        assert heading in text

    # The events table: a header, one row per topic and a total, columns aligned.
    block = text.split("EVENTS (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    header, *rows = block
    assert header.split()[:5] == ["topic", "pending", "dispatched", "done", "dead"]
    assert [r.split()[0] for r in rows] == [*(t.value for t in Topic), "total"]
    verify = rows[0].split()
    assert verify[1:5] == ["1", "0", "0", "1"]
    # Numbers are right-aligned under their header: every "dead" cell ends where it ends.
    end = header.index("dead") + len("dead")
    assert all(r[end - 1] in "0123456789" and r[end : end + 1] in (" ", "") for r in rows)

    dead_line = next(
        line for line in text.splitlines() if line.split()[:1] == [str(seeded["dead"])]
    )
    assert "storage said 503 SlowDown" in dead_line  # one line: newlines folded
    assert str(seeded["heavy"]) in dead_line
    heavy_line = next(line for line in text.splitlines() if line.split()[:1] == ["heavy"])
    assert re.search(r"950 B\s+1000 B\s+95\.0%$", heavy_line), heavy_line
    assert "1 at 90% or more" in text


def test_status_on_an_empty_outbox(settings: Settings) -> None:
    result = run_cli(settings, "status")
    assert result.returncode == 0, result.stderr
    assert "DEAD EVENTS: none" in result.stdout
    assert "QUOTAS (0 owners" in result.stdout


def test_events_show_prints_the_event_its_document_and_last_error(
    settings: Settings, seeded: dict[str, Any]
) -> None:
    result = run_cli(settings, "events", "show", str(seeded["dead"]))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"EVENT {seeded['dead']}\n")
    assert re.search(r"^\s+status:\s+dead$", text, re.M)
    assert re.search(r"^\s+topic:\s+verify$", text, re.M)
    assert "last error: storage said 503\nSlowDown" in text
    assert f"DOCUMENT {seeded['heavy']}: uploaded" in text
    assert re.search(r"^\s+owner_id:\s+heavy$", text, re.M)
    # The document's other event (the confirm's verify) is listed, this one starred.
    assert f"*{seeded['dead']}" in text
    assert "EVENTS OF THIS DOCUMENT" in text

    as_json = run_cli(settings, "events", "show", str(seeded["dead"]), "--json")
    assert as_json.returncode == 0, as_json.stderr
    detail = json.loads(as_json.stdout)
    assert detail["event"]["status"] == EventStatus.DEAD
    assert detail["event"]["last_error"] == "storage said 503\nSlowDown"
    assert detail["document"]["status"] == DocumentStatus.UPLOADED
    assert detail["document"]["id"] == str(seeded["heavy"])
    assert [e["status"] for e in detail["document_events"]] == ["pending", "dead"]


def test_events_show_unknown_id_fails(settings: Settings) -> None:
    result = run_cli(settings, "events", "show", "424242")
    assert result.returncode == 1
    assert "no event 424242" in result.stderr


def test_events_retry_dead_by_topic_prints_what_it_did(
    settings: Settings, seeded: dict[str, Any]
) -> None:
    purge = add_dead_event(settings, Topic.PURGE, seeded["light"], "DeleteObject: AccessDenied")

    result = run_cli(settings, "events", "retry", "--dead", "--topic", "purge")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"event {purge} (purge, document {seeded['light']}): dead -> pending, failures 8 -> 0;"
        " last error: DeleteObject: AccessDenied",
        "1 events back to pending",
    ]
    assert event_row(settings, purge) == ("pending", 0)
    assert event_row(settings, seeded["dead"]) == ("dead", 8)  # other topic untouched

    nothing = run_cli(settings, "events", "retry", "--dead", "--topic", "expire")
    assert nothing.returncode == 0 and nothing.stdout.strip() == "0 events back to pending"

    one = run_cli(settings, "events", "retry", "--id", str(seeded["dead"]), "--json")
    assert one.returncode == 0, one.stderr
    [retried] = json.loads(one.stdout)["retried"]
    assert retried["id"] == seeded["dead"] and retried["status"] == "dead"
    assert event_row(settings, seeded["dead"]) == ("pending", 0)

    missing = run_cli(settings, "events", "retry", "--id", "424242")
    assert missing.returncode == 1
    assert "not found or not retryable" in missing.stderr


# -- lag ---------------------------------------------------------------------------------------


def add_event(settings: Settings, document_id: UUID, status: str, age: str, due_in: str) -> None:
    """An event dispatched ``age`` ago (if dispatched) and due ``due_in`` from now: e.g.
    '-1 hour' is an event that should have gone out an hour ago."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO s3outbox.events (topic, document_id, status, attempts, available_at,"
            " dispatched_at) VALUES ('verify', %s, %s, %s, now() + %s::interval,"
            " CASE WHEN %s = 'dispatched' THEN now() - %s::interval END)",
            (document_id, status, int(status == "dispatched"), due_in, status, age),
        )


def collected_lag(settings: Settings) -> dict[str, float]:
    """The lag gauges of the metrics collector (relay and sweeper serve it), as scraped."""
    from worker.metrics import OutboxCollector

    wanted = (
        "s3outbox_oldest_pending_event_age_seconds",
        "s3outbox_oldest_dispatched_event_age_seconds",
    )
    return {
        family.name: family.samples[0].value
        for family in OutboxCollector(settings).collect()
        if family.name in wanted
    }


def test_lag_is_the_age_of_the_oldest_overdue_event_and_zero_when_none_is_due(
    settings: Settings, outbox: Outbox, conn: Conn
) -> None:
    doc = upload(outbox, conn, "lag", b"lag body", confirm=False)
    add_event(settings, doc, "pending", "0", "1 hour")  # scheduled for later: not lag
    nothing_due = {
        "s3outbox_oldest_pending_event_age_seconds": 0.0,
        "s3outbox_oldest_dispatched_event_age_seconds": 0.0,
    }
    assert collected_lag(settings) == nothing_due
    result = run_cli(settings, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["oldest_pending_seconds"], report["oldest_dispatched_seconds"]) == (0, 0)
    assert report["lag_by_topic"] == [
        {
            "topic": "verify",
            "oldest_pending_seconds": 0,
            "oldest_dispatched_seconds": 0,
            "scheduled": 1,
        }
    ]

    # Due an hour ago and never sent; sent half an hour ago and never finished.
    add_event(settings, doc, "pending", "0", "-1 hour")
    add_event(settings, doc, "dispatched", "30 minutes", "-2 hours")
    lag = collected_lag(settings)
    # The ages count from the planted times: a slow test adds seconds, never minutes.
    assert 3600 <= lag["s3outbox_oldest_pending_event_age_seconds"] < 3600 + 300, lag
    assert 1800 <= lag["s3outbox_oldest_dispatched_event_age_seconds"] < 1800 + 300, lag
    result = run_cli(settings, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 3600 <= report["oldest_pending_seconds"] < 3600 + 300, report
    assert 1800 <= report["oldest_dispatched_seconds"] < 1800 + 300, report
    (verify,) = report["lag_by_topic"]
    assert verify["scheduled"] == 1
    assert verify["oldest_pending_seconds"] == report["oldest_pending_seconds"]
    table = run_cli(settings, "status")
    assert table.returncode == 0, table.stderr
    row = next((ln for ln in table.stdout.splitlines() if ln.split()[:1] == ["verify"]), "")
    assert re.search(r"\s1\s+1h0[0-4]m\s+3[0-4]m\d\ds$", row), table.stdout
