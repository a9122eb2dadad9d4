"""``make bench --quick`` end to end: every figure is in the JSON (timings are never asserted:
the machine is shared and noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("pgqueuer")
pytest.importorskip("procrastinate")


def _has_summary(fig: dict[str, object]) -> bool:
    return {"median", "min", "max", "rounds"} <= set(fig)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| target |" in proc.stdout
    r = json.loads(out.read_text())

    for key in ("date", "cpu", "logical_cpus", "memory_gib", "servers", "packages"):
        assert key in r["machine"]
    lim = r["limits"]
    for name in (
        "pg_tx_per_s_1_clients",
        "pg_tx_per_s_4_clients",
        "head_object_per_s_1_threads",
        "head_object_per_s_8_threads",
        "lean_head_object_per_s_1_threads",
        "lean_head_object_per_s_8_threads",
        "dramatiq_noop_per_s",
    ):
        assert _has_summary(lim[name]), name
    assert lim["head_object_cpu_ms_per_call"] > 0
    assert lim["lean_head_object_cpu_ms_per_call"] > 0

    relay = r["relay"]
    for relays in r["config"]["relay_counts"]:
        assert _has_summary(relay[f"relays_{relays}"]["events_per_s"])
        assert "relays" in relay[f"relays_{relays}"]["cpu_cores_busy"]
    notify = r["notify"]
    assert _has_summary(notify["commits_per_s_with_notify"])
    assert _has_summary(notify["commits_per_s_without_notify"])
    assert notify["with_over_without"] > 0
    flat = r["flat"]
    for part in ("list", "scrape"):
        assert {"median_ms_big", "median_ms_small", "ratio"} <= set(flat[part]), part
    assert flat["scrape"]["exact_count_ms_big"] > 0
    for phase in ("without", "with_xmin_held"):
        assert {"claimed_per_s", "dead_tuples"} <= set(flat["xmin"][phase]), phase
    assert flat["xmin"]["ratio"] > 0

    e2e = r["end_to_end"]
    assert {(t["documents"], t["processes"]) for t in e2e["throughput"]} == {
        (n, p) for n in r["config"]["sizes"] for p in r["config"]["processes"]
    }
    for t in e2e["throughput"]:
        assert _has_summary(t["docs_per_s"])
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(t["saturation_latency"])
        busy = set(t["cpu_cores_busy"])
        assert {"postgres", "valkey", "seaweedfs", "s3-outbox", "machine"} <= busy
    assert {x["processes"] for x in e2e["latency"]} == set(r["config"]["processes"])
    for x in e2e["latency"]:
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(x["steady"])

    api = r["api"]
    for name in (
        "bare_insert_tx_per_s",
        "request_upload_tx_per_s",
        "confirm_tx_per_s",
        "request_upload_plus_confirm_per_s",
    ):
        assert _has_summary(api[name])
    # Counts, not timings: the outbox adds exactly one INSERT (the event) to a confirm.
    assert api["per_call"]["confirm"]["outbox_event_inserts"] == 1
    assert api["per_call"]["request_upload"]["outbox_event_inserts"] == 0
    assert api["per_call"]["request_upload"]["document_inserts"] == 1
    # One statement each in the caller's transaction (target 6), also a count.
    assert api["per_call"]["request_upload"]["library_round_trips"] == 1
    assert api["per_call"]["confirm"]["library_round_trips"] == 1
    assert api["ms_per_call"]["request_upload_statement_tx"] > 0
    clients = api["clients"]
    for name in ("bare_insert_tx_per_s", "request_upload_and_confirm_tx_per_s"):
        assert _has_summary(clients[name]), name
    assert clients["calls_over_bare"] > 0
    for phase in ("bare", "calls"):
        assert {"client", "postgres", "client_cpu_ms_per_tx"} <= set(clients["cores_busy"][phase])

    peers = r["peers"]
    assert {(t["peer"], t["head"]) for t in peers["throughput"]} == {
        (peer, head)
        for peer in ("pgqueuer", "procrastinate", "dramatiq")
        for head in r["config"]["peer_heads"]
    }
    assert {x["peer"] for x in peers["latency"]} == {"pgqueuer", "procrastinate", "dramatiq"}
    assert {t["processes"] for t in peers["ours"]} == set(r["config"]["processes"])
    for t in [*peers["throughput"], *peers["ours"]]:
        assert _has_summary(t["docs_per_s"])
        assert len(t["docs_per_s"]["rounds"]) == r["config"]["rounds"]
    for t in peers["throughput"]:
        assert {t["peer"], "machine"} <= set(t["cpu_cores_busy"])
    steady = r["targets"]["p99_steady_ms"]
    assert set(steady["by_processes"]) == {f"{n}p" for n in r["config"]["processes"]}
    assert steady["value"] == min(steady["by_processes"].values())
    scaling = r["targets"]["two_vs_one_process"]
    assert {"machine_cores_busy_2p", "machine_cpus", "saturated", "met_by"} <= set(scaling)
    # These targets, missed, carry the measured evidence of what saturated or where the time
    # goes (each side's CPU per document or per call).
    for name in ("vs_peers", "api_tx_vs_bare_insert_tx", "api_clients_vs_bare_insert"):
        target = r["targets"][name]
        assert target["met"] or target["evidence"], (name, target)
    assert "ms CPU per doc in s3-outbox" in proc.stdout
    mp = r["multipart"]
    sizes = [m * 2**20 for m in r["config"]["multipart_sizes_mib"]]
    assert [s["bytes"] for s in mp["sizes"]] == sizes
    for size in mp["sizes"]:
        assert size["parts"] >= 2 and size["bytes"] > mp["threshold_bytes"]
        for name in ("helper_mb_per_s", "boto3_mb_per_s", "confirm_to_available_seconds"):
            assert _has_summary(size[name]), name
            assert len(size[name]["rounds"]) == r["config"]["multipart_rounds"]
        assert size["ratio_helper_over_boto3"] > 0
        assert {"client", "seaweedfs"} <= set(size["helper_cpu_cores_busy"])
        assert {"client", "seaweedfs"} <= set(size["boto3_cpu_cores_busy"])
    assert "helper / boto3" in proc.stdout and "confirm-to-available" in proc.stdout
    assert set(r["targets"]) == {
        "e2e_vs_head8",
        "vs_peers",
        "cpu_ms_per_doc",
        "p99_steady_ms",
        "outbox_inserts_per_call",
        "api_round_trips",
        "api_tx_vs_bare_insert_tx",
        "api_clients_vs_bare_insert",
        "two_vs_one_process",
        "relay_events_per_s",
        "list_deleted_vs_none",
        "scrape_done_vs_empty",
        "claims_xmin_held_vs_not",
        "multipart_vs_boto3",
        "multipart_confirm_to_available_s",
    }
    assert "relay alone" in proc.stdout and "xmin held" in proc.stdout
