"""The chaos run: the whole system as real processes, a mixed upload load, and faults.

``run_chaos(ChaosConfig(...))`` (or ``make chaos`` (``python -m harness.chaos``)):

1. starts the embedded servers (PostgreSQL, Valkey, SeaweedFS) on free ports in a temporary
   folder, unless S3OUTBOX_DATABASE_URL, _REDIS_URL and _S3_ENDPOINT_URL are all set (then
   server restarts are skipped: those servers are not ours to restart), and applies the schema;
2. puts a fault-injecting proxy (``harness.faultproxy``) between the workers and storage; the
   clients' presigned URLs still go straight to storage;
3. starts relay, ``dramatiq worker.actors`` (several processes) and sweeper as real processes,
   each in its own process group;
4. drives N documents from several client threads through request -> HTTP PUT -> confirm,
   with deletes, duplicates, abandoned uploads, lost confirms, over-quota owners and objects
   tampered with behind the system's back;
5. meanwhile, on a seeded random schedule: SIGKILL and restart of relay, worker and sweeper,
   Valkey restarted empty, PostgreSQL restarted with a fast shutdown; the proxy answers
   500/503, drops connections, delays, and hides fresh objects (404) for a while;
6. stops the faults, waits (bounded) until nothing is left to do, then checks every invariant
   (``harness.invariants.check_invariants``) and what each scenario must have ended as, and
   prints a table. ``ChaosResult.ok`` is False on any broken invariant or expectation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
import requests

from harness.faultproxy import FAULT_KINDS, FaultProxy, FaultRates
from harness.invariants import InvariantReport, check_invariants, summarize_counts
from outbox import DocumentStatus, InvalidState, Outbox, QuotaExceeded, Settings, migrate
from outbox.models import UploadTicket
from outbox.presign import make_client
from worker.embedded import EmbeddedStack
from worker.processes import command
from worker.servers import servers, settings_from
from worker.storage import Storage, ensure_bucket
from worker.supervisor import Supervisor

log = logging.getLogger("s3outbox.chaos")
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


class Scenario(StrEnum):
    """What one client does with one document, and so what it must end as."""

    NORMAL = "normal"  # request, PUT, confirm -> available
    DELETE_AFTER = "delete_after_available"  # ... then delete once available -> deleted
    DELETE_IN_FLIGHT = "delete_in_flight"  # delete while pending/uploaded -> deleted
    DUPLICATE = "duplicate"  # the same content twice -> one document, available
    ABANDONED = "abandoned"  # request, never PUT -> expired
    LOST_CONFIRM = "lost_confirm"  # PUT, never confirm -> the sweeper finds it: available
    OVER_QUOTA = "over_quota"  # an owner with a small limit: some requests refused
    TAMPERED = "tampered"  # object overwritten behind the system's back -> rejected


EXPECTED: dict[Scenario, DocumentStatus] = {
    Scenario.NORMAL: DocumentStatus.AVAILABLE,
    Scenario.DELETE_AFTER: DocumentStatus.DELETED,
    Scenario.DELETE_IN_FLIGHT: DocumentStatus.DELETED,
    Scenario.DUPLICATE: DocumentStatus.AVAILABLE,
    Scenario.ABANDONED: DocumentStatus.EXPIRED,
    Scenario.LOST_CONFIRM: DocumentStatus.AVAILABLE,
    Scenario.OVER_QUOTA: DocumentStatus.AVAILABLE,
    Scenario.TAMPERED: DocumentStatus.REJECTED,
}

DEFAULT_SHARES: dict[str, float] = {
    Scenario.NORMAL: 0.40,
    Scenario.DELETE_AFTER: 0.08,
    Scenario.DELETE_IN_FLIGHT: 0.10,
    Scenario.DUPLICATE: 0.08,
    Scenario.ABANDONED: 0.07,
    Scenario.LOST_CONFIRM: 0.08,
    Scenario.OVER_QUOTA: 0.12,
    Scenario.TAMPERED: 0.07,
}

PROCESS_FAULTS = ("kill_relay", "kill_worker", "kill_sweeper")
SERVER_FAULTS = ("restart_valkey", "restart_postgres")

_CONTENT_TYPES = ("text/plain", "application/octet-stream", "application/json", "text/csv")


@dataclass
class ChaosConfig:
    """Everything a chaos run can be told. The defaults are the full run (`make chaos`)."""

    documents: int = 2000
    threads: int = 8
    seed: int = 1
    #: Documents started per second over all client threads (None: as fast as possible).
    #: Spreads the load so that the faults land while it runs.
    rate_per_second: float | None = 20.0
    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    owners: int = 25
    quota_owners: int = 3
    quota_limit_bytes: int = 48 * 1024
    min_size: int = 64
    max_size: int = 12 * 1024

    # Faults of processes and servers: one every fault_min..fault_max seconds.
    fault_min_seconds: float = 2.0
    fault_max_seconds: float = 6.0
    #: Relative weights of process/server faults.
    fault_weights: dict[str, float] = field(
        default_factory=lambda: {
            "kill_relay": 1.0,
            "kill_worker": 1.5,
            "kill_sweeper": 0.7,
            "restart_valkey": 1.0,
            "restart_postgres": 1.0,
        }
    )
    restart_delay_min_seconds: float = 0.2
    restart_delay_max_seconds: float = 2.0
    #: Make every fault kind (processes, servers, storage) happen at least once.
    ensure_every_fault: bool = True
    storage: FaultRates = field(default_factory=FaultRates)

    # The system's timings: short, so abandoned uploads expire within the run.
    upload_url_ttl_seconds: int = 20
    verify_deadline_seconds: float = 10.0
    redispatch_after_seconds: float = 5.0
    actor_time_limit_seconds: float = 4.0
    relay_poll_seconds: float = 0.5
    sweeper_interval_seconds: float = 1.0
    purge_grace_seconds: float = 1.0
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 3.0
    max_failures: int = 8
    worker_processes: int = 2
    worker_threads: int = 4
    worker_pool_size: int = 4

    #: Longest wait for the system to settle after the load.
    settle_timeout_seconds: float = 300.0
    #: Longest a client retries one call while PostgreSQL or storage is away.
    client_retry_seconds: float = 90.0
    data_dir: Path | None = None
    keep_data: bool = False


@dataclass
class Item:
    """One unit of client work: one document (a duplicate makes two requests for it)."""

    index: int
    scenario: Scenario
    owner: str
    body: bytes
    content_type: str
    variant: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class ItemResult:
    item: Item
    document_id: uuid.UUID | None = None
    expected: DocumentStatus | None = None
    note: str = ""


@dataclass
class ChaosResult:
    """What a chaos run did and found."""

    config: ChaosConfig
    report: InvariantReport | None = None
    faults: dict[str, int] = field(default_factory=dict)
    clients: dict[str, int] = field(default_factory=dict)
    scenarios: dict[str, int] = field(default_factory=dict)
    expectation_failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    settled: bool = False
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    check_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    data_dir: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.report is not None
            and self.report.ok
            and self.settled
            and not self.expectation_failures
            and not self.errors
        )

    def to_dict(self) -> dict[str, Any]:
        counts = summarize_counts(self.report) if self.report is not None else {}
        return {
            "ok": self.ok,
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()
            },
            "invariants": counts,
            "checks": [
                {"name": c.name, "passed": c.passed, "problems": c.problems}
                for c in (self.report.checks if self.report else [])
            ],
            "orphans": list(self.report.orphan_objects[:50]) if self.report else [],
            "faults": self.faults,
            "clients": self.clients,
            "scenarios": self.scenarios,
            "expectation_failures": self.expectation_failures[:100],
            "errors": self.errors[:100],
            "settled": self.settled,
            "load_seconds": round(self.load_seconds, 1),
            "settle_seconds": round(self.settle_seconds, 1),
            "check_seconds": round(self.check_seconds, 1),
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "data_dir": self.data_dir,
        }


# -- processes ---------------------------------------------------------------------------


def start_processes(procs: Supervisor, config: ChaosConfig) -> list[str]:
    """Start relay, workers and sweeper where not running; returns the names started."""
    started = []
    for name in ("relay", "worker", "sweeper"):
        if procs.pid(name) is None:
            argv = command(name, processes=config.worker_processes, threads=config.worker_threads)
            procs.start(name, argv)
            started.append(name)
    return started


def supervisor(settings: Settings, logdir: Path) -> Supervisor:
    """The run's processes: their own process groups, logs in ``logdir``, the settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Metrics are off (port 0), but worker processes still write multiprocess files:
    # keep them in the run's folder, not /tmp.
    prom = logdir / "prometheus"
    prom.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    return Supervisor(env, logdir=logdir, cwd=ROOT)


