"""What every handler works with: the settings, the database pool and storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import ConnectionPool

from outbox.settings import Settings
from worker.storage import Storage


@dataclass(frozen=True)
class Context:
    settings: Settings
    pool: ConnectionPool[Any]
    storage: Storage
