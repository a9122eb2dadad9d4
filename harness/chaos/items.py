"""The run's work: one item per document, drawn from the seed, and what became of each."""

from __future__ import annotations

import gzip
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
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.body).hexdigest()

    def release_body(self) -> None:
        """Forget the body once the item is played (a soak plays tens of thousands)."""
        self.body = b""


@dataclass
class ItemResult:
    item: Item
    document_id: uuid.UUID | None = None
    expected: DocumentStatus | None = None
    #: Words the document's reason must contain (e.g. the header a rejection names).
    expected_reason: str | None = None
    note: str = ""
    #: A second document of the item (a shared-content scenario makes two): checked like the
    #: first, not counted as an item.
    extra: bool = False


def make_item(config: ChaosConfig, index: int) -> Item:
    """Item ``index`` of the run, the same for the same seed (drawn from the seed and the
    index alone, so a soak can draw as many as it needs). The first items play every
    scenario with a share once, in a seeded order, so a short run covers them all."""
    rng = random.Random(f"{config.seed}:item:{index}")
    names = [n for n in config.shares if config.shares[n] > 0]
    first = sorted(names)
    random.Random(f"{config.seed}:first").shuffle(first)
    if index < len(first):
        scenario = Scenario(first[index])
    else:
        scenario = Scenario(rng.choices(names, [config.shares[n] for n in names])[0])
    if scenario == Scenario.OVER_QUOTA:
        owner = f"chaos-quota-{rng.randrange(max(config.quota_owners, 1))}"
    else:
        owner = f"chaos-user-{rng.randrange(max(config.owners, 1))}"
    size = rng.randint(config.min_size, config.max_size)
    # Unique content per item (the index is in it): only DUPLICATE repeats content.
    body = f"chaos {config.seed} item {index}\n".encode() + rng.randbytes(size)
    content_type = rng.choice(_CONTENT_TYPES)
    variant = rng.randrange(3)
    if scenario == Scenario.MULTIPART:
        body = b""  # megabytes: drawn when played (harness/chaos/multipart.py)
    elif scenario == Scenario.EXTRA_HEADERS and variant == 0:
        # Declared, signed and uploaded as gzip bytes, with Content-Encoding: gzip added.
        body = gzip.compress(body, mtime=0)
        content_type = "application/octet-stream"
    return Item(index, scenario, owner, body, content_type, variant)


def make_items(config: ChaosConfig) -> list[Item]:
    """The items of a run of ``config.documents`` documents."""
    return [make_item(config, i) for i in range(config.documents)]
