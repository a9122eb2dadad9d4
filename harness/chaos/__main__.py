"""``make chaos`` / ``python -m harness.chaos [--documents N | --duration MINUTES] ...``."""

from __future__ import annotations

import argparse

import harness.chaos
from harness.chaos.run import main_chaos
from outbox import Settings
from outbox.logs import configure as configure_logging


def main(argv: list[str] | None = None) -> int:
    """``make chaos`` / ``python -m harness.chaos [--documents N | --duration MINUTES] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.chaos", description=harness.chaos.__doc__
    )
    parser.add_argument("--documents", type=int, default=None, help="documents (default 2000)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of load and faults (default 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="client threads (default 8)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="MINUTES",
        help="a soak: load and faults for MINUTES (instead of --documents), figures every"
        " minute, then settle and check everything",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--keep-data", action="store_true", help="keep servers' data and logs")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return main_chaos(
        documents=args.documents,
        seed=args.seed,
        threads=args.threads,
        json_path=args.json,
        keep_data=args.keep_data,
        duration_minutes=args.duration,
    )


if __name__ == "__main__":
    raise SystemExit(main())