# -- faults ------------------------------------------------------------------------------


class FaultScheduler:
    """Injects process and server faults on a seeded random schedule until told to stop.

    With ``ensure_every_fault`` the first faults are every kind once (in a seeded order),
    and the scheduler keeps going after the load until each kind has happened.
    """

    def __init__(
        self,
        config: ChaosConfig,
        procs: Supervisor,
        stack: EmbeddedStack | None,
        proxy: FaultProxy,
        load_done: threading.Event,
    ) -> None:
        self.config = config
        self.procs = procs
        self.stack = stack
        self.proxy = proxy
        self.load_done = load_done
        self.stop_event = threading.Event()
        self.rng = random.Random(f"{config.seed}:faults")
        self.counts: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self.errors: list[str] = []
        kinds = list(PROCESS_FAULTS)
        if stack is not None:
            kinds += SERVER_FAULTS
        self.kinds = [k for k in kinds if config.fault_weights.get(k, 0) > 0]
        self.todo = list(self.kinds) if config.ensure_every_fault else []
        self.rng.shuffle(self.todo)
        self._t0 = time.monotonic()

    def run(self) -> None:
        if self.config.ensure_every_fault:
            for kind in FAULT_KINDS:
                self.proxy.force(kind)
        while not self.stop_event.is_set():
            if self.load_done.is_set() and not self.todo:
                return
            # The schedule itself: wait between faults (not synchronisation).
            pause = self.rng.uniform(self.config.fault_min_seconds, self.config.fault_max_seconds)
            if self.stop_event.wait(pause) or not self.kinds:
                return
            kind = self.todo.pop() if self.todo else self._pick()
            try:
                self.inject(kind)
            except Exception as exc:  # a fault that failed to apply must not end the run
                self.errors.append(f"{kind}: {exc!r}")
                log.exception("fault %s failed", kind)

    def _pick(self) -> str:
        weights = [self.config.fault_weights[k] for k in self.kinds]
        return self.rng.choices(self.kinds, weights)[0]

    def inject(self, kind: str) -> None:
        self.timeline.append((round(time.monotonic() - self._t0, 1), kind))
        log.info("chaos: %s", kind)
        if kind in PROCESS_FAULTS:
            name = kind.removeprefix("kill_")
            self.procs.kill(name)
            self.counts[kind] += 1
            self.stop_event.wait(
                self.rng.uniform(
                    self.config.restart_delay_min_seconds, self.config.restart_delay_max_seconds
                )
            )
            self.procs.restart(name)
        elif kind == "restart_valkey":
            assert self.stack is not None
            self.stack.valkey.restart(lose_data=True)
            self.counts[kind] += 1
        elif kind == "restart_postgres":
            assert self.stack is not None
            self.stack.postgres.restart(fast=True)
            self.counts[kind] += 1
        else:  # pragma: no cover - kinds are ours
            raise ValueError(kind)


