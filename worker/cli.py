"""The ``s3-outbox`` command: migrate, relay, sweeper, worker, events, status, run, api."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

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
    """Dead events (by default, optionally of one topic) or one event back to pending."""
    from worker import status

    statuses = ["dead"] if args.dead or args.id is None else ["dead", "pending", "dispatched"]
    retried = status.retry_events(
        _settings(), statuses=statuses, topic=args.topic, event_id=args.id
    )
    if args.json:
        print(json.dumps({"retried": retried}, indent=2))
    else:
        print(status.render_retry(retried))
    if not retried and args.id is not None:
        print(f"event {args.id} not found or not retryable (done?)", file=sys.stderr)
    return 0 if retried or args.id is None else 1


def cmd_events_show(args: argparse.Namespace) -> int:
    """One event, its document's state and its last error."""
    from worker import status

    detail = status.event_detail(_settings(), args.event_id)
    if detail is None:
        print(f"no event {args.event_id}", file=sys.stderr)
        return 1
    print(json.dumps(detail, indent=2) if args.json else status.render_event(detail))
    return 0


def status_report(settings: Settings) -> dict[str, Any]:
    """Backlog by topic and state, lag, dead events and the top quotas (see worker.status)."""
    from worker import status

    return status.status_report(settings)


def cmd_status(args: argparse.Namespace) -> int:
    from worker import status

    report = status.status_report(_settings())
    print(json.dumps(report, indent=2) if args.json else status.render_status(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from worker.run import run

    return run(demo=not args.no_demo, files=args.files, exit_after_demo=args.exit)


def cmd_api(args: argparse.Namespace) -> int:
    """The reference HTTP API and upload page (outbox.webapp) under uvicorn."""
    try:
        import uvicorn

        from outbox.webapp import create_app
    except ImportError as exc:
        print(f"s3-outbox api needs: pip install 's3-outbox[api]' ({exc})", file=sys.stderr)
        return 2
    print(f"s3-outbox api: http://{args.host}:{args.port}/", flush=True)
    # log_config=None: keep the s3-outbox log format (trace ids, redaction) for uvicorn too.
    # The API logs each request itself (with its trace id): no uvicorn access log.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_dev_servers(args: argparse.Namespace) -> int:
    from worker.devstack import main_devstack

    return int(main_devstack([]))


def cmd_chaos(args: argparse.Namespace) -> int:
    """The chaos run (worker/chaos.py): real processes, a mixed load, faults, invariants."""
    from worker.chaos import main_chaos

    return main_chaos(
        documents=args.documents,
        seed=args.seed,
        threads=args.threads,
        json_path=args.json,
        keep_data=args.keep_data,
    )


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
    p.add_argument(
        "--topic", choices=["verify", "purge", "expire"], help="only events of this topic"
    )
    p.add_argument("--id", type=int, help="this one event (dead, pending or dispatched)")
    p.add_argument("--json", action="store_true", help="print what was retried as JSON")
    p.set_defaults(func=cmd_events_retry)
    p = esub.add_parser("show", help="one event, its document's state and its last error")
    p.add_argument("event_id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events_show)

    p = sub.add_parser("status", help="backlog, lag, dead events, top quotas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("run", help="embedded servers + all processes + a demo")
    p.add_argument("--no-demo", action="store_true", help="start everything, run no demo")
    p.add_argument("--exit", action="store_true", help="stop everything after the demo")
    p.add_argument("files", nargs="*", help="files to upload in the demo")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("api", help="the reference HTTP API and upload page (needs [api])")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_api)

    sub.add_parser("dev-servers", help="only the embedded servers").set_defaults(
        func=cmd_dev_servers
    )

    # -- repairs: reconcile, quota audit (worker/repair_cli.py) ---------------------------
    from worker.repair_cli import add_repair_commands

    add_repair_commands(sub)

    p = sub.add_parser("chaos", help="chaos run: load + faults, then check every invariant")
    p.add_argument("--documents", type=int, default=None, help="documents (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="seed of load and faults (default 1)")
    p.add_argument("--threads", type=int, default=None, help="client threads (default 8)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--keep-data", action="store_true", help="keep servers' data and logs")
    p.set_defaults(func=cmd_chaos)

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
