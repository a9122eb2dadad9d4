"""The metadata part of verification (``worker.storage.foreign_metadata`` and
``worker.verification.mismatch``) on HeadObject responses as boto3 returns them. The
integration tests put real headers through SeaweedFS; this covers what SeaweedFS does not
keep (a website redirect) and the neutral values."""

from __future__ import annotations

import hashlib

from outbox.presign import sha256_b64
from worker.storage import ObjectInfo, foreign_metadata
from worker.verification import Declared, mismatch

BODY = b"verified bytes"
DECLARED = Declared(len(BODY), hashlib.sha256(BODY).hexdigest(), "application/pdf")


def info(head: dict[str, object]) -> ObjectInfo:
    return ObjectInfo(
        size=len(BODY),
        content_type="application/pdf",
        sha256_b64=sha256_b64(DECLARED.sha256_hex),
        foreign_metadata=foreign_metadata(head),
    )


def test_a_plain_head_response_has_none() -> None:
    head = {"ContentLength": len(BODY), "ContentType": "application/pdf", "Metadata": {}}
    assert foreign_metadata(head) == ()
    assert foreign_metadata({**head, "ContentEncoding": "identity"}) == ()
    assert foreign_metadata({**head, "ContentEncoding": " Identity "}) == ()
    assert foreign_metadata({**head, "CacheControl": ""}) == ()
    assert mismatch(DECLARED, info(head), None) is None


def test_every_response_affecting_field_is_named() -> None:
    head = {
        "ContentEncoding": "gzip",
        "CacheControl": "public, max-age=31536000",
        "ContentDisposition": "inline",
        "ContentLanguage": "fr",
        "ExpiresString": "Wed, 21 Oct 2099 07:28:00 GMT",
        "WebsiteRedirectLocation": "https://attacker.example/",
        "Metadata": {"b": "2", "a": "1"},
    }
    assert foreign_metadata(head) == (
        ("Content-Encoding", "gzip"),
        ("Cache-Control", "public, max-age=31536000"),
        ("Content-Disposition", "inline"),
        ("Content-Language", "fr"),
        ("Expires", "Wed, 21 Oct 2099 07:28:00 GMT"),
        ("x-amz-website-redirect-location", "https://attacker.example/"),
        ("x-amz-meta-a", "1"),
        ("x-amz-meta-b", "2"),
    )


def test_mismatch_names_the_metadata_once_bytes_and_type_match() -> None:
    reason = mismatch(DECLARED, info({"WebsiteRedirectLocation": "/elsewhere"}), None)
    assert reason == (
        "stored metadata the service did not set (it would change downloads):"
        " x-amz-website-redirect-location: /elsewhere"
    )
    # A long value is cut in the reason (it is shown to operators, not stored in full).
    long = mismatch(DECLARED, info({"CacheControl": "x" * 500}), None)
    assert long is not None and long.endswith("Cache-Control: " + "x" * 80)
    # Size, hash and type come first: the metadata is named only for the right bytes.
    wrong_size = ObjectInfo(len(BODY) + 1, "application/pdf", None, (("Expires", "0"),))
    assert (mismatch(DECLARED, wrong_size, None) or "").startswith("size mismatch")