# -- clients -----------------------------------------------------------------------------


class Counters:
    """Thread-safe counters of what the clients saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.c[name] += n


class Client:
    """One client thread's view of the web app: its own connection, retried across
    PostgreSQL restarts, and HTTP PUTs straight to storage."""

    def __init__(self, run: ChaosRun) -> None:
        self.run = run
        self.outbox = run.outbox
        self.counters = run.counters
        self._conn: psycopg.Connection[Any] | None = None
        self.http = requests.Session()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.http.close()

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.run.settings.database_url, connect_timeout=5)
        return self._conn

    def tx(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` in a transaction and commit; on a lost connection, reconnect and run it
        again. A commit whose answer was lost may have happened: every call used here is
        safe to repeat (a repeated request dedupes, confirm and delete are idempotent)."""
        deadline = time.monotonic() + self.run.config.client_retry_seconds
        delay = 0.1
        while True:
            conn = None
            try:
                conn = self.conn()
                result = fn(conn)
                conn.commit()
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.counters.inc("db_retries")
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: database unreachable: {exc}") from exc
                time.sleep(delay)  # retry backoff while PostgreSQL restarts
                delay = min(delay * 2, 2.0)
            except BaseException:
                if conn is not None and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                raise

    def request(self, item: Item) -> UploadTicket:
        return self.tx(
            "request_upload",
            lambda c: self.outbox.request_upload(
                c,
                owner_id=item.owner,
                filename=f"chaos file {item.index}.bin",
                content_type=item.content_type,
                size=len(item.body),
                sha256=item.sha256,
            ),
        )

    def confirm(self, item: Item, doc_id: uuid.UUID) -> None:
        self.tx(
            "confirm",
            lambda c: self.outbox.confirm(c, owner_id=item.owner, document_id=doc_id),
        )

    def delete(self, owner: str, doc_id: uuid.UUID) -> None:
        self.tx("delete", lambda c: self.outbox.delete(c, owner_id=owner, document_id=doc_id))

    def status(self, owner: str, doc_id: uuid.UUID) -> DocumentStatus:
        return self.tx(
            "get", lambda c: self.outbox.get(c, owner_id=owner, document_id=doc_id).status
        )

    def put(self, ticket: UploadTicket, body: bytes) -> None:
        """PUT as a browser does; storage is not behind the fault proxy, but retry a refused
        or broken PUT anyway (the URL may be reused until it expires)."""
        assert ticket.url is not None
        headers = {k: v for k, v in ticket.headers.items() if k != "Content-Length"}
        last = ""
        for attempt in range(6):
            try:
                resp = self.http.put(ticket.url, data=body, headers=headers, timeout=30)
            except requests.RequestException as exc:
                last = repr(exc)
            else:
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            self.counters.inc("put_retries")
            time.sleep(0.2 * 2**attempt)  # retry backoff
        raise RuntimeError(f"PUT failed: {last}")


