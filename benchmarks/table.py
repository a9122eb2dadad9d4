"""A run's results as the Markdown table of the README (median, min-max over rounds), and
the targets below it."""

from __future__ import annotations

from benchmarks.config import Json
from benchmarks.measure import median_of


def _row(figure: str, value: object) -> str:
    return f"| {figure} | {value} |"


def _fmt(fig: Json) -> str:
    return f"{fig['median']:.0f} ({fig['min']:.0f}-{fig['max']:.0f})"


def _percentiles(latency: Json, digits: int) -> str:
    """p50 / p95 / p99 medians of a ``latency_summary``."""
    return " / ".join(f"{latency[f'p{q}_ms']['median']:.{digits}f}" for q in (50, 95, 99))


def _cpu(t: Json, ours: str) -> str:
    """Cores busy per group, and the CPU that the queue's own processes spent per document
    (their cores / documents per second): the figure that ranks designs on a CPU-bound box."""
    busy = t["cpu_cores_busy"]
    cores = ", ".join(f"{k} {round(float(v), 2)}" for k, v in busy.items())
    rate = median_of(t["docs_per_s"])
    if ours not in busy or rate <= 0:
        return cores
    return f"{cores}; {1000 * float(busy[ours]) / rate:.2f} ms CPU per doc in {ours}"


def _limits(lim: Json) -> list[str]:
    return [
        _row(f"limit: {name.replace('_', ' ')}", _fmt(fig) if isinstance(fig, dict) else fig)
        for name, fig in lim.items()
    ]


def _api(api: Json) -> list[str]:
    lines = [
        _row(f"API: {name.replace('_', ' ')}", _fmt(api[name]))
        for name in (
            "bare_insert_tx_per_s",
            "request_upload_tx_per_s",
            "confirm_tx_per_s",
            "request_upload_plus_confirm_per_s",
        )
    ]
    lines += [
        _row(f"API: ms per {name.replace('_', ' ')}", ms) for name, ms in api["ms_per_call"].items()
    ]
    lines += [
        _row(
            f"API: {name} round trips in the caller's transaction (+ its COMMIT) / outbox INSERTs",
            f"{pc['library_round_trips']} / {pc['outbox_event_inserts']}",
        )
        for name, pc in api["per_call"].items()
    ]
    if "clients" in api:
        c = api["clients"]
        lines += [
            _row(
                f"API: {c['clients']} clients, bare insert tx per s",
                _fmt(c["bare_insert_tx_per_s"]),
            ),
            _row(
                f"API: {c['clients']} clients, request upload and confirm tx per s",
                _fmt(c["request_upload_and_confirm_tx_per_s"]),
            ),
            _row(f"API: {c['clients']} clients, calls / bare insert", c["calls_over_bare"]),
            *(
                _row(
                    f"API: {c['clients']} clients, {phase}: cores busy",
                    ", ".join(f"{k} {v}" for k, v in cores.items()),
                )
                for phase, cores in c.get("cores_busy", {}).items()
            ),
        ]
    return lines


def _relay(relay: Json) -> list[str]:
    lines = []
    for key, fig in relay.items():
        if not key.startswith("relays_"):
            continue
        n = key.split("_", 1)[1]
        lines += [
            _row(
                f"relay alone, {relay['events']} events, {n} relay(s): events/s",
                _fmt(fig["events_per_s"]),
            ),
            _row(
                f"relay alone, {n} relay(s): CPU cores busy",
                ", ".join(f"{k} {v}" for k, v in fig["cpu_cores_busy"].items()),
            ),
        ]
    return lines


def _notify(n: Json) -> list[str]:
    c = n["clients"]
    return [
        _row(
            f"commits/s at {c} clients, one event each, with NOTIFY",
            _fmt(n["commits_per_s_with_notify"]),
        ),
        _row(
            f"commits/s at {c} clients, one event each, without NOTIFY",
            _fmt(n["commits_per_s_without_notify"]),
        ),
        _row("commits with NOTIFY / without", n["with_over_without"]),
    ]


def _flat(f: Json) -> list[str]:
    li, sc, xm = f["list"], f["scrape"], f["xmin"]
    return [
        _row(
            f"list page ms, owner with {li['deleted']} deleted / with none",
            f"{li['median_ms_big']} / {li['median_ms_small']} ({li['ratio']}x)",
        ),
        _row(
            f"metrics scrape ms, {sc['done_events']} done events / empty",
            f"{sc['median_ms_big']} / {sc['median_ms_small']} ({sc['ratio']}x); exact count"
            f" of every event (the old scrape) {sc['exact_count_ms_big']} ms",
        ),
        _row(
            f"relay claims/s under churn, xmin held {xm['seconds']:g} s / not",
            f"{xm['with_xmin_held']['claimed_per_s']} / {xm['without']['claimed_per_s']}"
            f" ({xm['ratio']}x); dead tuples {xm['with_xmin_held']['dead_tuples']} /"
            f" {xm['without']['dead_tuples']}",
        ),
    ]


