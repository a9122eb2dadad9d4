"""What a chaos run can be told, and what each scenario of its load must end as."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from harness.faultproxy import FaultRates
from outbox import DocumentStatus


class Scenario(StrEnum):
    """What one client does with one document, and so what it must end as."""

    NORMAL = "normal"  # request, PUT, confirm -> available
    DELETE_AFTER = "delete_after_available"  # ... then delete once available -> deleted
    DELETE_IN_FLIGHT = "delete_in_flight"  # delete while pending/uploaded -> deleted
    DUPLICATE = "duplicate"  # the same request twice (a retry) -> one document, available
    # The same content under a second document (issue 12): the same owner with another name
    # and type, while the first uploads (it waits) or once it is confirmed, then the first
    # deleted; or, once the first is available, its delete racing the second request; or
    # another owner (its own upload, then a dedup shares the blob), the first owner's
    # document deleted at once on odd items (racing that dedup). Every second document ends
    # available; the first available, or deleted where deleted.
    SHARED = "shared_content"
    ABANDONED = "abandoned"  # request, never PUT -> expired
    LOST_CONFIRM = "lost_confirm"  # PUT, never confirm -> the sweeper finds it: available
    OVER_QUOTA = "over_quota"  # an owner with a small limit: some requests refused
    TAMPERED = "tampered"  # object overwritten behind the system's back -> rejected
    # A PUT started just before its (short) URL expires, its body sent slowly, the last bytes
    # only once the sweeper expired the document: storage still accepts it -> expired, and
    # the purge re-check after the longest upload removes the object.
    SLOW_UPLOAD = "slow_upload_past_expiry"
    # The signed PUT plus an unsigned header storage keeps (Content-Encoding: gzip on gzip
    # bytes, Cache-Control: public, ...) -> rejected, naming the header; object purged.
    EXTRA_HEADERS = "extra_headers"
    # Confirmed while another app transaction holds the owner's quota row for longer than
    # db_lock_timeout_seconds: the verify attempts fail on the lock timeout and are retried
    # -> available.
    QUOTA_HELD = "quota_held"
    # A file above the multipart threshold, uploaded in parts (harness/chaos/multipart.py):
    # complete -> available; a part reported but never sent -> rejected; deleted or left
    # midway -> deleted or expired; every upload in progress aborted in the end.
    MULTIPART = "multipart"


EXPECTED: dict[Scenario, DocumentStatus] = {
    Scenario.NORMAL: DocumentStatus.AVAILABLE,
    Scenario.DELETE_AFTER: DocumentStatus.DELETED,
    Scenario.DELETE_IN_FLIGHT: DocumentStatus.DELETED,
    Scenario.DUPLICATE: DocumentStatus.AVAILABLE,
    Scenario.SHARED: DocumentStatus.AVAILABLE,
    Scenario.ABANDONED: DocumentStatus.EXPIRED,
    Scenario.LOST_CONFIRM: DocumentStatus.AVAILABLE,
    Scenario.OVER_QUOTA: DocumentStatus.AVAILABLE,
    Scenario.TAMPERED: DocumentStatus.REJECTED,
    Scenario.SLOW_UPLOAD: DocumentStatus.EXPIRED,
    Scenario.EXTRA_HEADERS: DocumentStatus.REJECTED,
    Scenario.QUOTA_HELD: DocumentStatus.AVAILABLE,
    Scenario.MULTIPART: DocumentStatus.AVAILABLE,  # the variant decides (multipart.py)
}

DEFAULT_SHARES: dict[str, float] = {
    Scenario.NORMAL: 0.305,
    Scenario.SHARED: 0.08,
    Scenario.DELETE_AFTER: 0.08,
    Scenario.DELETE_IN_FLIGHT: 0.10,
    Scenario.DUPLICATE: 0.08,
    Scenario.ABANDONED: 0.07,
    Scenario.LOST_CONFIRM: 0.08,
    Scenario.OVER_QUOTA: 0.12,
    Scenario.TAMPERED: 0.07,
    Scenario.SLOW_UPLOAD: 0.02,
    Scenario.EXTRA_HEADERS: 0.03,
    Scenario.QUOTA_HELD: 0.02,
    Scenario.MULTIPART: 0.015,
}

#: Faults the scheduler injects (storage faults are the proxy's): their default weights.
DEFAULT_FAULT_WEIGHTS: dict[str, float] = {
    "kill_relay": 1.0,
    "kill_worker": 1.5,
    "kill_sweeper": 0.7,
    "restart_valkey": 1.0,
    "restart_postgres": 1.0,
    # Every worker stopped for longer than the rescue budget, then started again.
    "worker_outage": 0.1,
    # A window in which storage answers 403 to the workers' object requests.
    "storage_403": 0.3,
}


@dataclass
class ChaosConfig:
    """Everything a chaos run can be told. The defaults are the full run (`make chaos`)."""

    #: Documents of the run; ignored with ``duration_minutes``.
    documents: int = 2000
    #: A soak: load and faults for this many minutes instead of a document count.
    duration_minutes: float | None = None
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
    fault_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULT_WEIGHTS))
    restart_delay_min_seconds: float = 0.2
    restart_delay_max_seconds: float = 2.0
    #: Make every fault kind (processes, servers, storage) happen at least once.
    ensure_every_fault: bool = True
    storage: FaultRates = field(default_factory=FaultRates)

    #: How long a worker outage lasts; None: 1.25 x the rescue budget (max_failures x
    #: redispatch_after_seconds), the time in which the old rescue made every event dead.
    worker_outage_seconds: float | None = None
    #: How long storage answers 403 in one ``storage_403`` window.
    storage_403_seconds: float = 5.0

    # The system's timings: short, so abandoned uploads expire within the run, and scaled,
    # so a worker outage outlasts the rescue budget within the run.
    upload_url_ttl_seconds: int = 20
    #: The URL lifetime of a slow upload (it starts its PUT just before that runs out).
    slow_upload_ttl_seconds: int = 4
    verify_deadline_seconds: float = 10.0
    redispatch_after_seconds: float = 4.0
    actor_time_limit_seconds: float = 3.0
    relay_poll_seconds: float = 0.5
    sweeper_interval_seconds: float = 1.0
    purge_grace_seconds: float = 1.0
    #: The longest a PUT may take: a document's purge is re-checked this long after its URL
    #: expired, which the run waits for when it settles. A slow upload keeps its last bytes
    #: until its document is expired, for at most this less 3 s (so it lands before the
    #: re-check): long enough for the sweeper and an expire attempt through storage faults
    #: and a worker outage (not always through the 60 s after which Dramatiq hands on the
    #: messages a SIGKILLed worker had fetched: its heartbeat timeout, not scaled here).
    max_upload_seconds: float = 30.0
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 3.0
    #: Small, so the rescue budget (x redispatch_after_seconds) is short; large enough for
    #: the failures an event can really collect: a SIGKILL or PostgreSQL restart mid-attempt
    #: (one each), a time limit, and at most two from one quota hold (see quota_hold_seconds).
    max_failures: int = 5
    #: ``lock_timeout`` of the processes' sessions, short so that a quota hold outlasts it.
    db_lock_timeout_seconds: float = 1.0
    #: How long a ``quota_held`` app transaction holds its owner's quota row: 3 x the lock
    #: timeout. Kept short rather than max_failures raised (which would lengthen the rescue
    #: budget and so every outage): a verify with the relay's hint waits out the timeout twice
    #: per attempt (fast path, then general path), so only an attempt that starts in the first
    #: third of the hold fails, once; an attempt without the hint (expire, purge) fails when it
    #: starts in the first two thirds, so at most twice. At most 2 of max_failures.
    quota_hold_seconds: float = 3.0
    #: Back-pressure: small, so an outage's backlog waits in PostgreSQL, not in Redis.
    relay_max_in_flight: int = 200
    worker_processes: int = 2
    worker_threads: int = 4
    worker_pool_size: int = 4
    #: Also run a relay and a one-process worker that no process fault kills (an outage
    #: freezes that worker with SIGSTOP), so their RSS shows memory over the whole run.
    witnesses: bool = False

    #: Seconds between two printed figures (documents/s, faults, dead, lost, RSS).
    figures_seconds: float = 60.0
    #: Longest the system may go without settling anything after the load (a backlog that
    #: keeps draining is waited for, up to ``settle_max_seconds``): the settle fails then.
    settle_timeout_seconds: float = 300.0
    #: Longest wait for the system to settle after the load, progress or not.
    settle_max_seconds: float = 1800.0
    #: Longest a client retries one call while PostgreSQL or storage is away.
    client_retry_seconds: float = 90.0
    data_dir: Path | None = None
    keep_data: bool = False

    @property
    def rescue_budget_seconds(self) -> float:
        """How long the old rescue took to make an event dead without any worker starting it
        (max_failures rescues, redispatch_after_seconds apart)."""
        return self.max_failures * self.redispatch_after_seconds

    @property
    def outage_seconds(self) -> float:
        """How long one worker outage lasts."""
        if self.worker_outage_seconds is not None:
            return self.worker_outage_seconds
        return 1.25 * self.rescue_budget_seconds