class ChaosRun:
    """State shared by the client threads of one run."""

    def __init__(self, config: ChaosConfig, settings: Settings, real_storage: Storage) -> None:
        self.config = config
        self.settings = settings
        self.outbox = Outbox(settings)
        self.storage = real_storage
        self.counters = Counters()
        self.results: list[ItemResult] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.work: queue.Queue[Item] = queue.Queue()
        # Documents to delete once they are available: (owner, id, give-up time).
        self.deferred: list[tuple[str, uuid.UUID, float]] = []
        self.load_started = 0.0

    def error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def record(self, result: ItemResult) -> None:
        with self._lock:
            self.results.append(result)

    def defer_delete(self, owner: str, doc_id: uuid.UUID) -> None:
        with self._lock:
            self.deferred.append((owner, doc_id, time.monotonic() + 30.0))

    def take_deferred(self) -> tuple[str, uuid.UUID, float] | None:
        with self._lock:
            return self.deferred.pop(0) if self.deferred else None

    def return_deferred(self, entry: tuple[str, uuid.UUID, float]) -> None:
        with self._lock:
            self.deferred.append(entry)


def make_items(config: ChaosConfig) -> list[Item]:
    """The run's work, the same for the same seed."""
    rng = random.Random(f"{config.seed}:items")
    names = list(config.shares)
    weights = [config.shares[n] for n in names]
    items = []
    for i in range(config.documents):
        scenario = Scenario(rng.choices(names, weights)[0])
        if scenario == Scenario.OVER_QUOTA:
            owner = f"chaos-quota-{rng.randrange(max(config.quota_owners, 1))}"
        else:
            owner = f"chaos-user-{rng.randrange(max(config.owners, 1))}"
        size = rng.randint(config.min_size, config.max_size)
        # Unique content per item (the index is in it): only DUPLICATE repeats content.
        body = f"chaos {config.seed} item {i}\n".encode() + rng.randbytes(size)
        items.append(Item(i, scenario, owner, body, rng.choice(_CONTENT_TYPES), rng.randrange(3)))
    return items