def _end_to_end(e2e: Json) -> list[str]:
    lines = []
    for t in e2e["throughput"]:
        runs = f"s3-outbox {t['documents']} docs, {t['processes']}p"
        lines += [
            _row(f"{runs} x {t['threads']}t: docs/s", _fmt(t["docs_per_s"])),
            _row(
                f"{runs}: backlog latency p50/p95/p99 ms",
                _percentiles(t["saturation_latency"], 0),
            ),
            _row(f"{runs}: CPU cores busy", _cpu(t, "s3-outbox")),
        ]
    lines += [
        _row(
            f"s3-outbox {x['processes']}p at {x['offered_per_s']:.0f}/s: latency p50/p95/p99 ms",
            _percentiles(x["steady"], 1),
        )
        for x in e2e["latency"]
    ]
    return lines


def _peers(peers: Json) -> list[str]:
    lines = []
    for t in peers.get("ours", []):
        lines += [
            _row(
                f"s3-outbox beside the peers (interleaved rounds) {t['documents']} docs,"
                f" {t['processes']}p x {t['threads']}: docs/s",
                _fmt(t["docs_per_s"]),
            ),
            _row(
                f"s3-outbox beside the peers {t['documents']} docs, {t['processes']}p:"
                " CPU cores busy",
                _cpu(t, "s3-outbox"),
            ),
        ]
    for t in peers["throughput"]:
        head = t.get("head", "boto3")
        runs = f"peer {t['peer']} ({head} HEAD) {t['documents']} docs, {t['processes']}p"
        lines += [
            _row(f"{runs} x {t['threads']}: docs/s", _fmt(t["docs_per_s"])),
            _row(f"{runs}: CPU cores busy", _cpu(t, t["peer"])),
            _row(
                f"{runs}: backlog latency p50/p95/p99 ms",
                _percentiles(t["saturation_latency"], 0),
            ),
        ]
    lines += [
        _row(
            f"peer {x['peer']} {x['processes']}p at {x['offered_per_s']:.0f}/s: latency"
            " p50/p95/p99 ms",
            _percentiles(x["steady"], 1),
        )
        for x in peers["latency"]
    ]
    return lines


def _busy(busy: Json) -> str:
    return f"{busy['client']}, {busy['seaweedfs']}"


def _multipart(mp: Json) -> list[str]:
    lines = []
    for s in mp["sizes"]:
        what = f"large file {s['bytes'] // 2**20} MiB, {s['parts']} parts x {s['threads']} threads"
        lines += [
            _row(f"{what}: helper MB/s", _fmt(s["helper_mb_per_s"])),
            _row(f"{what}: boto3 upload_file MB/s", _fmt(s["boto3_mb_per_s"])),
            _row(
                f"{what}: helper / boto3 (over {s['rounds']} alternating rounds)",
                s["ratio_helper_over_boto3"],
            ),
            _row(
                f"{what}: cores busy (client, seaweedfs) helper / boto3",
                f"{_busy(s['helper_cpu_cores_busy'])} / {_busy(s['boto3_cpu_cores_busy'])}",
            ),
            _row(
                f"{what}: confirm-to-available s",
                " / ".join(f"{x:.3f}" for x in s["confirm_to_available_seconds"]["rounds"]),
            ),
        ]
    return lines


def _targets(targets: Json) -> list[str]:
    lines = ["| target | value | met |", "|---|---|---|"]
    for name, t in targets.items():
        value = t.get("ratio", t.get("value", t.get("ratios_ours_over_peer")))
        if "machine_cores_busy_2p" in t:
            value = (
                f"{value} (2p: machine {t['machine_cores_busy_2p']} of {t['machine_cpus']:.0f}"
                f" cores busy; saturated: {', '.join(t['saturated']) or 'none'})"
            )
        if "by_processes" in t:
            value = f"{value} ({', '.join(f'{k}: {v}' for k, v in t['by_processes'].items())})"
        lines.append(f"| {name} ({t['target']}) | {value} | {'yes' if t['met'] else 'NO'} |")
    return lines


def table(r: Json) -> str:
    """The results as a Markdown table (median, min-max over rounds)."""
    lines = ["| figure | median (min-max) |", "|---|---|"]
    lines += _limits(r["limits"])
    lines += _api(r["api"])
    lines += _relay(r["relay"])
    lines += _notify(r["notify"])
    lines += _flat(r["flat"])
    lines += _end_to_end(r["end_to_end"])
    lines += _peers(r["peers"])
    lines += _multipart(r["multipart"])
    lines.append("")
    lines += _targets(r["targets"])
    return "\n".join(lines)
