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
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    check_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    data_dir: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.report is not None
            and self.report.ok
            and self.settled
            and not self.expectation_failures
            and not self.errors
        )

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
    section("time")
    rows.append(("  load", f"{result.load_seconds:.1f}s"))
    rows.append(("  settle", f"{result.settle_seconds:.1f}s"))
    rows.append(("  check", f"{result.check_seconds:.1f}s"))
    rows.append(("  elapsed", f"{result.elapsed_seconds:.1f}s"))
    rows.append(("RESULT", "OK" if result.ok else "FAILED"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{name:<{width}}{value:>8}" if value else name for name, value in rows]
    details: list[str] = []
    if report is not None and not report.ok:
        details.append(report.summary())
    details.extend(f"expectation: {f}" for f in result.expectation_failures[:20])
    details.extend(f"error: {e}" for e in result.errors[:20])
    if result.data_dir:
        details.append(f"logs and data kept in {result.data_dir}")
    return "\n".join(lines + (["", *details] if details else []))
