"""Progress bars for long operator commands (reconcile, quota audit, chaos), via tqdm.

Bars go to stderr and only when it is a terminal, so JSON output and CI logs stay clean.
tqdm is an optional extra (``s3-outbox[progress]``): without it the commands show none.
"""

from __future__ import annotations

from typing import Any


class _NoBar:
    """What ``bar`` gives when tqdm is not installed: counts nothing, shows nothing."""

    def update(self, n: float | None = 1) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def bar(enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    """A counter bar (``update``, ``close``); a no-op unless ``enabled``, stderr is a
    terminal and tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        # The optional extra: pip install 's3-outbox[progress]'. Without it, no bar.
        return _NoBar()
    return tqdm(desc=desc, unit=unit, total=total, disable=None if enabled else True, leave=False)
