"""The Grafana dashboard and the Prometheus alert rules in deploy/ work with what the
processes export.

- ``promtool check rules`` and ``promtool test rules`` pass (skipped without promtool);
- the dashboard is valid JSON on a ``${DS_PROMETHEUS}`` datasource input, and every PromQL
  expression in it and in the alerts names only metrics that worker/metrics.py defines;
- a real Prometheus scraping the real relay, worker and sweeper (jobs relay/worker/sweeper)
  sees them up, accepts every dashboard query, returns data for the lag and throughput
  panels while documents go through, loads the alert rules healthy, and puts
  S3OutboxProcessDown in pending when a process stops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import ROOT, Processes, doc_status, put, sha256_hex
from tests.support.require import missing
from tests.support.util import wait_for

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "s3-outbox.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
JOBS = ("relay", "worker", "sweeper")
#: What the dashboard's Grafana variables stand for when a query goes straight to Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s"}

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def _promtool() -> None:
    if PROMTOOL is None:
        missing(
            "promtool not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run does it)"
        )


@pytest.fixture
def _prometheus() -> None:
    if PROMETHEUS is None:
        missing(
            "prometheus not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run does it)"
        )


needs_promtool = pytest.mark.usefixtures("_promtool")
needs_prometheus = pytest.mark.usefixtures("_prometheus")


# -- PromQL helpers ------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping
    clauses, function and aggregation names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping labels
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    found = []
    for panel in dashboard()["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                found.append((sub["title"], target["expr"]))
    return found


def alert_exprs() -> dict[str, str]:
    """alert name -> expression, read from alerts.yml without a YAML library: every rule's
    ``expr`` is a one-line or a folded (``>-``) scalar."""
    exprs: dict[str, str] = {}
    lines = ALERTS.read_text(encoding="utf-8").splitlines()
    name = ""
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\w+)", line):
            name = m.group(1)
        elif m := re.match(r"(\s*)expr: (.*)$", line):
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in (">-", ">", "|", "|-"):
                body = []
                for following in lines[i + 1 :]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    body.append(following.strip())
                value = " ".join(b for b in body if b)
            exprs[name] = value
    return exprs


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def names_in_metrics_module() -> set[str]:
    """Every series name worker/metrics.py can export: metric names plus the suffixes a
    counter (_total) and a histogram (_bucket, _count, _sum) add."""
    source = (ROOT / "worker" / "metrics.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(s3outbox_\w+)"', source))
    names |= {f"{n}{s}" for n in names for s in ("_bucket", "_count", "_sum")}
    return names


# -- static checks -------------------------------------------------------------------------


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, topic) (rate(x_bucket{topic=~"a|b"}[5m])))'
        ' / on (topic) group_left max(y) or up{job="relay"} == bool 0 offset 5m'
    )
    assert metric_names(expr) == {"x_bucket", "y", "up"}


def test_dashboard_is_grafana_json_on_a_datasource_input() -> None:
    dash = dashboard()
    assert dash["title"] == "s3-outbox" and dash["uid"]
    [ds_input] = dash["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    ids = []
    for panel in dash["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = " ".join(e for _, e in dashboard_targets())
    # What the dashboard is for: lag, backlog, throughput, failures, dead, latency, quota.
    for needle in (
        "s3outbox_oldest_pending_event_age_seconds",
        "s3outbox_oldest_dispatched_event_age_seconds",
        "s3outbox_events{",
        "rate(s3outbox_events_dispatched_total",
        "rate(s3outbox_events_done_total",
        "rate(s3outbox_events_retried_total",
        "s3outbox_events_dead_total",
        "histogram_quantile(0.99, sum by (le, topic) (rate(s3outbox_actor_duration_seconds_bucket",
        "s3outbox_quota_bytes",
        "s3outbox_quota_owners_above_90_percent",
        's3outbox_storage_bytes{kind="stored"}',
        's3outbox_storage_bytes{kind="charged"}',
        "s3outbox_blobs",
    ):
        assert needle in exprs, needle


def test_dashboard_and_alerts_use_only_metrics_we_define() -> None:
    known = names_in_metrics_module() | {"up"}
    used = {(title, n) for title, e in dashboard_targets() for n in metric_names(e)}
    used |= {(alert, n) for alert, e in alert_exprs().items() for n in metric_names(e)}
    unknown = sorted((where, n) for where, n in used if n not in known)
    assert not unknown, f"not exported by worker/metrics.py: {unknown}"
    assert set(alert_exprs()) == {
        "S3OutboxRelayLagHigh",
        "S3OutboxWorkerLagHigh",
        "S3OutboxDeadEvents",
        "S3OutboxProcessDown",
        "S3OutboxVerifyFailureRateHigh",
        "S3OutboxDatabaseDown",
        "S3OutboxBucketWalkOverdue",
    }


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- a real Prometheus scraping the real processes -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus server on 127.0.0.1, config and TSDB in a temporary folder."""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
            "rule_files:",
            f"  - {json.dumps(str(ALERTS))}",
            "scrape_configs:",
        ]
        for job, port in targets.items():
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                f"      - targets: ['127.0.0.1:{port}']",
            ]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(self.ready, timeout=30, ignore=(requests.RequestException,), message="prometheus")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log()[-2000:]}")
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def api(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (a list of {metric, value})."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def values(self, expr: str) -> dict[str, float]:
        """``{label=value,...}`` -> value of an instant query."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in self.query(expr)
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture
def observed(
    make_settings: Callable[..., Settings], clean_db: None, tmp_path: Path
) -> Iterator[tuple[Settings, Processes, dict[str, int]]]:
    """relay, worker and sweeper as real processes, each serving /metrics on its own port."""
    ports = {job: free_port() for job in JOBS}
    settings = make_settings(
        relay_metrics_port=ports["relay"],
        worker_metrics_port=ports["worker"],
        sweeper_metrics_port=ports["sweeper"],
    )
    procs = Processes(settings, logdir=tmp_path)
    procs.start(*JOBS)
    try:
        yield settings, procs, ports
    finally:
        procs.stop_all()
    for job in JOBS:
        assert "Traceback" not in procs.log(job), procs.log(job)[-3000:]


@pytest.fixture
def prometheus(
    observed: tuple[Settings, Processes, dict[str, int]], tmp_path: Path
) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        missing("prometheus not installed (apt-get install prometheus; .ci/run does it)")
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(workdir, observed[2])
    try:
        yield server
    finally:
        server.stop()


def scrape_names(port: int) -> set[str]:
    """Every series name a metrics endpoint declares (HELP/TYPE included, so a labelled
    metric that has no sample yet counts too), with the suffixes its type adds."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum"))
    return names


