"""Helpers of the browser tests: the API as a child process (real uvicorn), headless Chromium
driven by Playwright, and what a page did wrong (console errors, failed requests).

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and the playwright package;
the test module skips (fails under CI) otherwise. Playwright never downloads a browser here:
it drives the system one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from outbox import Settings
from tests.support.core import ROOT, settings_env
from tests.support.require import missing_module
from tests.support.util import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Request

CHROMIUM = os.environ.get("S3OUTBOX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots (and figures) of the browser tests, for people to look at.
ARTIFACTS = ROOT / "test-artifacts"


def require_chromium() -> None:
    """Skip the calling test module (fail under CI) when there is no Chromium to drive."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing_module(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or set S3OUTBOX_TEST_CHROMIUM)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_process(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``s3-outbox api`` (real uvicorn) as a child process on a free port; yields its URL.
    Its log must hold no traceback when it stops."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings_env(settings), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return requests.get(f"{url}/openapi.json", timeout=2).status_code == 200

        wait_for(up, timeout=30, ignore=(requests.ConnectionError,), message="the API")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


def watch(page: Page, expected: Callable[[Request], bool] = lambda _r: False) -> list[str]:
    """What the page does wrong from now on, as it happens: console errors and warnings
    (Chromium logs an HTTP error answer there too), page errors, and failed requests other
    than ``expected`` ones (a navigation that turned into a download is always expected)."""
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def failed(request: Request) -> None:
        if request.is_navigation_request() and "ERR_ABORTED" in (request.failure or ""):
            return  # a navigation that turns into a download is reported as aborted
        if not expected(request):
            problems.append(f"failed: {request.method} {request.url} {request.failure}")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", failed)
    return problems
