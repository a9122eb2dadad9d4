"""The repair subcommands of ``s3-outbox``: ``reconcile`` and ``quota audit``.

The work is in worker/reconcile.py and worker/quota_audit.py (also a Python API); this
module only parses arguments and formats reports. Exit status: 0 when nothing needs
repairing (or every repair was made), 1 when a dry run found drift or a repair was refused.
"""

from __future__ import annotations

import argparse
import json

from outbox.settings import Settings
from worker import quota_audit, reconcile


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def cmd_reconcile(args: argparse.Namespace) -> int:
    """``s3-outbox reconcile [--apply] [--horizon SECONDS] [--json]``."""
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


def cmd_quota_audit(args: argparse.Namespace) -> int:
    """``s3-outbox quota audit [--fix] [--json]``."""
    report = quota_audit.audit_quotas(Settings(), fix=args.fix, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(quota_audit.format_report(report))
    return 0 if report.clean else 1


def add_repair_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reconcile`` and ``quota audit`` to the ``s3-outbox`` parser."""
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
