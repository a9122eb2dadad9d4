"""The upload page in a real headless Chromium: hash in the browser, PUT straight to storage
(CORS preflight and all), confirm, watch the status move to available with the real relay,
Dramatiq worker and sweeper running, then download the bytes back.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and the playwright package;
skipped otherwise (tests/support/browser.py). Large files in parts: test_browser_multipart.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox import Settings
from tests.support.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    api_process,
    require_chromium,
    watch,
)
from tests.support.core import Processes, doc_status

require_chromium()

from playwright.sync_api import Browser, Request, expect, sync_playwright  # noqa: E402


@pytest.fixture
def api_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``s3-outbox api`` (real uvicorn) as a child process on a free port."""
    with api_process(settings, tmp_path) as url:
        yield url


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
    problems = watch(page)
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
    # The same content again: a second document sharing the verified blob, available at
    # once, nothing sent to storage.
    page.locator("#file").set_input_files(str(path))
    again = page.locator("#uploads .upload").first
    expect(again.locator(".status")).to_have_text("available")
    assert "deduplicated" in again.locator(".steps").inner_text()
    assert again.get_attribute("data-document-id") not in (None, doc_id)
    expect(page.locator("#documents tbody tr")).to_have_count(2)
    assert len(puts) == 1

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


#: Lengths around SHA-256's 64-byte blocks and its padding (55/56), past the 4 MiB chunk the
#: page reads a file in, and past the 16 MiB up to which a file is hashed whole.
HASH_LENGTHS = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 4 * 2**20 + 77]
HASH_LENGTHS += [16 * 2**20 + 1]


def _pattern(n: int) -> bytes:
    """Byte i is (31 i + i // 256) mod 256, as the page makes them: 256-byte rows."""
    rows = [bytes((31 * j + b) & 255 for j in range(256)) for b in range(256)]
    return b"".join(rows[b % 256] for b in range(n // 256 + 1))[:n]


def test_the_page_hashes_a_file_incrementally_as_sha256(api_url: str, browser: Browser) -> None:
    """The page's own incremental SHA-256 (a file sent with one PUT above 16 MiB is never read
    whole), fed in odd-sized pieces and from a Blob in 4 MiB chunks, and the file hash the
    page uses (crypto.subtle up to 16 MiB), against hashlib."""
    page = browser.new_page()
    problems = watch(page)
    page.goto(api_url + "/")
    got = page.evaluate(
        """async (lengths) => {
            const { Sha256, sha256Incremental, sha256OfFile } = await import("./static/sha256.js");
            const out = [];
            for (const n of lengths) {
                const bytes = new Uint8Array(n);
                for (let i = 0; i < n; i += 1) bytes[i] = (i * 31 + (i >> 8)) & 255;
                const pieces = [];
                for (const step of [1, 7, 64, 65, 1 << 20]) {
                    if (step < 64 && n > 5000) continue;
                    const hash = new Sha256();
                    for (let i = 0; i < n; i += step) hash.update(bytes.subarray(i, i + step));
                    pieces.push(hash.hex());
                }
                const blob = new Blob([bytes]);
                out.push({
                    n,
                    pieces,
                    incremental: await sha256Incremental(blob),
                    file: await sha256OfFile(blob),
                });
            }
            return out;
        }""",
        HASH_LENGTHS,
    )
    page.close()
    for entry in got:
        want = hashlib.sha256(_pattern(entry["n"])).hexdigest()
        assert set(entry["pieces"]) == {want}, entry["n"]
        assert entry["incremental"] == want, entry["n"]
        assert entry["file"] == want, entry["n"]
    assert [e["n"] for e in got] == HASH_LENGTHS
    assert problems == [], "\n".join(problems)
