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
}

DEFAULT_SHARES: dict[str, float] = {
    Scenario.NORMAL: 0.32,
    Scenario.SHARED: 0.08,
    Scenario.DELETE_AFTER: 0.08,
    Scenario.DELETE_IN_FLIGHT: 0.10,
    Scenario.DUPLICATE: 0.08,
    Scenario.ABANDONED: 0.07,
    Scenario.LOST_CONFIRM: 0.08,
    Scenario.OVER_QUOTA: 0.12,
    Scenario.TAMPERED: 0.07,
}


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
    #: The longest a PUT may take: a document's purge is re-checked this long after its URL
    #: expired, which the run waits for when it settles (the clients' PUTs take far less).
    max_upload_seconds: float = 10.0
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
