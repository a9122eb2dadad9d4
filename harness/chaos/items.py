"""The run's work: one item per document, drawn from the seed, and what became of each."""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass

from harness.chaos.config import ChaosConfig, Scenario
from outbox import DocumentStatus

_CONTENT_TYPES = ("text/plain", "application/octet-stream", "application/json", "text/csv")


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
    #: A second document of the item (a shared-content scenario makes two): checked like the
    #: first, not counted as an item.
    extra: bool = False


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
