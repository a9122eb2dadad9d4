"""The chaos run in its small, fast configuration: real relay, Dramatiq workers and sweeper
processes, a mixed load from several client threads, every kind of fault at least once
(processes SIGKILLed, Valkey restarted empty, PostgreSQL fast-restarted, storage errors,
dropped connections, delays and stale 404s), then every invariant checked.

The full run (2,000 documents) is ``make chaos``.
"""

from __future__ import annotations

import io

import pytest

from harness.chaos import PROCESS_FAULTS, SERVER_FAULTS, ChaosConfig, format_table, run_chaos
from harness.faultproxy import FAULT_KINDS, FaultRates
from worker.embedded import EmbeddedStack

pytestmark = pytest.mark.slow


def small_config() -> ChaosConfig:
    """~80 documents in ~10 s of load; faults every 1-2.5 s, each kind at least once."""
    return ChaosConfig(
        documents=80,
        threads=4,
        seed=20251123,
        rate_per_second=8.0,
        owners=6,
        quota_owners=2,
        quota_limit_bytes=12 * 1024,
        max_size=8 * 1024,
        fault_min_seconds=1.0,
        fault_max_seconds=2.5,
        restart_delay_max_seconds=1.0,
        ensure_every_fault=True,
        storage=FaultRates(
            http_500=0.04,
            http_503=0.04,
            drop=0.04,
            delay=0.05,
            delay_max_seconds=1.0,
            stale_share=0.3,
            stale_window_seconds=2.0,
        ),
        upload_url_ttl_seconds=6,
        verify_deadline_seconds=5.0,
        worker_threads=3,
        settle_timeout_seconds=90.0,
        client_retry_seconds=60.0,
    )


@pytest.mark.timeout(240)
def test_small_chaos_run_breaks_no_invariant(embedded_stack: EmbeddedStack, clean_db: None) -> None:
    # The invariant check covers the whole database: clean_db leaves only this run's rows.
    out = io.StringIO()
    result = run_chaos(small_config(), stack=embedded_stack, out=out)
    table = format_table(result)
    detail = f"{out.getvalue()}\n{table}"

    assert result.report is not None, detail
    assert result.settled, detail
    assert result.report.ok, detail
    assert result.report.lost_events == 0, detail
    assert result.report.orphan_objects == [], detail
    assert result.report.quota_mismatches == 0, detail
    assert result.expectation_failures == [], detail
    assert result.errors == [], detail
    assert result.ok, detail

    # Every kind of fault really happened.
    for kind in (*PROCESS_FAULTS, *SERVER_FAULTS):
        assert result.faults.get(kind, 0) >= 1, f"{kind} never injected\n{detail}"
    for kind in FAULT_KINDS:
        assert result.faults.get(f"storage_{kind}", 0) >= 1, f"storage {kind} never\n{detail}"
    # And the load did what it says: every scenario ran, some requests hit the quota.
    assert len(result.scenarios) == 9, detail
    assert result.clients.get("quota_refusals", 0) >= 1, detail
    assert sum(result.report.documents.values()) >= 60, detail
    result_line = next(line for line in table.splitlines() if line.startswith("RESULT"))
    assert result_line.endswith("OK"), detail
