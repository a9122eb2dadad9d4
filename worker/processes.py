"""The processes of an s3-outbox deployment, in code: ``s3-outbox run`` starts these, and the
``Procfile`` at the top of the repository lists the same lines (a test checks they match)."""

from __future__ import annotations

import shlex
import sys

#: name -> command, as a Procfile line says it (console scripts on PATH).
PROCESSES: dict[str, list[str]] = {
    "relay": ["s3-outbox", "relay"],
    "worker": ["dramatiq", "worker.actors", "--processes", "2", "--threads", "8"],
    "sweeper": ["s3-outbox", "sweeper"],
    "web": ["s3-outbox", "api"],
}

#: Console scripts -> the same program through this interpreter, so a child runs in the
#: environment s3-outbox is installed in, wherever it is started from.
_MODULES = {"s3-outbox": "worker.cli", "dramatiq": "dramatiq"}


def procfile() -> str:
    """The Procfile text for ``PROCESSES``."""
    return "".join(f"{name}: {shlex.join(argv)}\n" for name, argv in PROCESSES.items())


def command(name: str, *, processes: int | None = None, threads: int | None = None) -> list[str]:
    """``name``'s command run by this Python (``python -m ...``). ``processes``/``threads``
    replace the worker's defaults."""
    program, *args = PROCESSES[name]
    if name == "worker":
        args = ["worker.actors", "--processes", str(processes or 2), "--threads", str(threads or 8)]
    return [sys.executable, "-m", _MODULES[program], *args]
