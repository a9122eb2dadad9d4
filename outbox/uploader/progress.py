"""Bytes sent so far: a tqdm bar on a terminal (stderr), and an optional callback.

tqdm is an optional extra (``s3-outbox[progress]``): the library imports without it, and
the bar is then simply not shown."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

#: ``on_progress(bytes_done, bytes_total)``, called from the upload threads.
ProgressCallback = Callable[[int, int], None]


def _tqdm() -> Any | None:
    """tqdm's bar class, or None when it is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        # The optional extra: pip install 's3-outbox[progress]'. Without it, no bar.
        return None
    return tqdm


def require_bar(enabled: bool | None) -> None:
    """Raise ``ImportError`` when a bar is asked for explicitly (``enabled=True``) and tqdm
    is not installed; ``None`` (a bar on a terminal if possible) never raises."""
    if enabled and _tqdm() is None:
        raise ImportError(
            "the upload progress bar needs tqdm: pip install 's3-outbox[progress]'"
            " (or pass progress=None or False)"
        )


class Progress:
    """Thread-safe byte counts of one upload. The bar shows only when ``enabled`` is True,
    or when it is None, stderr is a terminal and tqdm is installed (never in logs or
    pipes). Bytes of an attempt that failed are taken back, so the bar never passes the
    file's size."""

    def __init__(
        self,
        total: int,
        *,
        label: str,
        enabled: bool | None = None,
        callback: ProgressCallback | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()
        show = sys.stderr.isatty() if enabled is None else enabled
        tqdm = _tqdm() if show else None
        if enabled and tqdm is None:
            require_bar(enabled)
        self._bar: Any = None
        if tqdm is not None:
            self._bar = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def add(self, nbytes: int) -> None:
        """``nbytes`` more sent (negative: an attempt's bytes taken back)."""
        with self._lock:
            self.done += nbytes
            done = self.done
            if self._bar is not None:
                self._bar.update(nbytes)
        if self._callback is not None:
            self._callback(done, self.total)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
