"""The ``s3-outbox`` command: the services (relay, sweeper, worker, api), the operator
commands (migrate, status, events, reconcile, quota) and the zero-setup ``run`` and
``dev-servers``. One ``configure_*_parser`` per command, each setting the function it runs.

The development harness is not here: ``make chaos`` and ``make bench`` (``python -m
harness.chaos``, ``python -m benchmarks``) run from a checkout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import psycopg

from outbox.errors import OutboxError
from outbox.logs import configure as configure_logging
from outbox.settings import Settings

log = logging.getLogger("s3outbox.cli")

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
Command = Callable[[argparse.Namespace], int]


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


# -- migrate ---------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations, or with ``--check`` only say whether any are pending."""
    from outbox import schema

    settings = Settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.check:
            state = schema.status(conn)
            for migration in state.pending:
                print(f"pending: {migration.version:04d}_{migration.name}")
            print(f"schema version {state.current} of {state.latest}")
            return 0 if state.up_to_date else 1
        applied = schema.migrate(conn, lock_timeout=args.lock_timeout)
        for migration in applied:
            print(f"applied: {migration.version:04d}_{migration.name}")
        print(f"schema version {schema.latest_version()}: up to date")
    return 0


def configure_migrate_parser(sub: Subparsers) -> None:
    p = sub.add_parser("migrate", help="apply pending schema migrations (no lock when none)")
    p.add_argument(
        "--check", action="store_true", help="apply nothing; exit 1 when a migration is pending"
    )
    p.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for a table lock per attempt (default 5)",
    )
    p.set_defaults(func=cmd_migrate)


# -- services --------------------------------------------------------------------------------


def _run_service(name: str, args: argparse.Namespace) -> int:
    """Run the relay or the sweeper: one round with --once, else until SIGTERM/SIGINT."""
    from worker import metrics
    from worker.relay import Relay
    from worker.service import Runner, Service, StopFlag, wait_for_schema
    from worker.sweeper import Sweeper

    settings = Settings()
    stop = StopFlag()
    stop.install()
    if not wait_for_schema(settings, stop):
        return 0
    if name == "sweeper" and not _storage_permitted(settings):
        return 2
    service: Service = Relay(settings) if name == "relay" else Sweeper(settings)
    if args.once:
        print(f"{name}: {service.run_once()} rows")
        service.close()
        return 0
    default_port = settings.relay_metrics_port if name == "relay" else settings.sweeper_metrics_port
    metrics.serve(settings, args.metrics_port or default_port, with_database=True)
    Runner(service, stop).run_forever()
    return 0


def _storage_permitted(settings: Settings) -> bool:
    """The sweeper's start check of its storage credentials (``worker.permissions``): False
    (after saying which permission is missing) when storage refuses them. Storage that cannot
    be reached now passes (logged): an outage is survived."""
    from worker.permissions import StorageAccessRefused, check_access
    from worker.storage import Storage

    try:
        check_access(Storage(settings))
    except StorageAccessRefused as exc:
        print(f"s3-outbox: {exc}", file=sys.stderr)
        return False
    return True


def cmd_relay(args: argparse.Namespace) -> int:
    return _run_service("relay", args)


def cmd_sweeper(args: argparse.Namespace) -> int:
    return _run_service("sweeper", args)


def configure_relay_parser(sub: Subparsers) -> None:
    p = sub.add_parser("relay", help="run the relay (outbox table -> Dramatiq queues)")
    p.add_argument("--once", action="store_true", help="run one round and exit")
    p.add_argument("--metrics-port", type=int, default=None)
    p.set_defaults(func=cmd_relay)


def configure_sweeper_parser(sub: Subparsers) -> None:
    p = sub.add_parser("sweeper", help="run the sweeper (expiry, rescue, pruning)")
    p.add_argument("--once", action="store_true", help="run one round and exit")
    p.add_argument("--metrics-port", type=int, default=None)
    p.set_defaults(func=cmd_sweeper)


