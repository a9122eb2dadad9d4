"""Least-privilege storage credentials (README "Storage permissions"), on a SeaweedFS of this
module's own whose identities have restricted actions (``-s3.config``):

- ``web``: Read + Write on the key prefix (the web app's signing credentials: PutObject,
  GetObject; SeaweedFS's Write also allows DeleteObject, which AWS can split off);
- ``worker``: Read + Write + List on the key prefix (the workers' and the sweeper's);
- ``no_list``: the worker's without List; ``no_read``: the worker's without Read.

What SeaweedFS 4.48 answers: without Read, HeadObject answers 403 (any key); without List,
HeadObject of a missing key still answers 404 (AWS answers 403 there), but listing the
prefix, which the workers use to tell a missing bucket from a missing key, answers 403.

The start check (``worker.permissions``) in the sweeper and the Dramatiq worker processes
runs as real subprocesses; a 403 during work is postponed and counted, never "missing".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from outbox import DocumentStatus, Outbox, Settings
from outbox.presign import make_client
from tests.support.core import ROOT, InlineWorker, child_env, dispatched_events, put
from tests.support.require import missing
from tests.support.util import wait_for
from tests.support.worker import (
    after,
    body_of,
    confirm,
    doc_row,
    drain_at,
    events_of,
    quota_row,
    request,
)
from worker.embedded.process import DevStackError, free_ports
from worker.embedded.seaweed import SeaweedServer
from worker.events import EventProcessor, Outcome
from worker.permissions import StorageAccessRefused, check_access
from worker.pool import make_pool
from worker.processes import command
from worker.relay import Relay
from worker.storage import Storage
from worker.sweeper import Sweeper

#: Every identity is limited to this prefix of the bucket; each test's keys live under it.
PREFIX = "perm/"
BUCKET = "s3outbox"
ACTIONS = {
    "web": ["Read", "Write"],
    "worker": ["Read", "Write", "List"],
    "no_list": ["Read", "Write"],
    "no_read": ["Write", "List"],
}
SECRET = uuid.uuid4().hex


def identity(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "credentials": [{"accessKey": f"{name}-key", "secretKey": f"{name}-{SECRET}"}],
        "actions": [f"{action}:{BUCKET}/{PREFIX}*" for action in ACTIONS[name]],
    }


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS with the identities above, stopped by PID after the module."""
    try:
        SeaweedServer.binary()
    except DevStackError as exc:
        missing(str(exc))
    server = SeaweedServer(
        tmp_path_factory.mktemp("seaweed-perm"),
        bucket=BUCKET,
        identities=[identity(name) for name in ACTIONS],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def as_identity(
    make_settings: Callable[..., Settings], settings: Settings, restricted: SeaweedServer
) -> Callable[..., Settings]:
    """Settings for this test on the restricted server as one identity (the database, Redis
    and queue of the test); all share one key prefix under ``PREFIX``."""

    def make(name: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "s3_endpoint_url": restricted.url,
            "s3_bucket": restricted.bucket,
            "key_prefix": PREFIX + settings.key_prefix,
        }
        if name == "admin":
            values["s3_access_key_id"] = restricted.access_key
            values["s3_secret_access_key"] = restricted.secret_key
        else:
            values["s3_access_key_id"] = f"{name}-key"
            values["s3_secret_access_key"] = f"{name}-{SECRET}"
        return make_settings(**{**values, **overrides})

    return make


def head_status(settings: Settings, key: str) -> int:
    try:
        make_client(settings, settings.s3_endpoint_url).head_object(
            Bucket=settings.s3_bucket, Key=key
        )
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return 200


def list_status(settings: Settings) -> int:
    try:
        make_client(settings, settings.s3_endpoint_url).list_objects_v2(
            Bucket=settings.s3_bucket, Prefix=settings.key_prefix, MaxKeys=1
        )
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return 200


def postponed_count(topic: str) -> float:
    value = REGISTRY.get_sample_value(
        "s3outbox_events_postponed_total", {"topic": topic, "reason": "access_denied"}
    )
    return value or 0.0


def unreachable_endpoint() -> str:
    (port,) = free_ports(1)  # nothing listens there
    return f"http://127.0.0.1:{port}"


# -- what the store answers ------------------------------------------------------------------


def test_seaweedfs_answers_as_its_identities_allow(as_identity: Callable[..., Settings]) -> None:
    admin = as_identity("admin")
    existing = f"{admin.key_prefix}{uuid.uuid4()}"
    make_client(admin, admin.s3_endpoint_url).put_object(
        Bucket=admin.s3_bucket, Key=existing, Body=b"x"
    )
    absent = f"{admin.key_prefix}{uuid.uuid4()}"
    outside = f"elsewhere/{uuid.uuid4()}"
    # name -> (HEAD existing, HEAD absent, list the prefix, HEAD outside the prefix)
    expected = {
        "worker": (200, 404, 200, 403),
        "web": (200, 404, 403, 403),
        "no_list": (200, 404, 403, 403),  # AWS: 403 for the absent key
        "no_read": (403, 403, 200, 403),
    }
    seen = {
        name: (
            head_status(s, existing),
            head_status(s, absent),
            list_status(s),
            head_status(s, outside),
        )
        for name in expected
        for s in [as_identity(name)]
    }
    assert seen == expected


# -- least privilege runs everything ---------------------------------------------------------


def test_least_privilege_credentials_run_the_whole_lifecycle(
    as_identity: Callable[..., Settings],
) -> None:
    """The web app signs with ``web``, the workers and sweeper use ``worker``: upload,
    verify, download, delete and purge, and an abandoned upload's expiry all work."""
    web, work = as_identity("web"), as_identity("worker")
    assert check_access(Storage(work)) is True
    outbox = Outbox(web)
    pool = make_pool(work, max_size=2)
    relay = Relay(work)
    worker = InlineWorker(work, relay, EventProcessor(work, pool, Storage(work)))
    sweeper = Sweeper(work)
    try:
        with psycopg.connect(web.database_url) as conn:
            body = body_of(3000)
            ticket = request(outbox, conn, "alice", body)
            assert put(ticket, body).status_code == 200
            confirm(outbox, conn, "alice", ticket.document.id)
            worker.drain()
            assert doc_row(web, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
            url = outbox.download_url(conn, owner_id="alice", document_id=ticket.document.id)
            assert requests.get(url.url, timeout=30).content == body
            outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
            conn.commit()
            worker.drain()
            assert doc_row(web, ticket.document.id)["status"] == DocumentStatus.DELETED
            admin = as_identity("admin")
            assert head_status(admin, ticket.document.object_key) == 404

            abandoned = request(outbox, conn, "alice", body_of(500))
            expires = doc_row(web, abandoned.document.id)["upload_expires_at"]
            now = after(expires, web.purge_grace_seconds + 1)
            assert sweeper.run_job("expire_abandoned", now=now) == 1
            drain_at(work, relay, worker.processor, now)
            assert doc_row(web, abandoned.document.id)["status"] == DocumentStatus.EXPIRED
            assert quota_row(web, "alice")["reserved_bytes"] == 0
    finally:
        sweeper.close()
        relay.close()
        pool.close()


# -- the start check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "says"),
    [
        ("no_list", {}, "lack s3:ListBucket on arn:aws:s3:::s3outbox"),
        ("no_read", {}, "lack s3:GetObject on arn:aws:s3:::s3outbox/perm/"),
        ("worker", {"s3_secret_access_key": "wrong"}, "refuses the credentials"),
        ("admin", {"s3_bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
        # A bucket these credentials have no rights on looks the same, missing or not.
        ("worker", {"s3_bucket": "other-bucket"}, "lack s3:ListBucket on arn:aws:s3:::other-"),
    ],
    ids=["no_list", "no_read", "wrong_secret", "no_bucket", "another_bucket"],
)
def test_the_start_check_names_what_is_missing(
    as_identity: Callable[..., Settings], name: str, overrides: dict[str, Any], says: str
) -> None:
    settings = as_identity(name, **overrides)
    with pytest.raises(StorageAccessRefused) as err:
        check_access(Storage(settings))
    assert says in str(err.value), str(err.value)
    assert SECRET not in str(err.value) and "wrong" not in str(err.value)


def test_the_start_check_passes_over_unreachable_storage(
    as_identity: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = as_identity("worker", s3_endpoint_url=unreachable_endpoint())
    assert check_access(Storage(settings)) is False
    assert "could not check the storage permissions" in caplog.text


# -- a 403 during work -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "topic"),
    [("no_list", "expire"), ("no_read", "expire"), ("no_read", "verify")],
)
def test_a_403_during_work_is_postponed_and_counted_never_taken_for_missing(
    as_identity: Callable[..., Settings], name: str, topic: str
) -> None:
    """Issue 10 item 4: an abandoned upload whose HeadObject answers 403 (here: a missing
    object under credentials without List or Read) must not expire, fail or die: it is
    postponed, counted under reason="access_denied", its reservation kept; with the right
    credentials it ends as it should. Likewise a verify of an object that is there."""
    web, refused = as_identity("web"), as_identity(name, max_failures=2)
    outbox = Outbox(web)
    pool = make_pool(refused, max_size=2)
    relay = Relay(refused)
    processor = EventProcessor(refused, pool, Storage(refused))
    sweeper = Sweeper(refused)
    try:
        with psycopg.connect(web.database_url) as conn:
            body = body_of(800)
            ticket = request(outbox, conn, "alice", body)
            doc_id = ticket.document.id
            if topic == "verify":
                assert put(ticket, body).status_code == 200
                confirm(outbox, conn, "alice", doc_id)
                now = after(doc_row(web, doc_id)["confirmed_at"], 3600)  # past the deadline
            else:
                now = after(doc_row(web, doc_id)["upload_expires_at"], 3600)
                assert sweeper.run_job("expire_abandoned", now=now) == 1
        before = postponed_count(topic)
        rounds = 3 * refused.max_failures
        for _ in range(rounds):
            relay.run_once(now=now)
            ((event_id, attempt),) = dispatched_events(web, topic)
            assert processor.process(event_id, attempt, now=now) == Outcome.POSTPONED
            (event,) = events_of(web, doc_id, topic)
            assert (event["status"], event["failures"]) == ("pending", 0)
            assert event["last_error"].startswith("storage unavailable (access_denied)")
            now = event["available_at"]
        assert postponed_count(topic) - before == rounds
        doc = doc_row(web, doc_id)
        expected = DocumentStatus.PENDING if topic == "expire" else DocumentStatus.UPLOADED
        assert (doc["status"], doc["reserved_bytes"]) == (expected, len(body))
    finally:
        sweeper.close()
        relay.close()
        pool.close()

    # The operator grants the permission: the event ends as it should have.
    work = as_identity("worker")
    pool = make_pool(work, max_size=2)
    relay = Relay(work)
    try:
        drain_at(work, relay, EventProcessor(work, pool, Storage(work)), now)
    finally:
        relay.close()
        pool.close()
    doc = doc_row(web, doc_id)
    if topic == "expire":
        assert doc["status"] == DocumentStatus.EXPIRED
        assert doc["reason"] == "upload URL expired and no object was uploaded"
        assert quota_row(web, "alice")["reserved_bytes"] == 0
    else:
        assert doc["status"] == DocumentStatus.AVAILABLE
        assert quota_row(web, "alice")["used_bytes"] == len(body)
    assert events_of(web, doc_id, topic)[0]["status"] == "done"


# -- the start check in real processes -------------------------------------------------------


def run(argv: list[str], settings: Settings, timeout: float = 120) -> tuple[int, str]:
    """Run a command in its own process group; (exit code, stdout + stderr). On timeout the
    group is killed (a Dramatiq worker has children) and the test fails."""
    proc = subprocess.Popen(
        argv,
        env=child_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(argv)} still running after {timeout}s:\n{out}")
    return proc.returncode, out


def sweeper_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", "sweeper", *args]


@pytest.mark.parametrize(
    ("name", "overrides", "says"),
    [
        ("no_list", {}, "s3:ListBucket"),
        ("no_read", {}, "s3:GetObject"),
        ("worker", {"s3_secret_access_key": "wrong"}, "refuses the credentials"),
    ],
    ids=["no_list", "no_read", "wrong_secret"],
)
def test_the_sweeper_refuses_to_start_naming_the_permission(
    as_identity: Callable[..., Settings], name: str, overrides: dict[str, Any], says: str
) -> None:
    code, out = run(sweeper_cmd(), as_identity(name, **overrides))
    assert code == 2, out
    assert says in out and 'README "Storage permissions"' in out, out
    assert "sweeper started" not in out


def test_the_sweeper_starts_with_least_privilege_or_unreachable_storage(
    as_identity: Callable[..., Settings],
) -> None:
    code, out = run(sweeper_cmd("--once"), as_identity("worker"))
    assert code == 0 and "sweeper: 0 rows" in out, out
    assert "could not check" not in out
    down = as_identity("worker", s3_endpoint_url=unreachable_endpoint())
    code, out = run(sweeper_cmd("--once"), down)
    assert code == 0 and "sweeper: 0 rows" in out, out
    assert "could not check the storage permissions (storage unavailable: connection)" in out


def test_dramatiq_workers_refuse_to_start_naming_the_permission(
    as_identity: Callable[..., Settings],
) -> None:
    """The worker process's boot check stops Dramatiq as a whole, as the schema check does."""
    code, out = run(command("worker", processes=2, threads=1), as_identity("no_list"))
    assert code != 0, out
    assert "lack s3:ListBucket" in out, out


def test_a_dramatiq_worker_starts_when_storage_is_unreachable(
    as_identity: Callable[..., Settings], tmp_path: Path
) -> None:
    """An outage at start is survived: the check is logged and skipped, the worker boots."""
    down = as_identity("worker", s3_endpoint_url=unreachable_endpoint())
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command("worker", processes=1, threads=1),
            env=child_env(down),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "Worker process is ready for action" in log.read_text() or proc.poll(),
            timeout=90,
            message="the worker to boot",
        )
        text = log.read_text()
        assert proc.poll() is None, text
        assert "could not check the storage permissions" in text, text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