def client_thread(run: ChaosRun, tamper: Any, start_at: Callable[[int], float]) -> None:
    """Take items until none are left, then help with deferred deletes until none are left."""
    client = Client(run)
    try:
        while True:
            _deferred_step(run, client, force=False)
            try:
                item = run.work.get_nowait()
            except queue.Empty:
                break
            pause = start_at(item.index) - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing of the load, not synchronisation
            result = ItemResult(item)
            try:
                _do_item(run, client, tamper, item, result)
                run.counters.inc(f"scenario:{item.scenario.value}")
            except Exception as exc:
                run.error(f"item {item.index} ({item.scenario.value}): {exc!r}")
                result.expected = None
                result.note = f"client error: {exc!r}"
            run.record(result)
        while _deferred_step(run, client, force=True):
            pass
    finally:
        client.close()


def _deferred_step(run: ChaosRun, client: Client, *, force: bool) -> bool:
    """Delete one deferred document if it is available (or waited long enough, or ``force``
    after the load). False when there is nothing deferred."""
    entry = run.take_deferred()
    if entry is None:
        return False
    owner, doc_id, give_up = entry
    try:
        status = client.status(owner, doc_id)
        if status == DocumentStatus.AVAILABLE or time.monotonic() > give_up:
            client.delete(owner, doc_id)
            run.counters.inc(
                "deletes_after_available"
                if status == DocumentStatus.AVAILABLE
                else "deletes_before_available"
            )
            return True
    except Exception as exc:
        run.error(f"deferred delete {doc_id}: {exc!r}")
        return True
    run.return_deferred(entry)
    if force:
        time.sleep(0.2)  # waiting for the document to become available (bounded by give_up)
    return True


