"""The values expiry and the bucket walk derive from settings, and the signing instant a
presigned URL carries (no servers: presigning is local work)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from outbox.presign import Presigner, signed_at
from outbox.settings import Settings


def test_the_orphan_horizon_is_the_longest_window_plus_the_longest_upload_plus_grace() -> None:
    settings = Settings(
        upload_url_max_ttl_seconds=3600, max_upload_seconds=21600, purge_grace_seconds=5
    )
    assert settings.orphan_horizon_seconds == 3600 + 21600 + 5
    # A setting may raise it, never lower it.
    assert Settings(orphan_min_age_seconds=86400).orphan_horizon_seconds == 86400
    assert Settings(orphan_min_age_seconds=60).orphan_horizon_seconds == 3600 + 21600 + 5


def test_the_walk_cursor_is_one_per_bucket_and_prefix() -> None:
    a = Settings(s3_bucket="b1", key_prefix="docs/")
    assert a.bucket_walk_cursor == "bucket_walk:b1/docs/"
    assert a.bucket_walk_cursor != Settings(s3_bucket="b1", key_prefix="other/").bucket_walk_cursor
    assert a.bucket_walk_cursor != Settings(s3_bucket="b2", key_prefix="docs/").bucket_walk_cursor


def test_signed_at_is_the_urls_sigv4_date() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    url, _headers = Presigner(Settings()).put_url(
        key="documents/x", content_type="text/plain", size=3, sha256_hex="0" * 64, expires_in=90
    )
    after = datetime.now(UTC)
    assert before <= signed_at(url) <= after
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["90"]
    with pytest.raises(ValueError, match="X-Amz-Date"):
        signed_at("http://127.0.0.1/bucket/key?X-Amz-Expires=90")
    # Only the parameter's own name counts, wherever it stands; its value is checked whole.
    assert signed_at("http://h/b/k?a=1&X-Amz-Date=20261130T235959Z&b=2") == datetime(
        2026, 11, 30, 23, 59, 59, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="X-Amz-Date"):
        signed_at("http://h/b/k?x-X-Amz-Date=20261130T235959Z")
    for bad in ("20261130T2359Z", "20261130T235959", "2026113OT235959Z", "20261330T000000Z"):
        with pytest.raises(ValueError):
            signed_at(f"http://h/b/k?X-Amz-Date={bad}")
