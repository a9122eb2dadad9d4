"""Progress bars for long operator commands (reconcile, quota audit, chaos), via tqdm.

Bars go to stderr and only when it is a terminal, so JSON output and CI logs stay clean.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def bar(enabled: bool, desc: str, unit: str, total: int | None = None) -> tqdm[Any]:
    """A counter bar; a no-op unless ``enabled`` and stderr is a terminal."""
    return tqdm(desc=desc, unit=unit, total=total, disable=None if enabled else True, leave=False)
