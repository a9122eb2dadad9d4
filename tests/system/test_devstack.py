"""The dev/test servers themselves: real PostgreSQL, Redis (Valkey) and S3 (SeaweedFS)."""

from __future__ import annotations

import base64
import hashlib
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
import pytest
import redis
import requests

from tests.support.util import wait_for
from worker.embedded import DevStackError, EmbeddedStack, StackUrls
from worker.embedded.seaweed import SeaweedPorts, SeaweedServer
from worker.embedded.valkey import ValkeyServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_client(urls: StackUrls) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=urls.s3_endpoint_url,
        aws_access_key_id=urls.access_key,
        aws_secret_access_key=urls.secret_key,
        region_name=urls.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def test_env_has_every_setting(stack_urls: StackUrls) -> None:
    env = stack_urls.env()
    assert env["S3OUTBOX_DATABASE_URL"] == stack_urls.database_url
    assert env["S3OUTBOX_REDIS_URL"] == stack_urls.redis_url
    assert env["S3OUTBOX_S3_ENDPOINT_URL"] == stack_urls.s3_endpoint_url
    assert env["S3OUTBOX_S3_ACCESS_KEY_ID"] == stack_urls.access_key
    assert env["S3OUTBOX_S3_SECRET_ACCESS_KEY"] == stack_urls.secret_key
    assert env["S3OUTBOX_S3_BUCKET"] == stack_urls.bucket


def test_sql_query(stack_urls: StackUrls) -> None:
    with psycopg.connect(stack_urls.database_url) as conn:
        row = conn.execute("SELECT 1 + 1, current_setting('server_encoding')").fetchone()
    assert row == (2, "UTF8")


def test_redis_ping(stack_urls: StackUrls) -> None:
    with redis.Redis.from_url(stack_urls.redis_url) as client:
        assert client.ping()


def test_presigned_put_checks_type_length_and_checksum(stack_urls: StackUrls) -> None:
    s3 = s3_client(stack_urls)
    body = b"hello, s3-outbox\n" * 100
    wrong = bytes(reversed(body))  # same length, other bytes
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
    key = f"test/{uuid.uuid4()}"
    url = s3.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": stack_urls.bucket,
            "Key": key,
            "ContentType": "text/plain",
            "ContentLength": len(body),
            "ChecksumSHA256": checksum,
        },
        ExpiresIn=300,
    )
    headers = {"Content-Type": "text/plain", "x-amz-checksum-sha256": checksum}

    refused = requests.put(url, data=wrong, headers=headers, timeout=30)
    assert refused.status_code in (400, 403), refused.text
    refused = requests.put(
        url, data=body, headers={**headers, "Content-Type": "image/png"}, timeout=30
    )
    assert refused.status_code == 403, refused.text
    refused = requests.put(url, data=body + b"x", headers=headers, timeout=30)
    assert refused.status_code in (400, 403), refused.text
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=stack_urls.bucket, Key=key)

    ok = requests.put(url, data=body, headers=headers, timeout=30)
    assert ok.status_code == 200, ok.text
    head = s3.head_object(Bucket=stack_urls.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "text/plain"
    assert head["ChecksumSHA256"] == checksum
    s3.delete_object(Bucket=stack_urls.bucket, Key=key)


def test_postgres_restart_keeps_data(embedded_stack: EmbeddedStack) -> None:
    pg = embedded_stack.postgres
    table = f"devstack_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES ('kept')")
    old_pid, old_port = pg.pid, pg.port

    pg.restart(fast=True)

    assert pg.pid != old_pid and pg.port == old_port
    assert not psutil.pid_exists(old_pid or 0)
    with psycopg.connect(pg.url, autocommit=True) as conn:
        assert conn.execute(f"SELECT v FROM {table}").fetchall() == [("kept",)]
        conn.execute(f"DROP TABLE {table}")


def test_postgres_survives_sigkill(embedded_stack: EmbeddedStack) -> None:
    pg = embedded_stack.postgres
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS devstack_crash (v int)")
        conn.execute("INSERT INTO devstack_crash VALUES (1)")
    pg.kill()
    assert not pg.running
    pg.start()  # crash recovery
    with psycopg.connect(pg.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM devstack_crash").fetchone() == (1,)
        conn.execute("DROP TABLE devstack_crash")


def test_valkey_restart_loses_or_keeps_data(embedded_stack: EmbeddedStack) -> None:
    vk = embedded_stack.valkey
    with redis.Redis.from_url(vk.url) as client:
        client.set("devstack:key", "v")
    vk.restart(lose_data=False)
    with redis.Redis.from_url(vk.url) as client:
        assert client.get("devstack:key") == b"v"
    vk.restart(lose_data=True)
    with redis.Redis.from_url(vk.url) as client:
        assert client.get("devstack:key") is None
        client.set("devstack:key", "v")
    vk.flushall()
    with redis.Redis.from_url(vk.url) as client:
        assert client.dbsize() == 0


def _tree(pid: int | None) -> list[int]:
    assert pid is not None
    proc = psutil.Process(pid)
    return [pid, *(c.pid for c in proc.children(recursive=True))]


def test_stop_leaves_no_process(servers_tmp: Path) -> None:
    stack = EmbeddedStack(servers_tmp / "own")
    urls = stack.start()
    try:
        with psycopg.connect(urls.database_url) as conn:
            conn.execute("SELECT 1")
        pids = [p for pid in stack.pids().values() for p in _tree(pid)]
        assert len(pids) >= 3
        pidfiles = [s.pidfile for s in stack.servers]
        assert all(f.exists() for f in pidfiles)
    finally:
        stack.stop()
    assert stack.pids() == {"postgres": None, "valkey": None, "seaweedfs": None}
    assert not any(f.exists() for f in pidfiles)

    def all_gone() -> bool:
        return not any(psutil.pid_exists(p) for p in pids)

    wait_for(all_gone, timeout=15, message=f"processes {pids} to exit")


def test_stale_server_from_crashed_run_is_stopped(tmp_path: Path) -> None:
    first = ValkeyServer(tmp_path)
    first.start()
    stale_pid = first.pid
    assert stale_pid is not None
    # A new run on the same data dir (the first "crashed" without stopping its server).
    second = ValkeyServer(tmp_path, first.port)
    try:
        second.start()
        assert second.pid != stale_pid
        assert not psutil.pid_exists(stale_pid) or psutil.Process(stale_pid).status() == "zombie"
    finally:
        second.stop()
        first.stop()  # reaps the stale child


def test_seaweed_refuses_taken_port(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = SeaweedPorts.free()
        ports = SeaweedPorts(**{**ports.__dict__, "filer": taken})
        server = SeaweedServer(tmp_path, ports)
        with pytest.raises(DevStackError, match=str(taken)):
            server.start()
        assert server.pid is None
