"""Part 5: large files. A generated file (the largest beyond S3's 5 GiB single-PUT limit)
uploaded by the upload helper (``outbox.uploader``, parts in parallel, each hashed and
signed) and by boto3's own multipart upload (``upload_file``, a ``TransferConfig`` of the
same part size and threads) of the same file to the same server, one after the other in
the same run: MB/s and their ratio. And confirm-to-available for each size: storage
checked every part's SHA-256 as it arrived, so the worker's verify (ListParts, Complete,
HeadObject) reads no bytes and should take seconds whatever the size.

The files are written in the work folder just before they are sent (repeated random
blocks, at the disk's speed) and deleted after, with the objects."""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from psycopg_pool import ConnectionPool

from benchmarks.config import MIB, OWNER, Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.end_to_end import start_outbox
from benchmarks.measure import CpuMeter, median_of, summary
from outbox import DocumentStatus, Outbox, Settings, UploadNotReady
from outbox.multipart import plan_for
from outbox.uploader import LibraryApi, Uploader
from worker.demo import generated_file

#: Where boto3's copies go: outside the documents' prefix.
BOTO3_PREFIX = "bench-boto3/"


def multipart_settings(ctx: BenchContext) -> Settings:
    """The run's settings with the configured multipart threshold and part size."""
    cfg = ctx.config
    values: dict[str, Any] = ctx.settings.model_dump()
    if cfg.multipart_threshold_mib is not None:
        values["multipart_threshold_bytes"] = cfg.multipart_threshold_mib * MIB
    if cfg.multipart_part_mib is not None:
        values["multipart_part_size_bytes"] = cfg.multipart_part_mib * MIB
    return Settings(**values)


def wait_available(ctx: BenchContext, doc: uuid.UUID, timeout: float) -> tuple[float, str]:
    """Until the document is verified: (confirm-to-verified seconds on the database clock,
    its status)."""
    deadline = time.monotonic() + timeout
    with ctx.connect() as conn:
        while True:
            row = conn.execute(sql()["document_timing"], {"id": doc}).fetchone()
            if row is not None and row[1] is not None:
                return float(row[1]) - float(row[0]), str(row[2])
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"document {doc} not verified after {timeout:.0f}s; its events:"
                    f" {events_of(ctx, doc)}"
                )
            time.sleep(0.05)


def events_of(ctx: BenchContext, doc: uuid.UUID | str) -> list[tuple[Any, ...]]:
    """A document's events as they stand (what a round that waited too long shows)."""
    with ctx.connect() as conn:
        return conn.execute(sql()["document_events"], {"id": doc}).fetchall()


def _mb_per_s(size: int, seconds: float) -> float:
    return round(size / 1e6 / max(seconds, 1e-9), 1)


class _Cpu:
    """Cores busy while one upload runs: the servers' (their process trees) and this
    process's own (the client: the helper's or boto3's threads; not the worker processes
    this process started, which are its children)."""

    def __init__(self, ctx: BenchContext) -> None:
        self._servers = CpuMeter({k: [v] for k, v in ctx.server_pids.items()})

    def __enter__(self) -> _Cpu:
        self.busy: Json = {}
        self._t0 = time.monotonic()
        self._cpu0 = time.process_time()
        self._servers.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.busy = self._servers.stop()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self.busy["client"] = round((time.process_time() - self._cpu0) / elapsed, 2)
        self.seconds = elapsed


@dataclass
class Upload:
    """One timed upload: seconds, cores busy, and (the helper's) document and retries."""

    seconds: float
    busy: Json
    document_id: uuid.UUID | None = None
    parts: int = 0
    retries: int = 0
    payload: str = ""


def by_helper(ctx: BenchContext, api: LibraryApi, path: Path) -> Upload:
    """The upload helper, ``multipart_threads`` parts at a time: request, parts, confirm."""
    with (
        Uploader(api, threads=ctx.config.multipart_threads, progress=False) as uploader,
        _Cpu(ctx) as cpu,
    ):
        try:
            result = uploader.upload(path, content_type="application/octet-stream")
        except UploadNotReady as exc:
            doc = exc.details["document_id"]
            events = events_of(ctx, doc)
            raise RuntimeError(f"no worker created the upload; its events: {events}") from exc
    assert result.multipart and result.status == DocumentStatus.UPLOADED, result
    return Upload(cpu.seconds, cpu.busy, result.document_id, result.part_count, result.retries)


def by_boto3(ctx: BenchContext, bucket: str, path: Path, part_size: int) -> Upload:
    """boto3's own multipart upload of the same file (``upload_file``: create, the parts
    ``multipart_threads`` at a time, complete), deleted after."""
    key = f"{BOTO3_PREFIX}{uuid.uuid4()}"
    transfer = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=ctx.config.multipart_threads,
        use_threads=True,
    )
    payloads: set[str] = set()

    def seen(request: Any, **_: Any) -> None:
        # What boto3 does for each part's integrity: on plain HTTP it signs the payload
        # (a SHA-256 of the part, which the server checks); a checksum header if asked.
        for name, value in request.headers.items():
            name = name.lower()
            if name.startswith("x-amz-checksum-"):
                payloads.add(name)
            elif name == "x-amz-content-sha256":
                text = value.decode() if isinstance(value, bytes) else str(value)
                payloads.add("signed payload SHA-256" if len(text) == 64 else text)

    ctx.s3.meta.events.register("before-send.s3.UploadPart", seen)
    try:
        with _Cpu(ctx) as cpu:
            ctx.s3.upload_file(str(path), bucket, key, Config=transfer)
    finally:
        ctx.s3.meta.events.unregister("before-send.s3.UploadPart", seen)
    assert ctx.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == path.stat().st_size
    ctx.s3.delete_object(Bucket=bucket, Key=key)
    return Upload(cpu.seconds, cpu.busy, payload=", ".join(sorted(payloads)))


