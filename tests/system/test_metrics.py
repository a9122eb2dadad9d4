"""Each process serves Prometheus metrics on its own port: the relay and sweeper export the
outbox's state and lag from the database; the Dramatiq workers merge all their processes."""

from __future__ import annotations

import socket
from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import Processes, doc_status, put, sha256_hex
from tests.support.util import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of every sample on a metrics endpoint."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_endpoints(
    make_settings: Callable[..., Settings], clean_db: None, tmp_path, conn
) -> None:
    ports = {"relay": free_port(), "sweeper": free_port(), "worker": free_port()}
    settings = make_settings(
        relay_metrics_port=ports["relay"],
        sweeper_metrics_port=ports["sweeper"],
        worker_metrics_port=ports["worker"],
    )
    outbox = Outbox(settings)
    procs = Processes(settings, logdir=tmp_path)
    procs.start()
    try:
        body = b"metrics " * 100
        ticket = outbox.request_upload(
            conn,
            owner_id="m",
            filename="m.txt",
            content_type="text/plain",
            size=len(body),
            sha256=sha256_hex(body),
        )
        conn.commit()
        assert put(ticket, body).status_code == 200
        outbox.confirm(conn, owner_id="m", document_id=ticket.document.id)
        conn.commit()
        wait_for(
            lambda: doc_status(settings, ticket.document.id) == DocumentStatus.AVAILABLE,
            timeout=60,
            message="document available",
        )

        relay = wait_for(lambda: scrape(ports["relay"]), timeout=30, ignore=(OSError,))
        assert relay["s3outbox_events_dispatched_total{topic=verify}"] >= 1
        assert relay["s3outbox_events{status=done,topic=verify}"] == 1
        assert relay["s3outbox_documents{status=available}"] == 1
        assert "s3outbox_oldest_pending_event_age_seconds{}" in relay
        assert "s3outbox_oldest_dispatched_event_age_seconds{}" in relay
        assert relay["s3outbox_database_up{}"] == 1

        sweeper = wait_for(lambda: scrape(ports["sweeper"]), timeout=30, ignore=(OSError,))
        assert sweeper["s3outbox_documents{status=available}"] == 1

        def worker_counted() -> dict[str, float] | None:
            samples = scrape(ports["worker"])
            done = samples.get("s3outbox_events_done_total{topic=verify}", 0)
            return samples if done >= 1 else None

        worker = wait_for(worker_counted, timeout=30, ignore=(OSError,))
        assert worker["s3outbox_actor_duration_seconds_count{outcome=done,topic=verify}"] >= 1
        assert worker["s3outbox_document_transitions_total{status=available}"] >= 1
    finally:
        procs.stop_all()
    for name in ("relay", "worker", "sweeper"):
        assert "Traceback" not in procs.log(name), procs.log(name)[-3000:]
