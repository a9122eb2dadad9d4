"""Event handling: what a worker does with one outbox event.

``processor`` picks the handler of the event's topic (``verify``, ``expire``, ``purge``,
``multipart_create``, ``dedup``);
``lifecycle`` moves the event itself (lock, complete, snooze, fail); ``documents`` makes the
document and quota changes; ``observe`` looks at the object in storage.
"""

from worker.events.lifecycle import Outcome, backoff_seconds
from worker.events.processor import EventProcessor

__all__ = ["EventProcessor", "Outcome", "backoff_seconds"]
