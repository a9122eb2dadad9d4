"""What a chaos run did and found, as data (JSON) and as a plain-text table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.chaos.config import ChaosConfig
from harness.invariants import InvariantReport, summarize_counts


@dataclass
class ChaosResult:
    """What a chaos run did and found."""

    config: ChaosConfig
    report: InvariantReport | None = None
    faults: dict[str, int] = field(default_factory=dict)
    clients: dict[str, int] = field(default_factory=dict)
    scenarios: dict[str, int] = field(default_factory=dict)
    expectation_failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    settled: bool = False
    #: Failed attempts, the most of one event, lock timeouts, 403s, rescues, dead events.
    event_stats: dict[str, int] = field(default_factory=dict)
    #: How long each worker outage lasted (seconds).
    outages: list[float] = field(default_factory=list)
    #: The figures printed during the load (``monitor.Figures.to_dict()``), minute 0 first,
    #: the end of the load last.
    figures: list[dict[str, Any]] = field(default_factory=list)
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    check_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    data_dir: str = ""

    @property
    def dead_events(self) -> int:
        return int(self.event_stats.get("dead", 0))

    @property
    def ok(self) -> bool:
        return (
            self.report is not None
            and self.report.ok
            and self.settled
            and not self.expectation_failures
            and not self.errors
            and self.dead_events == 0
        )

    def memory(self) -> list[tuple[str, float, float, float]]:
        """RSS per process, (name, MiB when first seen after the load's first minute, MiB
        when last seen, minutes the process last seen had been running): a fault that
        restarts a process resets it, which is why a soak runs witnesses that no fault kills.
        """
        samples = self.figures[1:] if len(self.figures) > 2 else self.figures
        names = list(dict.fromkeys(n for f in samples for n in f["rss_mib"]))
        rows = []
        for name in names:
            seen = [f for f in samples if name in f["rss_mib"]]
            first, last = seen[0], seen[-1]
            age = last["age_seconds"].get(name, 0.0) / 60
            rows.append((name, first["rss_mib"][name], last["rss_mib"][name], age))
        return rows

    def to_dict(self) -> dict[str, Any]:
        counts = summarize_counts(self.report) if self.report is not None else {}
        return {
            "ok": self.ok,
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()
            },
            "invariants": counts,
            "checks": [
                {"name": c.name, "passed": c.passed, "problems": c.problems}
                for c in (self.report.checks if self.report else [])
            ],
            "orphans": list(self.report.orphan_objects[:50]) if self.report else [],
            "faults": self.faults,
            "clients": self.clients,
            "scenarios": self.scenarios,
            "expectation_failures": self.expectation_failures[:100],
            "errors": self.errors[:100],
            "settled": self.settled,
            "event_stats": self.event_stats,
            "outages": self.outages,
            "figures": self.figures,
            "load_seconds": round(self.load_seconds, 1),
            "settle_seconds": round(self.settle_seconds, 1),
            "check_seconds": round(self.check_seconds, 1),
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "data_dir": self.data_dir,
        }


def format_table(result: ChaosResult) -> str:
    """The run's outcome as a plain-text table."""
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    report = result.report
    section("documents by final state")
    for status, n in sorted((report.documents if report else {}).items()):
        rows.append((f"  {status}", str(n)))
    section("events by final state")
    for status, n in sorted((report.events if report else {}).items()):
        rows.append((f"  {status}", str(n)))
    section("faults injected")
    for kind, n in result.faults.items():
        rows.append((f"  {kind}", str(n)))
    config = result.config
    if result.outages:
        rows.append(("  longest worker outage", f"{max(result.outages):.1f}s"))
        rows.append(
            (
                f"  rescue budget ({config.max_failures} failures x "
                f"{config.redispatch_after_seconds:g}s redispatch)",
                f"{config.rescue_budget_seconds:.1f}s",
            )
        )
    section("events")
    stats = result.event_stats
    for label, key in (
        ("failed attempts (retried)", "failed_attempts"),
        (f"most failures of one event (dead at {config.max_failures})", "most_failures"),
        ("events that failed on a lock timeout (at least)", "lock_timeouts"),
        ("events postponed on a 403 (at least)", "access_denied"),
        ("events sent again (message lost or worker gone)", "rescued"),
        ("events dead", "dead"),
    ):
        rows.append((f"  {label}", str(stats.get(key, "?"))))
    section("load")
    for name, n in sorted(result.scenarios.items()):
        rows.append((f"  scenario {name}", str(n)))
    for name, n in result.clients.items():
        if not name.startswith("scenario:"):
            rows.append((f"  {name}", str(n)))
    section("invariants")
    if report is not None:
        for check in report.checks:
            rows.append((f"  {check.name}", "PASS" if check.passed else "FAIL"))
        passed = sum(c.passed for c in report.checks)
        rows.append(("  checks passed / failed", f"{passed} / {len(report.checks) - passed}"))
        rows.append(("  events lost", str(report.lost_events)))
        rows.append(("  orphan objects", str(len(report.orphan_objects))))
        rows.append(("  quota mismatches", str(report.quota_mismatches)))
        rows.append(("  objects in bucket (run prefix)", str(report.objects_listed)))
    rows.append(("  scenario expectations failed", str(len(result.expectation_failures))))
    rows.append(("  harness errors", str(len(result.errors))))
    rows.append(("  settled", "yes" if result.settled else "NO"))
    if result.figures:
        section(
            "figures every minute (documents/s started, finished; faults (+ storage"
            " responses spoiled); events dead; documents lost)"
        )
        for f in result.figures[1:]:
            done = f["finished_per_second"]
            when = f"minute {f['minute']:>3}" if not f["label"] else f"{f['label']:>10}"
            rows.append(
                (
                    f"  {when}: {f['started_per_second']:5.1f} /s started, "
                    f"{'?' if done is None else f'{done:5.1f}'} /s finished, faults "
                    f"{f['faults']} (+{f['storage_faults']}), dead {_n(f['dead'])}, "
                    f"lost {_n(f['lost'])}",
                    "",
                )
            )
        section("memory: RSS MiB after the first minute -> at the end (age of the last process)")
        for name, start, end, age in result.memory():
            rows.append((f"  {name} (up {age:.1f} min)", f"{start:.0f} -> {end:.0f}"))
    section("time")
    rows.append(("  load", f"{result.load_seconds:.1f}s"))
    rows.append(("  settle", f"{result.settle_seconds:.1f}s"))
    rows.append(("  check", f"{result.check_seconds:.1f}s"))
    rows.append(("  elapsed", f"{result.elapsed_seconds:.1f}s"))
    rows.append(("RESULT", "OK" if result.ok else "FAILED"))
    width = max(len(r[0]) for r in rows if r[1]) + 2
    lines = [f"{name:<{width}}{value:>10}" if value else name for name, value in rows]
    details: list[str] = []
    if report is not None and not report.ok:
        details.append(report.summary())
    details.extend(f"expectation: {f}" for f in result.expectation_failures[:20])
    details.extend(f"error: {e}" for e in result.errors[:20])
    if result.data_dir:
        details.append(f"logs and data kept in {result.data_dir}")
    return "\n".join(lines + (["", *details] if details else []))


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)
