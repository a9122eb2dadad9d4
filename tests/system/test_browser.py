"""The upload page in a real headless Chromium: hash in the browser, PUT straight to storage
(CORS preflight and all), confirm, watch the status move to available with the real relay,
Dramatiq worker and sweeper running, then download the bytes back.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and the playwright package;
skipped otherwise. Playwright never downloads a browser here: it drives the system one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from outbox import Settings
from tests.support.core import ROOT, Processes, doc_status, settings_env
from tests.support.require import missing_module
from tests.support.util import wait_for

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
ARTIFACTS = ROOT / "test-artifacts"

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    missing_module(
        f"no Chromium at {CHROMIUM}: apt-get install chromium (or set S3OUTBOX_TEST_CHROMIUM)"
    )

from playwright.sync_api import Browser, ConsoleMessage, Request, expect, sync_playwright  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``s3-outbox api`` (real uvicorn) as a child process on a free port."""
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


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_upload_page_end_to_end(
    settings: Settings,
    processes: Processes,
    api_url: str,
    browser: Browser,
    tmp_path: Path,
) -> None:
    processes.start()  # relay, Dramatiq worker, sweeper: the status moves for real
    name = "Quarterly report — été.txt"
    body = "".join(f"line {i}: rows and blobs in step\n" for i in range(4000)).encode()
    path = tmp_path / name
    path.write_bytes(body)

    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 760})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: _console_problem(m, problems))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: _request_problem(r, problems))
    puts: list[Request] = []
    page.on("request", lambda r: puts.append(r) if r.method == "PUT" else None)
    page.set_default_timeout(60_000)

    page.goto(api_url + "/")
    expect(page.locator("#documents-empty")).to_be_visible()
    page.fill("#owner", "browser-user")
    page.locator("#file").set_input_files(str(path))

    item = page.locator("#uploads .upload").first
    expect(item.locator(".status")).to_have_text("available", timeout=90_000)
    steps = item.locator(".steps").inner_text()
    assert "uploading → uploaded" in steps and steps.endswith("available"), steps
    expect(item.locator("progress")).to_have_attribute("value", "100")

    # The body went straight to storage, with the signed checksum header (CORS preflight passed).
    assert len(puts) == 1
    assert puts[0].url.startswith(settings.public_endpoint)
    assert "x-amz-checksum-sha256" in puts[0].headers

    doc_id = item.get_attribute("data-document-id")
    assert doc_id and doc_status(settings, doc_id) == "available"

    # The list and the quota refreshed after the upload.
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    expect(page.locator("#documents tbody .badge")).to_have_text("available")
    expect(page.locator("#quota-text")).to_contain_text("used")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page.png"), full_page=True)

    with page.expect_download() as info:
        item.locator("a.download").click()
    download = info.value
    assert download.suggested_filename == name
    downloaded = download.path()
    assert downloaded is not None and Path(downloaded).read_bytes() == body

    page.goto(api_url + "/")  # back from the download navigation
    page.fill("#owner", "browser-user")
    page.locator("#owner").dispatch_event("change")
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    page.locator("#file").set_input_files(str(path))  # same content again: deduplicated
    again = page.locator("#uploads .upload").first
    expect(again.locator(".status")).to_have_text("available")
    assert "deduplicated" in again.locator(".steps").inner_text()
    assert again.get_attribute("data-document-id") == doc_id
    assert len(puts) == 1  # nothing sent to storage the second time

    context.close()
    assert problems == [], "\n".join(problems)
    assert not [n for n, p in processes.procs.items() if p.poll() is not None]


def test_refused_upload_shows_the_error(api_url: str, browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "program.exe"
    path.write_bytes(b"MZ" + bytes(100))
    page = browser.new_page()
    page.goto(api_url + "/")
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    expect(item.locator(".status")).to_have_text("failed", timeout=30_000)
    expect(item.locator(".error")).to_contain_text("content type")
    page.close()


def _console_problem(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type in ("error", "warning"):
        problems.append(f"console {message.type}: {message.text}")


def _request_problem(request: Request, problems: list[str]) -> None:
    # A navigation that turns into a download is reported as aborted: that is the download.
    if request.is_navigation_request() and "ERR_ABORTED" in (request.failure or ""):
        return
    problems.append(f"failed: {request.method} {request.url} {request.failure}")