def cmd_worker(args: argparse.Namespace) -> int:
    """The ordinary Dramatiq CLI on worker.actors (this process becomes it)."""
    from worker.processes import command

    argv = command("worker", processes=args.processes, threads=args.threads)
    os.execv(argv[0], argv)  # noqa: S606 (no shell: argv is ours)
    return 0  # pragma: no cover


def configure_worker_parser(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="run Dramatiq workers on worker.actors")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(func=cmd_worker)


def cmd_api(args: argparse.Namespace) -> int:
    """The reference HTTP API and upload page (outbox.webapp) under uvicorn."""
    try:
        import uvicorn

        from outbox.webapp import create_app
    except ImportError as exc:
        print(f"s3-outbox api needs: pip install 's3-outbox[api]' ({exc})", file=sys.stderr)
        return 2
    port = args.port or Settings().api_port
    print(f"s3-outbox api: http://{args.host}:{port}/", flush=True)
    # log_config=None: keep the s3-outbox log format (trace ids, redaction) for uvicorn too.
    # The API logs each request itself (with its trace id): no uvicorn access log.
    uvicorn.run(create_app(), host=args.host, port=port, log_config=None, access_log=False)
    return 0


def configure_api_parser(sub: Subparsers) -> None:
    p = sub.add_parser("api", help="the reference HTTP API and upload page (needs [api])")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: S3OUTBOX_API_PORT (8000)")
    p.set_defaults(func=cmd_api)


# -- operator commands -----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Backlog by topic and state, lag, dead events and the top quotas."""
    from worker.ops import status

    report = status.status_report(Settings())
    print(json.dumps(report, indent=2) if args.json else status.render_status(report))
    return 0


