"""Presigned URLs: local HMAC work, never a network call to storage.

URLs are signed for the *public* endpoint (what browsers reach), which may differ from the
internal endpoint the workers use.
"""

from __future__ import annotations

import base64
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from uuid import UUID

import boto3
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from outbox.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# RFC 5987 attr-char: everything else in a filename* value is percent-encoded.
_ATTR_CHARS = "!#$&+-.^_`|~"
# SigV4's X-Amz-Date: YYYYMMDD'T'HHMMSS'Z' (UTC).
_SIGV4_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")


#: Content-Encoding of every download: the bytes as verified. A stored ``gzip`` (an uploader
#: can add the header to a presigned PUT, unsigned) would make clients decode the body into
#: bytes nobody verified, or inflate a small object into a huge one.
DOWNLOAD_CONTENT_ENCODING = "identity"
#: Cache-Control of every download: a private document stays out of shared caches
#: (``private``) and out of the browser's disk cache (``no-store``). Caching buys nothing:
#: each download URL is new (its signature differs) and lives minutes.
DOWNLOAD_CACHE_CONTROL = "private, no-store"


def object_key(settings: Settings, document_id: UUID) -> str:
    """The server-made key of a document's object (invariant 8: no user input in it)."""
    return f"{settings.key_prefix}{document_id}"


def sha256_b64(sha256_hex: str) -> str:
    """The base64 form S3 uses for ``x-amz-checksum-sha256``."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and an RFC 5987 UTF-8 name (RFC 6266)."""
    ascii_name = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_"
        for ch in unicodedata.normalize("NFKD", filename)
        if not unicodedata.combining(ch)
    )
    encoded = quote(filename, safe=_ATTR_CHARS, encoding="utf-8")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def signed_at(url: str) -> datetime:
    """The instant a SigV4 presigned URL was signed (its ``X-Amz-Date``, whole seconds): storage
    refuses a request that starts after this + ``X-Amz-Expires``.

    Every upload request reads it, so the date is picked out of the query without parsing
    the whole URL (its value is digits and a ``T``/``Z``: never percent-encoded).

    Raises:
        ValueError: the URL carries no SigV4 date, or a malformed one.
    """
    for pair in url.partition("?")[2].split("&"):
        name, _, value = pair.partition("=")
        if name == "X-Amz-Date":
            if not _SIGV4_DATE.fullmatch(value):
                raise ValueError(f"not a SigV4 date: {value!r}")
            return datetime(
                int(value[0:4]), int(value[4:6]), int(value[6:8]),
                int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
            )  # fmt: skip
    raise ValueError("not a SigV4 presigned URL: no X-Amz-Date")


@dataclass(frozen=True)
class Signed:
    """A presigned URL, the headers its request must carry, and its real expiry."""

    url: str
    headers: dict[str, str]
    expires_at: datetime  # the signing instant + TTL: when storage stops taking the URL


#: Signs a URL valid for the given seconds: ``(url, headers)``.
Signer = Callable[[int], tuple[str, dict[str, str]]]


def sign_for(sign: Signer, ttl: int, now: datetime | None) -> Signed:
    """A URL valid ``ttl`` seconds, and its real expiry: the signing instant (the URL's
    X-Amz-Date, or ``now`` when the caller drives the clock) + ``ttl``."""
    url, headers = sign(ttl)
    start = now if now is not None else signed_at(url)
    return Signed(url, headers, start + timedelta(seconds=ttl))


def sign_within(
    sign: Signer, ttl: int, now: datetime | None, *, window: datetime, least: int
) -> Signed | None:
    """A URL expiring no later than ``window``: signed for what remains of it, at most
    ``ttl`` seconds; None when less than ``least`` seconds remain. The signing instant is
    only known once signed, so when a second ticked over meanwhile and the URL would
    outlive the window by it, it is signed again for one second less."""
    start = now if now is not None else datetime.now(UTC)
    wanted = min(ttl, int((window - start).total_seconds()))
    while wanted >= least:
        signed = sign_for(sign, wanted, now)
        if signed.expires_at <= window:
            return signed
        signing_instant = signed.expires_at - timedelta(seconds=wanted)
        wanted = int((window - signing_instant).total_seconds())
    return None


