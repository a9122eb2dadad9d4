"""The demo ``s3-outbox run`` drives: real files uploaded through presigned URLs over HTTP,
confirmed, some deleted, a tampered upload refused by storage, and one large generated file
(just above the multipart threshold) sent in parallel parts by the upload helper
(``outbox.uploader``); progress shown as it goes."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from outbox import DocumentStatus, Outbox, OutboxError, Settings, UploadInterrupted
from outbox.settings import MIB
from outbox.uploader import LibraryApi, Uploader
from worker.ops.status import status_report
from worker.service import Stop

#: The demo's large file: a generated dataset just above the multipart threshold.
LARGE_NAME = "large dataset.bin"
#: Parts the demo's large file sends at once.
LARGE_THREADS = 4

FINAL = {
    DocumentStatus.AVAILABLE,
    DocumentStatus.DELETED,
    DocumentStatus.REJECTED,
    DocumentStatus.EXPIRED,
}


def say(text: str) -> None:
    print(f"\033[1m==>\033[0m {text}" if sys.stdout.isatty() else f"==> {text}", flush=True)


def http_put(url: str, body: bytes, headers: dict[str, str]) -> int:
    """PUT ``body`` to a presigned URL as a browser would; returns the HTTP status."""
    request = urllib.request.Request(url, data=body, headers=headers, method="PUT")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


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


def generated_file(path: Path, size: int, *, seed: int = 0) -> Path:
    """A file of ``size`` incompressible bytes, written fast (the disk's speed, not the
    random generator's): one 16 MiB random block, a different MiB of it at a time, each
    MiB stamped with its index so that no two are alike. A file already of that size is
    kept."""
    if path.is_file() and path.stat().st_size == size:
        return path
    pool = 16
    block = random.Random(seed).randbytes(pool * MIB)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        written = 0
        index = 0
        while written < size:
            n = min(MIB, size - written)
            start = (index * 7 % pool) * MIB
            chunk = struct.pack(">Q", index) + block[start + 8 : start + MIB]
            f.write(chunk[:n])
            written += n
            index += 1
    os.replace(partial, path)
    return path


def large_file_size(settings: Settings) -> int:
    """Just above the multipart threshold: the smallest file the demo sends in parts."""
    return settings.multipart_threshold_bytes + MIB + 12345


def demo_files(data_dir: Path, large_bytes: int | None = None) -> list[Path]:
    """A handful of real files to upload (written once under ``data_dir/demo-files``), and
    with ``large_bytes`` a generated file of that size (sent in parts above the threshold)."""
    folder = data_dir / "demo-files"
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
    if large_bytes is not None:
        paths.append(generated_file(folder / LARGE_NAME, large_bytes))
    return paths


def upload_large(
    settings: Settings, outbox: Outbox, owner: str, path: Path, stop: Stop | None
) -> UUID | None:
    """Send a file above the multipart threshold with the upload helper: parts hashed and
    PUT in parallel, each reported, then the confirm. The document id, or None if it was
    refused (said why) or stopped."""
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.database_url, min_size=1, max_size=LARGE_THREADS + 3, open=False
    )
    pool.open(wait=True, timeout=30)
    try:
        api = LibraryApi(outbox, owner_id=owner, connect=pool.connection)
        with Uploader(api, threads=LARGE_THREADS, stop=stop) as uploader:
            started = time.monotonic()
            result = uploader.upload(path, content_type=_type_of(path))
    except UploadInterrupted:
        return None
    except OutboxError as exc:
        say(f"{path.name}: refused ({exc.http_status} {exc.code}): {exc.message}")
        return None
    finally:
        pool.close()
    seconds = max(time.monotonic() - started, 1e-3)
    say(
        f"{path.name}: {result.part_count} parts ({result.size} bytes) hashed and PUT over"
        f" HTTP, {LARGE_THREADS} at a time, by the upload helper in {seconds:.1f}s"
        f" ({result.size / seconds / MIB:.0f} MiB/s, {result.retries} retries)"
        f" -> {result.status}"
    )
    return result.document_id


def _type_of(path: Path) -> str:
    return _TYPES.get(path.suffix.lower(), "application/octet-stream")


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


def run_demo(
    settings: Settings, files: list[Path], timeout: float = 90.0, stop: Stop | None = None
) -> bool:
    """Upload, confirm and delete real files; show progress; print the final state. Returns
    whether every document reached a final state (early, False, when ``stop`` is set)."""
    outbox = Outbox(settings)
    owner = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh owner each run
    say(f"demo owner: {owner}")
    ids: dict[str, Any] = {}
    with psycopg.connect(settings.database_url) as conn:
        for path in files:
            if stop is not None and stop.is_set():
                break
            if path.stat().st_size > settings.multipart_threshold_bytes:
                large = upload_large(settings, outbox, owner, path, stop)
                if large is not None:
                    ids[path.name] = large
                continue
            body = path.read_bytes()
            ctype = _type_of(path)
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
                say(f"{path.name}: refused ({exc.http_status} {exc.code}): {exc.message}")
                continue
            doc = ticket.document
            if ticket.url is None:
                say(f"{path.name}: same content already stored -> document {doc.id}")
            else:
                headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
                status = http_put(ticket.url, body, headers)
                say(f"{path.name}: PUT {len(body)} bytes over HTTP -> {status}")
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
        status = http_put(ticket.url, b"the fake content", headers)
        say(f"tampered.txt: PUT of a different body -> {status} (storage refused it)")
        outbox.delete(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()

        to_delete = list(ids)[1::2]
        shown: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        deleted = False
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            for name, doc_id in ids.items():
                doc = outbox.get(conn, owner_id=owner, document_id=doc_id)
                if shown.get(name) != doc.status:
                    shown[name] = doc.status
                    say(f"{name}: {doc.status}")
            conn.commit()
            if not deleted and all(s == DocumentStatus.AVAILABLE for s in shown.values()):
                for name in to_delete:
                    outbox.delete(conn, owner_id=owner, document_id=ids[name])
                    say(f"{name}: delete requested")
                conn.commit()
                deleted = True
            if (
                deleted
                and all(s in FINAL for s in shown.values())
                and all(shown[name] == DocumentStatus.DELETED for name in to_delete)
            ):
                break
            # A human-paced progress display, not synchronisation; a signal ends it early.
            if stop is not None:
                stop.wait(0.2)
            else:
                time.sleep(0.2)
        print_summary(settings, outbox, conn, owner)
        conn.commit()
        return all(s in FINAL for s in shown.values())


def print_summary(
    settings: Settings, outbox: Outbox, conn: psycopg.Connection[Any], owner: str
) -> None:
    page = outbox.list(conn, owner_id=owner, limit=100, include_deleted=True)
    print()
    print(f"{'document':<38} {'status':<10} {'bytes':>10}  filename")
    for doc in page.items:
        print(f"{doc.id!s:<38} {doc.status.value:<10} {doc.declared_size:>10}  {doc.filename}")
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