def configure_status_parser(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="backlog, lag, dead events, top quotas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def cmd_events_retry(args: argparse.Namespace) -> int:
    """Dead events (by default, optionally of one topic) or one event back to pending."""
    from worker.ops import status

    statuses = ["dead"] if args.dead or args.id is None else ["dead", "pending", "dispatched"]
    retried = status.retry_events(Settings(), statuses=statuses, topic=args.topic, event_id=args.id)
    if args.json:
        print(json.dumps({"retried": retried}, indent=2))
    else:
        print(status.render_retry(retried))
    if not retried and args.id is not None:
        print(f"event {args.id} not found or not retryable (done?)", file=sys.stderr)
    return 0 if retried or args.id is None else 1


def cmd_events_show(args: argparse.Namespace) -> int:
    """One event, its document's state and its last error."""
    from worker.ops import status

    detail = status.event_detail(Settings(), args.event_id)
    if detail is None:
        print(f"no event {args.event_id}", file=sys.stderr)
        return 1
    print(json.dumps(detail, indent=2) if args.json else status.render_event(detail))
    return 0


def configure_events_parser(sub: Subparsers) -> None:
    from outbox.constants import Topic

    events = sub.add_parser("events", help="operate on outbox events")
    esub = events.add_subparsers(dest="events_command", required=True)
    p = esub.add_parser("retry", help="send dead events (or one event) again")
    p.add_argument("--dead", action="store_true", help="all dead events (the default)")
    p.add_argument("--topic", choices=[t.value for t in Topic], help="only events of this topic")
    p.add_argument("--id", type=int, help="this one event (dead, pending or dispatched)")
    p.add_argument("--json", action="store_true", help="print what was retried as JSON")
    p.set_defaults(func=cmd_events_retry)
    p = esub.add_parser("show", help="one event, its document's state and its last error")
    p.add_argument("event_id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events_show)


def cmd_reconcile(args: argparse.Namespace) -> int:
    """``s3-outbox reconcile [--apply] [--horizon SECONDS] [--json]``: exit 1 when a dry run
    found drift or a repair was refused."""
    from worker.ops import reconcile

    report = reconcile.reconcile(
        Settings(), apply=args.apply, horizon=args.horizon, progress=not args.json
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(reconcile.format_report(report))
    if args.apply:
        return 0 if report.repaired == report.to_repair else 1
    return 0 if report.clean else 1


def configure_reconcile_parser(sub: Subparsers) -> None:
    from worker.ops import reconcile

    p = sub.add_parser(
        "reconcile",
        help="find (and with --apply repair) orphan objects, broken and stuck documents",
        description=reconcile.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--apply", action="store_true", help="queue the repairs (default: report)")
    p.add_argument(
        "--horizon",
        type=_seconds,
        default=reconcile.DEFAULT_HORIZON_SECONDS,
        metavar="SECONDS",
        help="an unowned object counts as orphan only when older than this (default 3600)",
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_reconcile)


def cmd_quota_audit(args: argparse.Namespace) -> int:
    """``s3-outbox quota audit [--fix] [--json]``: exit 1 when drift remains."""
    from worker.ops import quota_audit

    report = quota_audit.audit_quotas(Settings(), fix=args.fix, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(quota_audit.format_report(report))
    return 0 if report.clean else 1


def configure_quota_parser(sub: Subparsers) -> None:
    from worker.ops import quota_audit

    quota = sub.add_parser("quota", help="quota maintenance")
    qsub = quota.add_subparsers(dest="quota_command", required=True)
    p = qsub.add_parser(
        "audit",
        help="compare used/reserved with the documents (and with --fix correct them)",
        description=quota_audit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--fix", action="store_true", help="correct each drifted owner")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_quota_audit)


# -- zero setup ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from worker.run import run

    return run(
        demo=not args.no_demo,
        files=args.files,
        exit_after_demo=args.exit,
        data_dir=args.data_dir,
        free_ports=args.free_ports,
    )


def configure_run_parser(sub: Subparsers) -> None:
    from pathlib import Path

    p = sub.add_parser("run", help="embedded servers + every process + a demo")
    p.add_argument("--no-demo", action="store_true", help="start everything, run no demo")
    p.add_argument("--exit", action="store_true", help="stop everything after the demo")
    p.add_argument("--data-dir", type=Path, default=None, help="server data (default ./.data)")
    p.add_argument(
        "--free-ports",
        action="store_true",
        help="embedded servers on free ports, not the fixed ones the default settings expect",
    )
    p.add_argument("files", nargs="*", help="files to upload in the demo")
    p.set_defaults(func=cmd_run)


def cmd_dev_servers(args: argparse.Namespace) -> int:
    try:
        from worker.embedded.__main__ import main
    except ImportError as exc:
        print(
            f"s3-outbox dev-servers needs: pip install 's3-outbox[embedded]' ({exc})",
            file=sys.stderr,
        )
        return 2
    return int(main(args.devstack_args))


def configure_dev_servers_parser(sub: Subparsers) -> None:
    p = sub.add_parser("dev-servers", help="only the embedded servers (needs [embedded])")
    p.add_argument("devstack_args", nargs=argparse.REMAINDER, help="--data-dir, --free-ports")
    p.set_defaults(func=cmd_dev_servers)


CONFIGURE: Sequence[Callable[[Subparsers], None]] = (
    configure_migrate_parser,
    configure_relay_parser,
    configure_sweeper_parser,
    configure_worker_parser,
    configure_api_parser,
    configure_status_parser,
    configure_events_parser,
    configure_reconcile_parser,
    configure_quota_parser,
    configure_run_parser,
    configure_dev_servers_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3-outbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for configure in CONFIGURE:
        configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    func: Command = args.func
    try:
        return int(func(args))
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handler
        return 130
    except psycopg.OperationalError as exc:
        print(f"s3-outbox: cannot reach PostgreSQL: {exc}", file=sys.stderr)
        return 2
    except OutboxError as exc:
        print(f"s3-outbox: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
