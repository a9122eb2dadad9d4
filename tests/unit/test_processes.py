"""What ``s3-outbox run`` starts and where: the Procfile is the process list in code, and the
servers' fixed ports are the ones ``Settings``' defaults name and no free-port search takes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from outbox.settings import Settings
from worker.embedded import StackPorts
from worker.embedded.process import DEV_STACK_PORTS
from worker.processes import PROCESSES, procfile

ROOT = Path(__file__).resolve().parents[2]


def test_the_procfile_is_the_process_list() -> None:
    assert (ROOT / "Procfile").read_text() == procfile()
    assert [line.split(":", 1)[0] for line in procfile().splitlines()] == list(PROCESSES)


def test_the_dev_stack_ports_are_the_settings_defaults() -> None:
    """``free_ports`` skips ``DEV_STACK_PORTS``: they must be exactly the fixed ports."""
    defaults = StackPorts.defaults()
    assert {defaults.postgres, defaults.valkey, *defaults.seaweed.all()} == DEV_STACK_PORTS
    fields = Settings.model_fields
    assert urlsplit(fields["database_url"].default).port == defaults.postgres
    assert urlsplit(fields["redis_url"].default).port == defaults.valkey
    assert urlsplit(fields["s3_endpoint_url"].default).port == defaults.seaweed.s3