def upload_and_verify(settings: Settings, owner: str, body: bytes) -> None:
    """Request, real HTTP PUT, confirm; then wait for the real worker to verify."""
    outbox = Outbox(settings)
    with psycopg.connect(settings.database_url) as conn:
        ticket = outbox.request_upload(
            conn,
            owner_id=owner,
            filename="report.txt",
            content_type="text/plain",
            size=len(body),
            sha256=sha256_hex(body),
        )
        conn.commit()
        assert put(ticket, body).status_code == 200
        outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()
    wait_for(
        lambda: doc_status(settings, ticket.document.id) == DocumentStatus.AVAILABLE,
        timeout=60,
        message="document available",
    )


@needs_prometheus
@pytest.mark.slow
def test_real_prometheus_scrapes_processes_and_dashboard_queries_return_data(
    observed: tuple[Settings, Processes, dict[str, int]], prometheus: Prometheus
) -> None:
    settings, procs, ports = observed

    def all_up() -> dict[str, float] | None:
        up = prometheus.values('up{job=~"relay|worker|sweeper"}')
        by_job = {k.split("job=")[1].split(",")[0]: v for k, v in up.items()}
        return by_job if by_job == {job: 1.0 for job in JOBS} else None

    wait_for(all_up, timeout=60, interval=0.5, message="up == 1 for relay, worker and sweeper")

    # A first document: the worker's done counter comes into existence.
    upload_and_verify(settings, "prom-a", b"first document " * 64)
    wait_for(
        lambda: prometheus.values('sum(s3outbox_events_done_total{topic="verify"})'),
        timeout=30,
        interval=0.5,
        message="Prometheus to scrape the done counter",
    )

    # The real endpoints declare every name the dashboard and the alerts use.
    exported = set().union(*(scrape_names(port) for port in ports.values())) | {"up"}
    used = {n for _, e in dashboard_targets() for n in metric_names(e)}
    used |= {n for e in alert_exprs().values() for n in metric_names(e)}
    assert used <= exported, f"used but not exported: {sorted(used - exported)}"

    # More documents while Prometheus watches: the done rate becomes positive.
    for i in range(3):
        upload_and_verify(settings, "prom-b", f"document {i} ".encode() * 64)
    targets: dict[str, str] = {}  # panel title -> its first query
    for title, expr in dashboard_targets():
        targets.setdefault(title, expr)
    done_rate = grafana_to_promql(targets["Done per second by topic"])

    def done_rate_positive() -> dict[str, float] | None:
        rates = prometheus.values(done_rate)
        return rates if rates.get("topic=verify", 0.0) > 0 else None

    wait_for(done_rate_positive, timeout=30, interval=0.5, message="done rate > 0")

    # Every dashboard query is valid PromQL that Prometheus accepts.
    for _title, expr in dashboard_targets():
        prometheus.query(grafana_to_promql(expr))  # asserts status == success
    # The lag and throughput queries have data (nothing was redispatched: that one is empty).
    # Each endpoint is scraped on its own schedule: a rate needs two scrapes of the relay's
    # series too, which may come a scrape after the worker's.
    with_data = (
        "Lag",
        "Dispatched per second by topic",
        "Done per second by topic",
        "Bytes stored vs bytes charged",
        "Blobs by state",
        "Saved by sharing blobs",
    )
    for title, expr in dashboard_targets():
        if title in with_data and "redispatched" not in expr:
            promql = grafana_to_promql(expr)
            wait_for(
                lambda q=promql: prometheus.query(q),
                timeout=30,
                interval=0.5,
                message=f"data for {title}: {expr}",
            )
    dispatched = prometheus.values(grafana_to_promql(targets["Dispatched per second by topic"]))
    assert "topic=verify" in dispatched
    lag = prometheus.values("max(s3outbox_oldest_pending_event_age_seconds)")
    assert list(lag) == [""] and lag[""] >= 0
    latency = prometheus.values(
        grafana_to_promql(targets["Actor latency by topic (p50, p95, p99)"])
    )
    assert latency.get("topic=verify", -1) > 0
    uploaded = len(b"first document " * 64) + 3 * len(b"document 0 " * 64)

    def quota_settled() -> dict[str, float] | None:
        quota = prometheus.values("max by (kind) (s3outbox_quota_bytes)")
        settled = quota.get("kind=used") == uploaded and quota.get("kind=reserved") == 0
        return quota if settled else None

    wait_for(quota_settled, timeout=15, interval=0.5, message="quota gauges: all used")
    assert prometheus.values("min(s3outbox_database_up)") == {"": 1.0}

    # The alert rules are loaded and evaluate cleanly; nothing fires on a healthy system.
    def rules_healthy() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if len(rules) == len(alert_exprs()) and all(r["health"] == "ok" for r in rules)
            else None
        )

    wait_for(rules_healthy, timeout=30, interval=0.5, message="alert rules evaluated")
    assert prometheus.api("alerts")["alerts"] == []

    # A process goes away: its `up` drops to 0 and S3OutboxProcessDown goes pending.
    procs.stop("sweeper")

    def sweeper_down_pending() -> list[dict[str, Any]] | None:
        alerts = [
            a
            for a in prometheus.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "S3OutboxProcessDown"
        ]
        return alerts or None

    [alert] = wait_for(sweeper_down_pending, timeout=30, interval=0.5, message="alert pending")
    assert alert["labels"]["job"] == "sweeper" and alert["state"] == "pending"
    assert alert["labels"]["severity"] == "critical"
