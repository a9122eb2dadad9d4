"""``s3-outbox run``: the whole system on one machine, and a demo that drives it.

Starts the embedded servers (PostgreSQL, Valkey, SeaweedFS from wheels; 127.0.0.1 only)
unless S3OUTBOX_DATABASE_URL, S3OUTBOX_REDIS_URL and S3OUTBOX_S3_ENDPOINT_URL are all set,
applies the schema, starts every Procfile process, and runs a demo: real files uploaded
through presigned URLs over HTTP, confirmed, some deleted, progress shown as it goes.
Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import requests

from outbox import DocumentStatus, Outbox, OutboxError, Settings, migrate
from outbox.presign import make_client

ROOT = Path.cwd()
DATA_DIR = ROOT / ".data"
FINAL = {
    DocumentStatus.AVAILABLE,
    DocumentStatus.DELETED,
    DocumentStatus.REJECTED,
    DocumentStatus.EXPIRED,
}


def _say(text: str) -> None:
    print(f"\033[1m==>\033[0m {text}" if sys.stdout.isatty() else f"==> {text}", flush=True)


# -- servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def servers() -> Iterator[dict[str, str]]:
    """The S3OUTBOX_* environment of the servers to use, started here if embedded."""
    given = ("S3OUTBOX_DATABASE_URL", "S3OUTBOX_REDIS_URL", "S3OUTBOX_S3_ENDPOINT_URL")
    if all(os.environ.get(name) for name in given):
        _say("using the servers from S3OUTBOX_DATABASE_URL / _REDIS_URL / _S3_ENDPOINT_URL")
        yield {}
        return
    from worker.devstack import EmbeddedStack, StackPorts

    _say(f"starting embedded PostgreSQL, Valkey and SeaweedFS in {DATA_DIR} (127.0.0.1 only)")
    stack = EmbeddedStack(DATA_DIR, StackPorts.defaults())
    urls = stack.start()
    _say(
        f"servers up: postgres={urls.database_url} redis={urls.redis_url} s3={urls.s3_endpoint_url}"
    )
    try:
        yield urls.env()
    finally:
        _say("stopping the embedded servers")
        stack.stop()


def ensure_bucket(settings: Settings) -> None:
    client = make_client(settings, settings.s3_endpoint_url)
    try:
        client.head_bucket(Bucket=settings.s3_bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=settings.s3_bucket)


# -- processes -------------------------------------------------------------------------


def procfile_commands(path: Path) -> dict[str, list[str]]:
    """``name: command`` lines of a Procfile."""
    commands: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = shlex.split(command)
    return commands


def _resolve(argv: list[str]) -> list[str]:
    # Prefer the executables of this virtualenv (s3-outbox, dramatiq).
    local = Path(sys.executable).parent / argv[0]
    return [str(local), *argv[1:]] if local.exists() else argv


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        print(f"{name:>8} | {raw.decode(errors='replace').rstrip()}", flush=True)


class Procs:
    """The Procfile's processes, each in its own process group, stopped by PID."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, commands: dict[str, list[str]]) -> None:
        for name, argv in commands.items():
            proc = subprocess.Popen(
                _resolve(argv),
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
            self.procs[name] = proc
            _say(f"started {name} (pid {proc.pid}): {' '.join(argv)}")

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _say(f"stopped {name}")


# -- demo ------------------------------------------------------------------------------


def _png(width: int = 64, height: int = 64) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def demo_files() -> list[Path]:
    """A handful of real files to upload (written once under .data/demo-files)."""
    folder = DATA_DIR / "demo-files"
    folder.mkdir(parents=True, exist_ok=True)
    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    files = {
        "quarterly report.pdf": pdf * 40,
        "logo.png": _png(),
        "notes.txt": "".join(
            f"line {i}: s3-outbox keeps rows and blobs in step\n" for i in range(400)
        ).encode(),
        "people.csv": b"id,name,city\n"
        + b"".join(f"{i},Person {i},City {i % 17}\n".encode() for i in range(500)),
        "Übersicht — café.md": "# Café\n\nNon-ASCII filename, kept as data.\n".encode() * 30,
    }
    paths = []
    for name, body in files.items():
        path = folder / name
        if not path.exists():
            path.write_bytes(body)
        paths.append(path)
    return paths


_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".zip": "application/zip",
}