def _do_item(run: ChaosRun, client: Client, tamper: Any, item: Item, result: ItemResult) -> None:
    counters = run.counters
    expected = EXPECTED[item.scenario]
    try:
        ticket = client.request(item)
    except QuotaExceeded:
        counters.inc("quota_refusals")
        result.note = "quota refused"
        return
    doc_id = ticket.document.id
    result.document_id = doc_id
    result.expected = expected
    if ticket.deduplicated:
        # A request retried after its commit's answer was lost finds its own document.
        counters.inc("request_retry_dedups")
    sc = item.scenario

    if sc == Scenario.ABANDONED:
        return
    if sc == Scenario.DELETE_IN_FLIGHT and item.variant in (1, 2):
        # Delete while pending; variant 2 then PUTs anyway with the still valid URL
        # (a late upload: the purge's re-check after the URL expires must remove it).
        client.delete(item.owner, doc_id)
        if item.variant == 2:
            client.put(ticket, item.body)
            counters.inc("late_puts")
        return
    if sc == Scenario.DUPLICATE and item.variant == 0:
        # The same content requested again while the first is still pending: same document.
        again = client.request(item)
        if again.document.id != doc_id or not again.deduplicated:
            raise AssertionError(f"pending duplicate made document {again.document.id}")
        counters.inc("dedup_pending")
        ticket = again
    client.put(ticket, item.body)
    if sc == Scenario.LOST_CONFIRM:
        return
    if sc == Scenario.TAMPERED:
        # Replace the object behind the system's back (the workers' HeadObject must notice):
        # same size with other bytes, or another size.
        other = bytes(b ^ 0x5A for b in item.body)
        if item.variant == 0:
            other = other[: max(1, len(other) // 2)]
        tamper.put_object(
            Bucket=run.settings.s3_bucket,
            Key=ticket.document.object_key,
            Body=other,
            ContentType=item.content_type,
        )
    try:
        client.confirm(item, doc_id)
    except InvalidState as exc:
        # Only if the URL expired before the confirm got through (a long outage).
        counters.inc("confirm_too_late")
        result.expected = None
        result.note = f"confirm refused: {exc}"
        return
    if sc == Scenario.DUPLICATE and item.variant != 0:
        again = client.request(item)
        if again.document.id != doc_id or again.url is not None:
            raise AssertionError(f"duplicate of {doc_id} made document {again.document.id}")
        counters.inc("dedup_stored")
    if sc == Scenario.DELETE_IN_FLIGHT:
        client.delete(item.owner, doc_id)
    elif sc == Scenario.DELETE_AFTER:
        run.defer_delete(item.owner, doc_id)
    elif sc == Scenario.OVER_QUOTA and item.variant == 0:
        # Free some of the small quota again, so the owner keeps being near its limit.
        client.delete(item.owner, doc_id)
        result.expected = DocumentStatus.DELETED


# -- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def _servers(
    data_dir: Path, stack: EmbeddedStack | None
) -> Iterator[tuple[Settings, EmbeddedStack | None]]:
    """Base settings of the servers to use, and the stack when its servers are ours."""
    if stack is not None:
        yield settings_from(stack.urls.env()), stack
        return
    with servers(data_dir / "servers") as (env, own):
        yield settings_from(env), own


def _run_settings(base: Settings, config: ChaosConfig, token: str) -> Settings:
    return Settings(
        **{
            **base.model_dump(),
            "key_prefix": f"chaos-{token}/",
            "queue_name": f"chaos{token}",
            "upload_url_ttl_seconds": config.upload_url_ttl_seconds,
            "verify_deadline_seconds": config.verify_deadline_seconds,
            "redispatch_after_seconds": config.redispatch_after_seconds,
            "actor_time_limit_seconds": config.actor_time_limit_seconds,
            "relay_poll_seconds": config.relay_poll_seconds,
            "sweeper_interval_seconds": config.sweeper_interval_seconds,
            "purge_grace_seconds": config.purge_grace_seconds,
            "retry_base_seconds": config.retry_base_seconds,
            "retry_max_seconds": config.retry_max_seconds,
            "max_failures": config.max_failures,
            "worker_pool_size": config.worker_pool_size,
            "relay_metrics_port": 0,
            "sweeper_metrics_port": 0,
            "worker_metrics_port": 0,
            "max_upload_bytes": max(config.max_size * 2, 1024 * 1024),
        }
    )


def _unsettled(settings: Settings) -> int | None:
    """Documents in a transitional state plus unfinished events (None: database away)."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as c:
            row = c.execute(
                "SELECT (SELECT count(*) FROM s3outbox.documents"
                "        WHERE status IN ('pending', 'uploaded', 'deleting'))"
                "     + (SELECT count(*) FROM s3outbox.events"
                "        WHERE status IN ('pending', 'dispatched'))"
            ).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def _wait_settled(settings: Settings, timeout: float, say: Callable[[str], None]) -> bool:
    """Poll until no document is in a transitional state and no event is unfinished
    (including events scheduled for later, e.g. the purge re-check after a URL expires)."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        left = _unsettled(settings)
        if left == 0:
            return True
        now = time.monotonic()
        if now >= deadline:
            say(f"not settled after {timeout:.0f}s: {left} rows still waiting")
            return False
        if now - last_report >= 10:
            say(f"settling: {left} documents/events still waiting")
            last_report = now
        time.sleep(0.5)  # polling interval of the settle condition


def _check_expectations(settings: Settings, results: list[ItemResult]) -> list[str]:
    ids = [r.document_id for r in results if r.document_id is not None]
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT id, status, reason FROM s3outbox.documents WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    status = {r[0]: (r[1], r[2]) for r in rows}
    failures = []
    for r in results:
        if r.document_id is None or r.expected is None:
            continue
        got, reason = status.get(r.document_id, ("missing", None))
        if got != r.expected:
            failures.append(
                f"{r.item.scenario.value} item {r.item.index} document {r.document_id}: "
                f"expected {r.expected.value}, got {got}" + (f" ({reason})" if reason else "")
            )
    return failures


def run_chaos(
    config: ChaosConfig,
    *,
    stack: EmbeddedStack | None = None,
    out: IO[str] | None = None,
) -> ChaosResult:
    """Run the whole chaos experiment and return what it found (see the module docstring).

    ``stack``: servers to use (and to restart as faults); otherwise embedded ones are
    started for the run, or the ones S3OUTBOX_* names are used without server faults.
    """
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"[chaos {time.monotonic() - t0:6.1f}s] {text}", file=out, flush=True)

    t0 = time.monotonic()
    own_dir = config.data_dir is None
    data_dir = Path(config.data_dir or tempfile.mkdtemp(prefix="s3o-chaos-")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(config=config, data_dir=str(data_dir))
    token = uuid.uuid4().hex[:8]
    with _servers(data_dir, stack) as (base, servers):
        say(
            f"servers: {'embedded' if servers is not None else 'given'}; seed {config.seed}, "
            f"{config.documents} documents, {config.threads} client threads"
        )
        real = _run_settings(base, config, token)
        ensure_bucket(real)
        with psycopg.connect(real.database_url, autocommit=True) as conn:
            migrate(conn)
        proxy = FaultProxy(real.s3_endpoint_url, config.storage, seed=config.seed).start()
        # Workers reach storage through the proxy; URLs stay signed for the real endpoint.
        worker_settings = Settings(
            **{
                **real.model_dump(),
                "s3_endpoint_url": proxy.url,
                "s3_public_endpoint_url": real.s3_endpoint_url,
            }
        )
        logdir = data_dir / "logs"
        logdir.mkdir(exist_ok=True)
        procs = supervisor(worker_settings, logdir)
        load_done = threading.Event()
        scheduler = FaultScheduler(config, procs, servers, proxy, load_done)
        run = ChaosRun(config, real, Storage(real))
        try:
            with psycopg.connect(real.database_url) as conn:
                for i in range(config.quota_owners):
                    run.outbox.set_limit(
                        conn, owner_id=f"chaos-quota-{i}", limit_bytes=config.quota_limit_bytes
                    )
                conn.commit()
            start_processes(procs, config)
            say(f"processes started; storage proxy {proxy.url} -> {real.s3_endpoint_url}")

            items = make_items(config)
            for item in items:
                run.work.put(item)
            tamper = make_client(real, real.s3_endpoint_url)
            load_start = time.monotonic()
            rate = config.rate_per_second

            def start_at(index: int) -> float:
                return load_start + (index / rate if rate else 0.0)

            threads = [
                threading.Thread(
                    target=client_thread, args=(run, tamper, start_at), name=f"chaos-client-{n}"
                )
                for n in range(config.threads)
            ]
            for t in threads:
                t.start()

            def watch_load() -> None:
                progress_at = time.monotonic()
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=1.0)
                    if time.monotonic() - progress_at >= 10:
                        progress_at = time.monotonic()
                        say(
                            f"load: {len(run.results)}/{config.documents} documents, "
                            f"faults {dict(scheduler.counts)}"
                        )
                result.load_seconds = time.monotonic() - load_start
                say(f"load finished in {result.load_seconds:.1f}s")
                load_done.set()
                if not scheduler.todo:
                    scheduler.stop_event.set()

            watcher = threading.Thread(target=watch_load, name="chaos-load", daemon=True)
            watcher.start()
            # Faults run in the main thread: servers it restarts get the parent-death signal
            # (worker.supervisor sets it only for children of the main thread).
            scheduler.run()
            watcher.join()
            proxy.enabled = False
            # Restore anything down: servers first, then processes.
            if servers is not None:
                for server in servers.servers:
                    if not server.running:
                        server.start()
            if restarted := start_processes(procs, config):
                say(f"restarted {', '.join(restarted)}")
            settle_start = time.monotonic()
            say("faults stopped; waiting for the system to settle")
            result.settled = _wait_settled(real, config.settle_timeout_seconds, say)
            result.settle_seconds = time.monotonic() - settle_start
            say("checking invariants")
            check_start = time.monotonic()
            result.report = check_invariants(real, settled=True)
            result.expectation_failures = _check_expectations(real, run.results)
            result.check_seconds = time.monotonic() - check_start
        finally:
            scheduler.stop_event.set()
            load_done.set()
            procs.stop_all()
            proxy.stop()
        faults = {k: scheduler.counts.get(k, 0) for k in scheduler.kinds}
        faults.update({f"storage_{k}": v for k, v in proxy.faults().items()})
        result.faults = faults
        result.clients = dict(sorted(run.counters.c.items()))
        result.scenarios = dict(Counter(r.item.scenario.value for r in run.results))
        result.errors = run.errors + scheduler.errors
    result.elapsed_seconds = time.monotonic() - t0
    if own_dir and not config.keep_data and result.ok:
        shutil.rmtree(data_dir, ignore_errors=True)
        result.data_dir = ""
    return result


