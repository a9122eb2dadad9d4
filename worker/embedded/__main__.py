"""``python -m worker.embedded`` (``s3-outbox dev-servers``): the embedded servers in the
foreground, on the fixed default ports that ``Settings`` expects, until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from worker.embedded.process import DevStackError
from worker.embedded.stack import DEFAULT_DATA_DIR, EmbeddedStack, StackPorts


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    """Run the dev stack in the foreground until Ctrl-C / SIGTERM."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="s3-outbox dev-servers",
        description="Run PostgreSQL, Valkey and SeaweedFS (S3) locally from PyPI wheels.",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--free-ports", action="store_true", help="use free ports, not the fixed defaults"
    )
    parser.add_argument("--fsync", action="store_true", help="durable PostgreSQL (fsync=on)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if not started:
            raise KeyboardInterrupt  # abort a start in progress; `finally` stops what ran

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = EmbeddedStack(
        args.data_dir, None if args.free_ports else StackPorts.defaults(), fsync=args.fsync
    )
    code = 0
    try:
        print(f"starting dev servers in {stack.data_dir} ...", file=out, flush=True)
        urls = stack.start()
        started = True
        for key, value in urls.env().items():
            print(f"export {key}={shlex.quote(value)}", file=out)
        pids = ", ".join(f"{name}={pid}" for name, pid in stack.pids().items())
        print(f"# ready ({pids}); logs in {stack.data_dir}/*/server.log", file=out)
        print("# press Ctrl-C to stop", file=out, flush=True)
        while not stop.wait(1.0):
            dead = stack.dead_servers()
            if dead:
                print(f"server(s) exited unexpectedly: {', '.join(dead)}", file=sys.stderr)
                code = 1
                break
    except DevStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        started = True  # a second Ctrl-C must not interrupt stopping
        print("stopping dev servers ...", file=out, flush=True)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
