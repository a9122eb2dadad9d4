"""What a bench run measures (``BenchConfig``) and the fixed shape of its work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
#: The parts of a run, in order; the targets need all of them.
PARTS = ("limits", "api", "end_to_end", "peers")

CONTENT_TYPE = "application/octet-stream"
OBJECT_BYTES = 1024
OWNER = "bench-owner"
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
    api_calls: int = 1000
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
            mode="quick",
        )
