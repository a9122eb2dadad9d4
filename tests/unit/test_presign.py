"""The upload URL ``Presigner.put_url`` signs without boto3's request machinery is the one
boto3's ``generate_presigned_url("put_object")`` gives for the same instant (no servers:
presigning is local work). Real PUTs through it are in tests/integration/test_api_*."""

from __future__ import annotations

from typing import Any

import pytest

from outbox.presign import Presigner, sha256_b64
from outbox.settings import Settings


def _boto3_put_url(p: Presigner, settings: Settings, key: str, ctype: str, size: int) -> str:
    params: dict[str, Any] = {
        "Bucket": settings.s3_bucket,
        "Key": key,
        "ContentType": ctype,
        "ContentLength": size,
        "ChecksumSHA256": sha256_b64("ab" * 32),
    }
    return p.client.generate_presigned_url(
        "put_object", Params=params, ExpiresIn=600, HttpMethod="PUT"
    )


@pytest.mark.parametrize(
    ("style", "endpoint"),
    [
        ("path", "http://127.0.0.1:9000"),
        ("virtual", "https://storage.example.com"),
        ("auto", "https://storage.example.com:8443"),
    ],
)
@pytest.mark.parametrize("key", ["documents/9d0b2c1e", "other prefix/ü ~x+y=z"])
def test_put_url_is_the_one_boto3_signs(style: str, endpoint: str, key: str) -> None:
    settings = Settings(
        s3_public_endpoint_url=endpoint,
        s3_addressing_style=style,
        s3_access_key_id="AKIDEXAMPLE",
        s3_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        s3_region="eu-west-3",
    )
    p = Presigner(settings)
    # The signing instant is the clock's second: compare only when both boto3 URLs around
    # ours carry the same one (a second ticking over between them is retried).
    for _ in range(10):
        before = _boto3_put_url(p, settings, key, "application/pdf", 1234)
        ours, headers = p.put_url(
            key=key,
            content_type="application/pdf",
            size=1234,
            sha256_hex="ab" * 32,
            expires_in=600,
        )
        after = _boto3_put_url(p, settings, key, "application/pdf", 1234)
        if before == after:
            break
    else:
        pytest.fail("the clock's second ticked over on every try")
    assert ours == before
    assert headers == {
        "Content-Type": "application/pdf",
        "Content-Length": "1234",
        "x-amz-checksum-sha256": sha256_b64("ab" * 32),
    }
