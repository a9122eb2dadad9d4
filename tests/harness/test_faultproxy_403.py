"""The fault proxy's 403 windows (the chaos run's ``storage_403`` fault) against real storage:
what the workers' storage client sees is classified as storage unavailable (postponed, never
"missing" and never a failure), bucket-level requests still go through (so a worker's boot
check, which lists the prefix, is not what a window refuses), and the window ends."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from harness.faultproxy import DENY_KIND, FaultProxy, FaultRates
from outbox import Settings
from worker.storage import Storage, unavailable

NO_FAULTS = FaultRates(http_500=0, http_503=0, drop=0, delay=0, stale_share=0)


@pytest.fixture
def proxy(settings: Settings) -> Iterator[FaultProxy]:
    with FaultProxy(settings.s3_endpoint_url, NO_FAULTS) as running:
        yield running


@pytest.fixture
def behind(make_settings: Callable[..., Settings], proxy: FaultProxy) -> Storage:
    return Storage(make_settings(s3_endpoint_url=proxy.url))


def refused(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def test_a_deny_window_answers_403_to_object_requests_as_access_denied(
    settings: Settings, storage: Storage, behind: Storage, proxy: FaultProxy
) -> None:
    key = f"{settings.key_prefix}{uuid.uuid4()}"
    missing = f"{settings.key_prefix}{uuid.uuid4()}"
    storage.client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"kept")
    assert behind.head(key) is not None and behind.head(missing) is None

    proxy.deny(60)
    # HeadObject (no body: botocore's code is "403"), GetObject and DeleteObject (an XML
    # AccessDenied), of an object that exists or not: each is "storage unavailable", so an
    # event is postponed, not failed, and no object is taken for missing.
    for call in (
        lambda: behind.head(key),
        lambda: behind.head(missing),
        lambda: behind.sha256_hex(key, 1024),
        lambda: behind.delete(key),
    ):
        assert unavailable(refused(call)) == "access_denied"
    assert proxy.faults()[DENY_KIND] == 4
    # A bucket-level request is not an object request: the listing still answers.
    behind.check_bucket()
    assert storage.head(key) is not None  # and the refused DeleteObject never reached storage

    proxy.deny(0)
    assert behind.head(key) is not None
    proxy.deny(60)
    proxy.enabled = False  # the chaos run's end: no fault at all, windows included
    assert behind.head(key) is not None
    assert proxy.faults()[DENY_KIND] == 4