def make_client(settings: Settings, endpoint_url: str) -> S3Client:
    """A boto3 S3 client for one endpoint, configured from settings."""
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            # Only send checksums we ask for, so signed headers are exactly ours.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return client


class Presigner:
    """Signs PUT and GET URLs for the public storage endpoint. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: S3Client | None = None
        self._bucket_url: str | None = None
        self._host: str | None = None
        self._credentials = Credentials(
            settings.s3_access_key_id, settings.s3_secret_access_key.get_secret_value()
        )

    @property
    def client(self) -> S3Client:
        # Creating a boto3 client costs tens of milliseconds: once per Presigner.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self._settings, self._settings.public_endpoint)
        return self._client

    @property
    def bucket_url(self) -> str:
        """The bucket's URL on the public endpoint, as boto3 addresses it (path or virtual
        host style, whatever it resolved): read once from a URL it signs."""
        if self._bucket_url is None:
            probe = "k"
            url = self.client.generate_presigned_url(
                "head_object", Params={"Bucket": self._settings.s3_bucket, "Key": probe}
            )
            base = url.split("?", 1)[0]
            if not base.endswith("/" + probe):
                raise ValueError(f"unexpected object URL from boto3: {base!r}")
            self._bucket_url = base[: -len(probe) - 1]
        return self._bucket_url

    @property
    def host(self) -> str:
        """The ``host`` header botocore signs for the bucket URL, derived once: left to the
        signer it parses the URL twice per signature (a quarter of a PUT URL's cost)."""
        if self._host is None:
            probe = AWSRequest(method="PUT", url=f"{self.bucket_url}/k")
            signer = S3SigV4QueryAuth(self._credentials, "s3", self._settings.s3_region)
            headers = signer.headers_to_sign(probe)
            self._host = str(headers["host"])
        return self._host

    def put_url(
        self, *, key: str, content_type: str, size: int, sha256_hex: str, expires_in: int
    ) -> tuple[str, dict[str, str]]:
        """A PUT URL that signs Content-Type, Content-Length and x-amz-checksum-sha256,
        so storage refuses any other body; and the headers the client must send.

        Every upload request signs one, so it skips boto3's request machinery (parameter
        validation, endpoint rules, event hooks: about 60% of its cost) and signs with
        botocore's own presigning signer: the same URL ``generate_presigned_url("put_object")``
        gives for the same instant (tests/unit/test_presign.py)."""
        checksum = sha256_b64(sha256_hex)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(size),
            "x-amz-checksum-sha256": checksum,
        }
        request = AWSRequest(
            method="PUT",
            url=f"{self.bucket_url}/{quote(key, safe='/~')}",
            headers={**headers, "host": self.host},
        )
        S3SigV4QueryAuth(
            self._credentials, "s3", self._settings.s3_region, expires=expires_in
        ).add_auth(request)
        return str(request.url), headers

    def part_url(
        self,
        *,
        key: str,
        upload_id: str,
        part_number: int,
        size: int,
        sha256_hex: str,
        expires_in: int,
    ) -> tuple[str, dict[str, str]]:
        """An UploadPart URL for one part of a multipart upload that signs Content-Length and
        x-amz-checksum-sha256 (that part's), so storage refuses any other body for it; and
        the headers the client must send."""
        checksum = sha256_b64(sha256_hex)
        params: dict[str, Any] = {
            "Bucket": self._settings.s3_bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": part_number,
            "ContentLength": size,
            "ChecksumSHA256": checksum,
        }
        url = self.client.generate_presigned_url(
            "upload_part", Params=params, ExpiresIn=expires_in, HttpMethod="PUT"
        )
        return url, {"Content-Length": str(size), "x-amz-checksum-sha256": checksum}

    def get_url(self, *, key: str, filename: str, content_type: str, expires_in: int) -> str:
        """A GET URL whose response headers are the service's, whatever the stored object
        carries (``DOWNLOAD_HEADERS``: the declared type, ``attachment`` with the filename,
        no content coding, not cached), so a download serves exactly the verified bytes."""
        params: dict[str, Any] = {
            "Bucket": self._settings.s3_bucket,
            "Key": key,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(filename),
            "ResponseContentEncoding": DOWNLOAD_CONTENT_ENCODING,
            "ResponseCacheControl": DOWNLOAD_CACHE_CONTROL,
        }
        return self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_in, HttpMethod="GET"
        )
