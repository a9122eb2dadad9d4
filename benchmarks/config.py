"""What a bench run measures (``BenchConfig``) and the fixed shape of its work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
#: The parts of a run, in order; the targets need all of them.
PARTS = ("limits", "api", "relay", "notify", "flat", "end_to_end", "peers", "multipart")

CONTENT_TYPE = "application/octet-stream"
OBJECT_BYTES = 1024
OWNER = "bench-owner"
MIB = 1024 * 1024
OWNERS = 100  # documents spread over many owners, as uploads from many users are
CONFIRM_CHUNK = 50  # confirms per transaction in a backlog (stays under 64 subtransactions)


@dataclass
class BenchConfig:
    """What to run. ``quick()`` is a smoke version that finishes in well under a minute."""

    rounds: int = 3
    window_seconds: float = 2.0
    sizes: tuple[int, ...] = (1000, 10000)
    processes: tuple[int, ...] = (1, 2)
    threads: int = 8
    steady_rate: float = 100.0
    steady_seconds: float = 10.0
    peer_size: int = 1000
    #: The peers' HeadObject: boto3's head_object, as their users write the job, and ours.
    peer_heads: tuple[str, ...] = ("boto3", "lean")
    api_calls: int = 1000
    #: The API at concurrency: client threads, seconds per phase (bare INSERT, then the calls).
    api_clients: int = 8
    api_clients_seconds: float = 3.0
    #: Relay alone: pending verify events dispatched per round, by 1 and 2 relays.
    relay_events: int = 100_000
    relay_counts: tuple[int, ...] = (1, 2)
    #: Commit throughput with and without NOTIFY: clients, seconds per round.
    notify_clients: int = 8
    notify_seconds: float = 3.0
    #: Flat as data grows: deleted documents of one owner beside an owner with none, done
    #: events beside an empty table, seconds a transaction holds the xmin horizon back.
    list_deleted: int = 1_000_000
    scrape_done: int = 10_000_000
    xmin_seconds: float = 60.0
    # Large files (part 5): file sizes in MiB (the largest beyond S3's 5 GiB single PUT),
    # parts sent at once, and the multipart threshold and part size in MiB (None: the
    # settings' defaults, 100 and 16).
    multipart_sizes_mib: tuple[int, ...] = (1024, 6144)
    multipart_rounds: int = 2
    multipart_threads: int = 4
    multipart_threshold_mib: int | None = None
    multipart_part_mib: int | None = None
    mode: str = "full"

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            rounds=2,
            window_seconds=0.2,
            sizes=(60,),
            processes=(1, 2),
            steady_rate=50.0,
            steady_seconds=0.6,
            peer_size=40,
            api_calls=50,
            api_clients_seconds=0.5,
            relay_events=2_000,
            notify_seconds=0.5,
            list_deleted=20_000,
            scrape_done=50_000,
            xmin_seconds=3.0,
            multipart_sizes_mib=(12, 23),
            multipart_rounds=1,
            multipart_threshold_mib=5,
            multipart_part_mib=5,
            mode="quick",
        )
