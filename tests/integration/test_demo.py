"""The demo of ``s3-outbox run`` (worker/demo.py) on the real servers: its small files go in
one PUT each, its large generated file in parallel parts through the upload helper, and
every document settles (available, or deleted where the demo deletes it)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import InlineWorker
from tests.support.multipart import MULTIPART_SETTINGS
from tests.support.uploads import worker_running
from worker.demo import LARGE_NAME, LARGE_THREADS, demo_files, large_file_size, run_demo


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    """Parts of 5 MiB above 5 MiB: the demo's large file is a few parts."""
    return make_settings(**MULTIPART_SETTINGS)


def test_the_demo_sends_its_large_file_in_parts_and_every_document_settles(
    settings: Settings,
    outbox: Outbox,
    inline_worker: InlineWorker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    large = large_file_size(settings)
    files = demo_files(tmp_path, large_bytes=large)
    assert files[-1].name == LARGE_NAME and files[-1].stat().st_size == large
    assert all(f.stat().st_size <= settings.multipart_threshold_bytes for f in files[:-1])

    with worker_running(inline_worker):
        settled = run_demo(settings, files, timeout=120)
    out = capsys.readouterr().out

    assert settled, out[-3000:]
    owner = re.search(r"demo owner: (\S+)", out)
    assert owner is not None, out[-3000:]
    with psycopg.connect(settings.database_url) as conn:
        docs = outbox.list(conn, owner_id=owner.group(1), limit=100, include_deleted=True).items
    by_name = {d.filename: d for d in docs}
    big = by_name[LARGE_NAME]
    assert big.multipart is not None and big.declared_size == large
    assert big.status in (DocumentStatus.AVAILABLE, DocumentStatus.DELETED)
    parts = big.multipart.part_count
    assert parts >= 2
    assert f"{LARGE_NAME}: {parts} parts ({large} bytes)" in out
    assert f"{LARGE_THREADS} at a time, by the upload helper" in out
    # Every other demo file settled too.
    for f in files[:-1]:
        assert by_name[f.name].status in (DocumentStatus.AVAILABLE, DocumentStatus.DELETED), f
