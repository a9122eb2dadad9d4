"""Documents and objects for a round, made before anything is timed: bodies, uploads, pending
documents through the library, and their confirms."""

from __future__ import annotations

import base64
import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

from benchmarks.config import CONFIRM_CHUNK, CONTENT_TYPE, OBJECT_BYTES, OWNER, OWNERS
from benchmarks.context import BenchContext


def body() -> bytes:
    """A fresh object body of ``OBJECT_BYTES``."""
    return uuid.uuid4().bytes * (OBJECT_BYTES // 16)


def upload(ctx: BenchContext, keys: list[str], bodies: list[bytes]) -> None:
    """PUT objects with their SHA-256 checksum, 16 at a time (not timed)."""

    def put(pair: tuple[str, bytes]) -> None:
        key, data = pair
        ctx.s3.put_object(
            Bucket=ctx.settings.s3_bucket,
            Key=key,
            Body=data,
            ContentType=CONTENT_TYPE,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, zip(keys, bodies, strict=True)))


def prepare_documents(ctx: BenchContext, count: int) -> list[tuple[str, uuid.UUID]]:
    """``count`` pending documents through the library, their objects already uploaded."""
    bodies = [body() for _ in range(count)]
    ids: list[tuple[str, uuid.UUID]] = []
    keys: list[str] = []
    with ctx.connect(autocommit=False) as conn:
        for i, data in enumerate(bodies):
            owner = f"{OWNER}-{i % OWNERS}"
            ticket = ctx.outbox.request_upload(
                conn,
                owner_id=owner,
                filename=f"bench-{i}.bin",
                content_type=CONTENT_TYPE,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
            ids.append((owner, ticket.document.id))
            keys.append(ticket.document.object_key)
            if i % 500 == 499:
                conn.commit()
        conn.commit()
    upload(ctx, keys, bodies)
    return ids


def confirm_all(ctx: BenchContext, ids: list[tuple[str, uuid.UUID]]) -> None:
    """Confirm every document, CONFIRM_CHUNK per transaction, as fast as one client can."""
    with ctx.connect(autocommit=False) as conn:
        for start in range(0, len(ids), CONFIRM_CHUNK):
            for owner, doc_id in ids[start : start + CONFIRM_CHUNK]:
                ctx.outbox.confirm(conn, owner_id=owner, document_id=doc_id)
            conn.commit()
