"""Large files from the upload page in a real headless Chromium, in parts: each part hashed
from a slice of the file just before it is sent (the JS heap stays about one part, measured
with CDP ``Runtime.getHeapUsage``), four in flight, a failed part sent again, a reload
halfway resumed by picking the same file again, and cancel = delete with nothing left in
storage. The API, relay, Dramatiq worker and sweeper run as real processes; every part goes
to the embedded SeaweedFS over real HTTP (CORS preflight, signed checksum, exposed ETag).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from outbox import DocumentStatus, Settings
from outbox.settings import MIB
from tests.support.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    api_process,
    require_chromium,
    watch,
)
from tests.support.core import Processes
from tests.support.multipart import keys_listed, uploads_of
from tests.support.worker import doc_row, query, quota_row, wait_procs

require_chromium()

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Locator,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

pytestmark = pytest.mark.slow

PART = 16 * MIB
#: The page's settings: anything above 8 MiB goes in parts of 16 MiB.
PAGE_SETTINGS: dict[str, Any] = {
    "max_upload_bytes": 256 * MIB,
    "multipart_threshold_bytes": 8 * MIB,
    "multipart_part_size_bytes": PART,
}
OWNER = "big-files"
#: The page's parts in flight and attempts at one part (outbox/webapp/static/multipart.js).
IN_FLIGHT = 4
MAX_ATTEMPTS = 5
#: The issue's bound on the page's peak JS heap while it uploads: below six parts' worth.
HEAP_BOUND = 6 * PART
#: Where an upload item stops: done, or shown failed.
SETTLED = re.compile(r"^(available|failed|rejected|expired|deleted)$")


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings(**PAGE_SETTINGS)


@pytest.fixture
def api_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with api_process(settings, tmp_path) as url:
        yield url


@pytest.fixture
def context(settings: Settings, processes: Processes) -> Iterator[BrowserContext]:
    processes.start()  # relay, Dramatiq worker, sweeper: the status moves for real
    with sync_playwright() as pw:
        browser: Browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            ctx = browser.new_context(viewport={"width": 1000, "height": 760})
            ctx.set_default_timeout(120_000)
            yield ctx
            ctx.close()
        finally:
            browser.close()
    assert not [n for n, p in processes.procs.items() if p.poll() is not None]


def big_file(tmp_path: Path, name: str, size: int) -> tuple[Path, str]:
    """A file of ``size`` random bytes written in 16 MiB steps; its path and SHA-256."""
    path = tmp_path / name
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for offset in range(0, size, PART):
            chunk = os.urandom(min(PART, size - offset))
            digest.update(chunk)
            f.write(chunk)
    return path, digest.hexdigest()


def part_count(size: int) -> int:
    return -(-size // PART)


def part_number(request: Request, settings: Settings) -> int | None:
    """The part number of a part PUT to storage (None for any other request)."""
    if request.method != "PUT" or not request.url.startswith(settings.public_endpoint):
        return None
    numbers = parse_qs(urlsplit(request.url).query).get("partNumber")
    return int(numbers[0]) if numbers else None


def count_part_puts(page: Page, settings: Settings) -> Counter[int]:
    """Part PUTs the page sends to storage from now on, per part number."""
    sent: Counter[int] = Counter()

    def on_request(request: Request) -> None:
        number = part_number(request, settings)
        if number is not None:
            sent[number] += 1

    page.on("request", on_request)
    return sent


def is_part_url(settings: Settings) -> Callable[[str], bool]:
    return lambda url: url.startswith(settings.public_endpoint) and "partNumber=" in url


def open_page(context: BrowserContext, api_url: str) -> Page:
    page = context.new_page()
    page.goto(api_url + "/")
    page.fill("#owner", OWNER)
    return page


def pump(page: Page) -> bool:
    """A round trip to the page: Playwright's sync API delivers events (and runs route
    handlers) only while the test is inside one of its calls."""
    page.evaluate("1")
    return True


def reported_parts(settings: Settings, doc_id: str) -> set[int]:
    rows = query(
        settings,
        "SELECT part_number FROM s3outbox.document_parts"
        " WHERE document_id = %s AND etag IS NOT NULL",
        (doc_id,),
    )
    return {int(r["part_number"]) for r in rows}


def remembered(page: Page) -> list[str]:
    """The page's resume entries (localStorage) for this owner."""
    entries: list[str] = page.evaluate(
        "() => Object.keys(localStorage).filter((k) => k.startsWith('s3outbox.upload:'))"
    )
    return entries