def one_size(
    ctx: BenchContext, settings: Settings, api: LibraryApi, size: int, part_size: int
) -> Json:
    """One generated file of ``size`` bytes, sent ``multipart_rounds`` times by each client,
    alternating which goes first (helper-boto3, boto3-helper, ...) so that a drift of the
    machine's load weighs on both; each helper upload's confirm-to-available."""
    cfg = ctx.config
    path = ctx.workdir / f"large-{size}.bin"
    t0 = time.monotonic()
    generated_file(path, size, seed=size)
    generated_s = time.monotonic() - t0
    helper: list[Upload] = []
    boto3: list[Upload] = []
    waits: list[float] = []
    try:
        for i in range(cfg.multipart_rounds):
            for client in ("helper", "boto3") if i % 2 == 0 else ("boto3", "helper"):
                if client == "boto3":
                    boto3.append(by_boto3(ctx, settings.s3_bucket, path, part_size))
                    continue
                up = by_helper(ctx, api, path)
                assert up.document_id is not None
                seconds, status = wait_available(ctx, up.document_id, 300 + size / 1e8)
                if status != DocumentStatus.AVAILABLE:
                    raise RuntimeError(f"the {size}-byte document ended {status}")
                waits.append(seconds)
                helper.append(up)
                # Free the server's disk for the next upload (a worker purges it).
                with ctx.connect(autocommit=False) as conn:
                    ctx.outbox.delete(conn, owner_id=api.owner_id, document_id=up.document_id)
                    conn.commit()
    finally:
        path.unlink(missing_ok=True)
    helper_s = sum(u.seconds for u in helper)
    boto3_s = sum(u.seconds for u in boto3)
    out: Json = {
        "bytes": size,
        "part_size": part_size,
        "parts": helper[0].parts,
        "threads": cfg.multipart_threads,
        "rounds": cfg.multipart_rounds,
        "generate_seconds": round(generated_s, 1),
        "helper_mb_per_s": summary([_mb_per_s(size, u.seconds) for u in helper]),
        "boto3_mb_per_s": summary([_mb_per_s(size, u.seconds) for u in boto3]),
        # Over the rounds' total time: each round's pair ran side by side in time.
        "ratio_helper_over_boto3": round(boto3_s / helper_s, 3),
        "ratio_rounds": [
            round(b.seconds / h.seconds, 3) for h, b in zip(helper, boto3, strict=True)
        ],
        "helper_retries": sum(u.retries for u in helper),
        "helper_cpu_cores_busy": _median_busy(helper),
        "boto3_cpu_cores_busy": _median_busy(boto3),
        "boto3_part_integrity": boto3[0].payload,
        "confirm_to_available_seconds": summary(waits, 3),
    }
    say(
        f"  {size // MIB} MiB in {out['parts']} parts: helper {median_of(out['helper_mb_per_s'])}"
        f" MB/s, boto3 {median_of(out['boto3_mb_per_s'])} MB/s (ratio"
        f" {out['ratio_helper_over_boto3']}), confirm-to-available"
        f" {median_of(out['confirm_to_available_seconds'])} s"
    )
    return out


def _median_busy(uploads: list[Upload]) -> Json:
    return {k: statistics.median(u.busy[k] for u in uploads) for k in uploads[0].busy}


def multipart(ctx: BenchContext) -> Json:
    """The helper against boto3 for each configured size, and confirm-to-available."""
    cfg = ctx.config
    settings = multipart_settings(ctx)
    ctx.outbox = Outbox(settings)
    children = start_outbox(ctx, 1)
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.database_url, min_size=1, max_size=cfg.multipart_threads + 3, open=False
    )
    pool.open(wait=True, timeout=30)
    try:
        ctx.reset()
        api = LibraryApi(ctx.outbox, owner_id=f"{OWNER}-0", connect=pool.connection)
        sizes = []
        for mib in cfg.multipart_sizes_mib:
            size = mib * MIB
            plan = plan_for(size, settings)
            if plan is None:
                raise ValueError(f"{mib} MiB is not above the multipart threshold")
            say(f"large file: {mib} MiB, parts of {plan.part_size // MIB} MiB")
            sizes.append(one_size(ctx, settings, api, size, plan.part_size))
            children.check()
    finally:
        pool.close()
        children.stop_all()
        ctx.outbox = Outbox(ctx.settings)
    return {
        "sizes": sizes,
        "threshold_bytes": settings.multipart_threshold_bytes,
        "boto3_transfer": "upload_file, TransferConfig(multipart_chunksize=part_size,"
        " max_concurrency=threads), its default checksum",
    }