# -- the table ---------------------------------------------------------------------------


def format_table(result: ChaosResult) -> str:
    """The run's outcome as a plain-text table."""
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    report = result.report
    section("documents by final state")
    for status, n in sorted((report.documents if report else {}).items()):
        rows.append((f"  {status}", str(n)))
    section("events by final state")
    for status, n in sorted((report.events if report else {}).items()):
        rows.append((f"  {status}", str(n)))
    section("faults injected")
    for kind, n in result.faults.items():
        rows.append((f"  {kind}", str(n)))
    section("load")
    for name, n in sorted(result.scenarios.items()):
        rows.append((f"  scenario {name}", str(n)))
    for name, n in result.clients.items():
        if not name.startswith("scenario:"):
            rows.append((f"  {name}", str(n)))
    section("invariants")
    if report is not None:
        for check in report.checks:
            rows.append((f"  {check.name}", "PASS" if check.passed else "FAIL"))
        passed = sum(c.passed for c in report.checks)
        rows.append(("  checks passed / failed", f"{passed} / {len(report.checks) - passed}"))
        rows.append(("  events lost", str(report.lost_events)))
        rows.append(("  orphan objects", str(len(report.orphan_objects))))
        rows.append(("  quota mismatches", str(report.quota_mismatches)))
        rows.append(("  objects in bucket (run prefix)", str(report.objects_listed)))
    rows.append(("  scenario expectations failed", str(len(result.expectation_failures))))
    rows.append(("  harness errors", str(len(result.errors))))
    rows.append(("  settled", "yes" if result.settled else "NO"))
    section("time")
    rows.append(("  load", f"{result.load_seconds:.1f}s"))
    rows.append(("  settle", f"{result.settle_seconds:.1f}s"))
    rows.append(("  check", f"{result.check_seconds:.1f}s"))
    rows.append(("  elapsed", f"{result.elapsed_seconds:.1f}s"))
    rows.append(("RESULT", "OK" if result.ok else "FAILED"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{name:<{width}}{value:>8}" if value else name for name, value in rows]
    details: list[str] = []
    if report is not None and not report.ok:
        details.append(report.summary())
    details.extend(f"expectation: {f}" for f in result.expectation_failures[:20])
    details.extend(f"error: {e}" for e in result.errors[:20])
    if result.data_dir:
        details.append(f"logs and data kept in {result.data_dir}")
    return "\n".join(lines + (["", *details] if details else []))


def main_chaos(
    documents: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    json_path: str | None = None,
    keep_data: bool = False,
) -> int:
    """The full run; prints the table; 0 only if nothing broke."""
    # The library logs every call at INFO: thousands of lines that would bury the table.
    logging.getLogger("s3outbox.api").setLevel(logging.WARNING)
    config = ChaosConfig(keep_data=keep_data)
    if documents is not None:
        config.documents = documents
    if seed is not None:
        config.seed = seed
    if threads is not None:
        config.threads = threads
    result = run_chaos(config)
    print(format_table(result), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``make chaos`` / ``python -m harness.chaos [--documents N] [--seed S] ...``."""
    import argparse

    from outbox.logs import configure as configure_logging

    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__)
    parser.add_argument("--documents", type=int, default=None, help="documents (default 2000)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of load and faults (default 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="client threads (default 8)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--keep-data", action="store_true", help="keep servers' data and logs")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return main_chaos(
        documents=args.documents,
        seed=args.seed,
        threads=args.threads,
        json_path=args.json,
        keep_data=args.keep_data,
    )


if __name__ == "__main__":
    raise SystemExit(main())