def run_demo(settings: Settings, files: list[Path], timeout: float = 90.0) -> bool:
    """Upload, confirm and delete real files; show progress; print the final state."""
    outbox = Outbox(settings)
    owner = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh owner each run
    _say(f"demo owner: {owner}")
    ids: dict[str, Any] = {}
    with psycopg.connect(settings.database_url) as conn:
        for path in files:
            body = path.read_bytes()
            ctype = _TYPES.get(path.suffix.lower(), "application/octet-stream")
            try:
                ticket = outbox.request_upload(
                    conn,
                    owner_id=owner,
                    filename=path.name,
                    content_type=ctype,
                    size=len(body),
                    sha256=hashlib.sha256(body).hexdigest(),
                )
                conn.commit()
            except OutboxError as exc:
                conn.rollback()
                _say(f"{path.name}: refused ({exc.http_status} {exc.code}): {exc.message}")
                continue
            doc = ticket.document
            if ticket.url is None:
                _say(f"{path.name}: same content already stored -> document {doc.id}")
            else:
                headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
                resp = requests.put(ticket.url, data=body, headers=headers, timeout=60)
                _say(f"{path.name}: PUT {len(body)} bytes over HTTP -> {resp.status_code}")
                outbox.confirm(conn, owner_id=owner, document_id=doc.id)
                conn.commit()
            ids[path.name] = doc.id
        # A tampered upload: storage refuses a body that is not the one signed.
        body = b"the real content"
        ticket = outbox.request_upload(
            conn,
            owner_id=owner,
            filename="tampered.txt",
            content_type="text/plain",
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        )
        conn.commit()
        assert ticket.url is not None
        headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
        resp = requests.put(ticket.url, data=b"the fake content", headers=headers, timeout=60)
        _say(f"tampered.txt: PUT of a different body -> {resp.status_code} (storage refused it)")
        outbox.delete(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()

        to_delete = list(ids)[1::2]
        shown: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        deleted = False
        while time.monotonic() < deadline:
            for name, doc_id in ids.items():
                doc = outbox.get(conn, owner_id=owner, document_id=doc_id)
                if shown.get(name) != doc.status:
                    shown[name] = doc.status
                    _say(f"{name}: {doc.status}")
            conn.commit()
            if not deleted and all(s == DocumentStatus.AVAILABLE for s in shown.values()):
                for name in to_delete:
                    outbox.delete(conn, owner_id=owner, document_id=ids[name])
                    _say(f"{name}: delete requested")
                conn.commit()
                deleted = True
            if (
                deleted
                and all(s in FINAL for s in shown.values())
                and all(shown[name] == DocumentStatus.DELETED for name in to_delete)
            ):
                break
            time.sleep(0.2)  # a human-paced progress display, not synchronisation
        print_summary(settings, outbox, conn, owner)
        conn.commit()
        return all(s in FINAL for s in shown.values())


def print_summary(
    settings: Settings, outbox: Outbox, conn: psycopg.Connection[Any], owner: str
) -> None:
    from worker.cli import status_report

    page = outbox.list(conn, owner_id=owner, limit=100, include_deleted=True)
    print()
    print(f"{'document':<38} {'status':<10} {'bytes':>8}  filename")
    for doc in page.items:
        print(f"{doc.id!s:<38} {doc.status.value:<10} {doc.declared_size:>8}  {doc.filename}")
    quota = outbox.quota(conn, owner_id=owner)
    print(
        f"\nquota of {owner}: used {quota.used_bytes} B, reserved {quota.reserved_bytes} B,"
        f" limit {quota.limit_bytes} B"
    )
    report = status_report(settings)
    print(
        f"outbox lag: oldest pending {report['oldest_pending_seconds']}s, oldest dispatched "
        f"{report['oldest_dispatched_seconds']}s; events: "
        + ", ".join(f"{r['topic']}/{r['status']}={r['count']}" for r in report["events"])
    )


# -- the command -----------------------------------------------------------------------


def run(demo: bool = True, files: list[str] | None = None, exit_after_demo: bool = False) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with servers() as server_env:
        env = {**os.environ, **server_env, "PYTHONUNBUFFERED": "1"}
        os.environ.update(server_env)
        settings = Settings()
        ensure_bucket(settings)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            migrate(conn)
        _say("schema applied")
        procs = Procs(env)
        try:
            commands = procfile_commands(ROOT / "Procfile")
            if "web" in commands and importlib.util.find_spec("fastapi") is None:
                _say("no web API: it needs pip install 's3-outbox[api]'")
                del commands["web"]
            procs.start(commands)
            if "web" in commands:
                _say("upload page and HTTP API: http://127.0.0.1:8000/ (docs at /docs)")
            ok = True
            if demo:
                paths = [Path(f) for f in files] if files else demo_files()
                ok = run_demo(settings, paths)
                _say("demo finished" if ok else "demo did not settle in time")
            if exit_after_demo:
                return 0 if ok else 1
            _say(
                f"everything is running; metrics on :{settings.relay_metrics_port} (relay), "
                f":{settings.worker_metrics_port} (workers), :{settings.sweeper_metrics_port}"
                " (sweeper). Ctrl-C stops it all."
            )
            while not stop.wait(1.0):
                if dead := procs.dead():
                    _say(f"process exited: {', '.join(dead)}; stopping")
                    return 1
            return 0
        finally:
            procs.stop()
