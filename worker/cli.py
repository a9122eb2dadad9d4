"""The ``s3-outbox`` command: migrate, relay, sweeper, worker, events, status, run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from outbox import queries
from outbox.db import migrate
from outbox.logs import configure as configure_logging
from outbox.settings import Settings

log = logging.getLogger("s3outbox.cli")


def _settings() -> Settings:
    return Settings()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        migrate(conn)
    print("schema applied")
    return 0


def _run_service(name: str, args: argparse.Namespace) -> int:
    """Run the relay or the sweeper: one round with --once, else until SIGTERM/SIGINT."""
    from worker import metrics
    from worker.relay import Relay
    from worker.service import Runner, Service
    from worker.sweeper import Sweeper

    settings = _settings()
    service: Service = Relay(settings) if name == "relay" else Sweeper(settings)
    if args.once:
        print(f"{name}: {service.run_once()} rows")
        service.close()
        return 0
    default_port = settings.relay_metrics_port if name == "relay" else settings.sweeper_metrics_port
    metrics.serve(settings, args.metrics_port or default_port, with_database=True)
    runner = Runner(service)
    runner.install_signal_handlers()
    runner.run_forever()
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    return _run_service("relay", args)


def cmd_sweeper(args: argparse.Namespace) -> int:
    return _run_service("sweeper", args)


def cmd_worker(args: argparse.Namespace) -> int:
    """Convenience: the ordinary Dramatiq CLI on worker.actors."""
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "worker.actors",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
    ]
    os.execv(sys.executable, argv)  # noqa: S606 (no shell: argv is ours)
    return 0  # pragma: no cover


def cmd_events_retry(args: argparse.Namespace) -> int:
    settings = _settings()
    statuses = ["dead"] if args.dead or args.id is None else ["dead", "pending", "dispatched"]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        rows = conn.execute(
            queries.load("worker")["retry_events"],
            {"statuses": statuses, "topic": args.topic, "id": args.id},
        ).fetchall()
    print(f"{len(rows)} events back to pending")
    return 0 if rows or args.id is None else 1


def status_report(settings: Settings) -> dict[str, Any]:
    """Backlog by topic and state, lag, dead events and the top quotas."""
    q = queries.load("worker")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        events = conn.execute(q["event_counts"]).fetchall()
        docs = conn.execute(q["document_counts"]).fetchall()
        lag = conn.execute(q["event_lag"]).fetchone()
        dead = conn.execute(q["dead_events"], {"limit": 20}).fetchall()
        top = conn.execute(q["quota_top"], {"limit": 10}).fetchall()
    assert lag is not None
    return {
        "events": [{"topic": t, "status": s, "count": n} for t, s, n in events],
        "documents": {s: n for s, n in docs},
        "oldest_pending_seconds": round(lag[0], 3),
        "oldest_dispatched_seconds": round(lag[1], 3),
        "dead": [
            {
                "id": i,
                "topic": t,
                "document_id": str(d),
                "attempts": a,
                "failures": f,
                "last_error": e,
            }
            for i, t, d, a, f, e, _ in dead
        ],
        "quotas": [{"owner_id": o, "limit": lim, "used": u, "reserved": r} for o, lim, u, r in top],
    }


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(_settings())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("documents:", ", ".join(f"{s}={n}" for s, n in sorted(report["documents"].items())))
    print("events:")
    for row in sorted(report["events"], key=lambda r: (r["topic"], r["status"])):
        print(f"  {row['topic']:<8} {row['status']:<11} {row['count']}")
    print(
        f"lag: oldest pending {report['oldest_pending_seconds']}s, "
        f"oldest dispatched {report['oldest_dispatched_seconds']}s"
    )
    for dead in report["dead"]:
        print(f"dead event {dead['id']} ({dead['topic']}): {dead['last_error']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from worker.run import run

    return run(demo=not args.no_demo, files=args.files, exit_after_demo=args.exit)


def cmd_dev_servers(args: argparse.Namespace) -> int:
    from worker.devstack import main_devstack

    return int(main_devstack([]))


def cmd_bench(args: argparse.Namespace) -> int:
    """Every performance figure in one run (see worker/bench.py)."""
    from worker.bench import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3-outbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply schema.sql (idempotent)").set_defaults(func=cmd_migrate)

    for name, func in (("relay", cmd_relay), ("sweeper", cmd_sweeper)):
        p = sub.add_parser(name, help=f"run the {name}")
        p.add_argument("--once", action="store_true", help="run one round and exit")
        p.add_argument("--metrics-port", type=int, default=None)
        p.set_defaults(func=func)

    p = sub.add_parser("worker", help="run Dramatiq workers on worker.actors")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(func=cmd_worker)

    events = sub.add_parser("events", help="operate on outbox events")
    esub = events.add_subparsers(dest="events_command", required=True)
    p = esub.add_parser("retry", help="send dead events (or one event) again")
    p.add_argument("--dead", action="store_true", help="all dead events (the default)")
    p.add_argument("--topic", choices=["verify", "purge", "expire"])
    p.add_argument("--id", type=int)
    p.set_defaults(func=cmd_events_retry)

    p = sub.add_parser("status", help="backlog, lag, dead events, top quotas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("run", help="embedded servers + all processes + a demo")
    p.add_argument("--no-demo", action="store_true", help="start everything, run no demo")
    p.add_argument("--exit", action="store_true", help="stop everything after the demo")
    p.add_argument("files", nargs="*", help="files to upload in the demo")
    p.set_defaults(func=cmd_run)

    sub.add_parser("dev-servers", help="only the embedded servers").set_defaults(
        func=cmd_dev_servers
    )

    p = sub.add_parser("bench", help="performance figures in one run (make bench)")
    p.add_argument("bench_args", nargs="*", help="--quick, --output FILE, ... (see --help)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The bench has its own options (--quick, --output, ...): hand them over untouched.
        from worker.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        result = int(args.func(args))
    except psycopg.OperationalError as exc:
        print(f"s3-outbox: cannot reach PostgreSQL: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