def wait_available(item: Locator, processes: Processes, settings: Settings) -> str:
    """Wait for the item to show available; its document id (available in the database)."""
    expect(item.locator(".status")).to_have_text(SETTLED, timeout=180_000)
    status = item.locator(".status").inner_text()
    assert status == "available", f"{status}: {item.locator('.error').inner_text()}"
    doc_id = item.get_attribute("data-document-id")
    assert doc_id
    row = wait_procs(
        processes,
        lambda: (r := doc_row(settings, doc_id))["status"] == DocumentStatus.AVAILABLE and r,
        timeout=30,
        what="the document available in the database",
    )
    assert row["verified_size"] == row["declared_size"]
    return doc_id


def download_sha256(page: Page, api_url: str, doc_id: str) -> str:
    """SHA-256 of the document's bytes, fetched through its presigned download URL."""
    ticket = requests.get(
        f"{api_url}/documents/{doc_id}/download",
        headers={"X-Owner-Id": OWNER, "Accept": "application/json"},
        timeout=30,
    ).json()
    digest = hashlib.sha256()
    with requests.get(ticket["url"], stream=True, timeout=120) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(MIB):
            digest.update(chunk)
    return digest.hexdigest()


class HeapSampler:
    """Peak JS heap of a page, from CDP ``Runtime.getHeapUsage``: the V8 heap in use plus the
    backing stores of ArrayBuffers (where a part read for hashing lives), sampled on every
    request the page makes and each time ``sample`` is called."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.cdp = context.new_cdp_session(page)
        self.cdp.send("HeapProfiler.enable")
        self.cdp.send("HeapProfiler.collectGarbage")
        self.samples: list[int] = []
        self.baseline = self.sample()
        self.fields = sorted(self.cdp.send("Runtime.getHeapUsage"))
        page.on("request", self.on_request)
        page.on("requestfinished", self.on_request)

    def on_request(self, _request: Request) -> None:
        self.sample()

    def sample(self) -> int:
        usage = self.cdp.send("Runtime.getHeapUsage")
        used = int(usage["usedSize"]) + int(usage.get("backingStorageSize", 0))
        self.samples.append(used)
        return used

    @property
    def peak(self) -> int:
        return max(self.samples)


def test_a_200_mib_file_goes_in_parts_with_a_bounded_heap(
    settings: Settings,
    processes: Processes,
    api_url: str,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    size = 200 * MIB
    path, digest = big_file(tmp_path, "survey scan.zip", size)
    page = open_page(context, api_url)
    problems = watch(page)
    sent = count_part_puts(page, settings)
    asked: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            asked.append(json.loads(r.post_data or "{}"))
            if r.method == "POST" and r.url.endswith("/documents/upload-url")
            else None
        ),
    )
    etags: list[str | None] = []
    page.on(
        "response",
        lambda r: etags.append(r.headers.get("etag")) if part_number(r.request, settings) else None,
    )
    heap = HeapSampler(context, page)

    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first

    def settled() -> bool:
        heap.sample()
        return item.get_attribute("data-status") in ("available", "failed", "rejected")

    wait_procs(processes, settled, timeout=300, what="the upload settled")
    doc_id = wait_available(item, processes, settings)

    count = part_count(size)
    assert sent == Counter({n: 1 for n in range(1, count + 1)})  # each part once
    assert len(etags) == count and all(etags)  # storage's CORS rule exposes the ETag
    assert asked == [  # no whole-file hash for a file in parts: the page never holds it
        {"filename": "survey scan.zip", "content_type": "application/zip", "size": size}
    ]
    steps = item.locator(".steps").inner_text()
    assert steps == "uploading → uploaded → available", steps
    expect(item.locator(".parts")).to_have_text(f"{count} of {count} parts")
    expect(item.locator("progress")).to_have_attribute("value", "100")
    expect(item.locator("button.cancel")).to_be_hidden()
    assert remembered(page) == []  # confirmed: nothing left to resume
    assert quota_row(settings, OWNER)["used_bytes"] == size
    assert download_sha256(page, api_url, doc_id) == digest

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page-multipart.png"), full_page=True)
    figures = {
        "file_bytes": size,
        "part_bytes": PART,
        "parts": count,
        "samples": len(heap.samples),
        "baseline_bytes": heap.baseline,
        "peak_bytes": heap.peak,
        "peak_mib": round(heap.peak / MIB, 1),
        "bound_mib": HEAP_BOUND // MIB,
        "cdp_fields": heap.fields,
    }
    (ARTIFACTS / "browser-multipart-heap.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\npeak JS heap while uploading {size // MIB} MiB in {count} parts: {figures}")
    assert "backingStorageSize" in heap.fields  # the parts' ArrayBuffers are counted
    assert len(heap.samples) > 2 * count
    assert heap.peak < HEAP_BOUND, figures
    # Tighter, the page's own design: one part buffer, reused (with blob.arrayBuffer() per part
    # the garbage reached 82 MiB before V8 collected it).
    assert heap.peak - heap.baseline < 2 * PART, figures
    assert problems == [], "\n".join(problems)


def test_a_reload_halfway_resumes_from_the_reported_parts(
    settings: Settings,
    processes: Processes,
    api_url: str,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    """Parts above 3 are held (never reach storage) until the page is reloaded: parts 1..3
    are then reported, exactly. Picking the same file again resumes the same document and
    sends only parts 4..7, each once; the reported ones are hashed again, not sent."""
    size = 100 * MIB
    count = part_count(size)
    path, digest = big_file(tmp_path, "dataset.zip", size)
    page = open_page(context, api_url)
    part_url = is_part_url(settings)
    held: list[Route] = []

    def hold_later_parts(route: Route) -> None:
        number = part_number(route.request, settings)
        if number is not None and number > 3:
            held.append(route)  # never answered: the reload cancels it
        else:
            route.continue_()

    reloaded = False

    def cancelled_by_the_reload(request: Request) -> bool:
        number = part_number(request, settings)
        return not reloaded and number is not None and number > 3

    problems = watch(page, cancelled_by_the_reload)
    page.route(part_url, hold_later_parts)
    first = count_part_puts(page, settings)
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    expect(item).to_have_attribute("data-parts-done", "3", timeout=120_000)
    doc_id = item.get_attribute("data-document-id")
    assert doc_id
    wait_procs(
        processes,
        lambda: pump(page) and len(held) == IN_FLIGHT,
        timeout=60,
        what="four later parts held in flight",
    )
    assert reported_parts(settings, doc_id) == {1, 2, 3}
    assert set(first) == {1, 2, 3, 4, 5, 6, 7} and len(remembered(page)) == 1
    expect(item.locator(".parts")).to_have_text(f"3 of {count} parts")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page-multipart-halfway.png"), full_page=True)

    page.reload()  # the held parts never reach storage
    reloaded = True
    page.unroute(part_url)
    assert doc_row(settings, doc_id)["status"] == DocumentStatus.PENDING
    again = count_part_puts(page, settings)
    statuses: list[dict[str, Any]] = []
    page.on(
        "response",
        lambda r: statuses.append(r.json()) if r.url.endswith(f"/{doc_id}/upload") else None,
    )
    page.fill("#owner", OWNER)  # the page starts with the default owner after a reload
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    assert wait_available(item, processes, settings) == doc_id  # the same document, resumed

    resumed_from = statuses[0]["parts"]  # what the page was told on picking the file again
    assert sorted(p["part_number"] for p in resumed_from if p["etag"]) == [1, 2, 3]
    assert again == Counter({n: 1 for n in range(4, count + 1)})  # reported parts not re-sent
    assert first[1] == first[2] == first[3] == 1
    steps = item.locator(".steps").inner_text()
    assert steps.startswith("resuming → uploading → uploaded"), steps
    assert remembered(page) == []
    assert download_sha256(page, api_url, doc_id) == digest
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page-multipart-resumed.png"), full_page=True)
    assert problems == [], "\n".join(problems)


def test_a_failed_part_is_sent_again_and_a_failing_one_can_be_retried(
    settings: Settings,
    processes: Processes,
    api_url: str,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    """Part 2's first PUT is aborted: the page sends it again (backoff) and the file ends
    available. Then a file whose part 2 fails every time: after the bounded attempts the
    upload shows the error and a Retry button; once storage takes it again, Retry finishes
    the upload without sending the parts already reported."""
    size = 40 * MIB  # parts of 16, 16 and 8 MiB
    page = open_page(context, api_url)
    part_url = is_part_url(settings)
    aborted: Counter[str] = Counter()
    mode = {"fail": "first"}

    def fail_part_2(route: Route) -> None:
        if part_number(route.request, settings) == 2 and (mode["fail"] == "always" or not aborted):
            aborted[route.request.url.split("?")[0]] += 1
            route.abort("connectionreset")
        else:
            route.continue_()

    def expected_failure(request: Request) -> bool:
        return part_number(request, settings) == 2

    problems = watch(page, expected_failure)
    page.route(part_url, fail_part_2)
    sent = count_part_puts(page, settings)

    path, _ = big_file(tmp_path, "once.bin", size)
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    wait_available(item, processes, settings)
    assert sent == Counter({1: 1, 2: 2, 3: 1}) and sum(aborted.values()) == 1

    mode["fail"] = "always"
    sent.clear()
    path, digest = big_file(tmp_path, "always.bin", size)
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    expect(item.locator(".status")).to_have_text("failed", timeout=120_000)
    expect(item.locator(".error")).to_contain_text("part 2: ")
    expect(item.locator(".error")).to_contain_text(f"after {MAX_ATTEMPTS} attempts")
    expect(item.locator("button.retry")).to_be_visible()
    expect(item.locator("button.cancel")).to_be_visible()
    doc_id = item.get_attribute("data-document-id")
    assert doc_id and doc_row(settings, doc_id)["status"] == DocumentStatus.PENDING
    assert sent == Counter({1: 1, 2: MAX_ATTEMPTS, 3: 1})
    assert reported_parts(settings, doc_id) == {1, 3}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page-multipart-failed.png"), full_page=True)

    page.unroute(part_url)
    sent.clear()
    item.locator("button.retry").click()
    # The item leaves "failed" first (else the wait below would take the old status).
    expect(item.locator(".status")).not_to_have_text("failed", timeout=30_000)
    assert wait_available(item, processes, settings) == doc_id
    assert sent == Counter({2: 1})  # parts 1 and 3 were reported: hashed again, not sent
    assert (
        "failed → resuming → uploading → uploaded → available"
        in item.locator(".steps").inner_text()
    )
    assert download_sha256(page, api_url, doc_id) == digest
    chromium_noise = [p for p in problems if "net::ERR_CONNECTION_RESET" not in p]
    assert chromium_noise == [], "\n".join(problems)


def test_cancel_deletes_the_document_and_leaves_nothing_in_storage(
    settings: Settings,
    processes: Processes,
    api_url: str,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    size = 100 * MIB
    path, _ = big_file(tmp_path, "cancelled.bin", size)
    page = open_page(context, api_url)
    part_url = is_part_url(settings)
    held: list[Route] = []

    def hold_later_parts(route: Route) -> None:
        number = part_number(route.request, settings)
        if number is not None and number > 2:
            held.append(route)  # in flight until the cancel aborts it
        else:
            route.continue_()

    def expected_failure(request: Request) -> bool:
        number = part_number(request, settings)
        return number is not None and number > 2

    problems = watch(page, expected_failure)
    page.route(part_url, hold_later_parts)
    page.locator("#file").set_input_files(str(path))
    item = page.locator("#uploads .upload").first
    expect(item).to_have_attribute("data-parts-done", "2", timeout=120_000)
    doc_id = item.get_attribute("data-document-id")
    assert doc_id
    key = doc_row(settings, doc_id)["object_key"]
    assert len(uploads_of(settings, key)) == 1  # the multipart upload in progress
    assert reported_parts(settings, doc_id) == {1, 2}

    item.locator("button.cancel").click()
    expect(item.locator(".status")).to_have_text("deleted", timeout=120_000)
    assert "cancelling → deleting" in item.locator(".steps").inner_text()
    wait_procs(
        processes,
        lambda: doc_row(settings, doc_id)["status"] == DocumentStatus.DELETED,
        timeout=60,
        what="the document deleted",
    )
    assert uploads_of(settings, key) == []  # the multipart upload aborted...
    assert keys_listed(settings, key) == []  # ...and no object
    assert quota_row(settings, OWNER)["reserved_bytes"] == 0
    assert remembered(page) == []
    expect(item.locator("button.cancel")).to_be_hidden()
    expect(item.locator("button.retry")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page-multipart-cancelled.png"), full_page=True)
    assert problems == [], "\n".join(problems)
