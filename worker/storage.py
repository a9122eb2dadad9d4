"""The workers' side of storage: HeadObject, a streamed SHA-256, DeleteObject, and the
multipart calls (create, list parts, complete, abort, list uploads in progress).

Workers use the *internal* endpoint; only the web app's presigned URLs use the public one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from outbox.presign import make_client
from outbox.settings import Settings
from worker import lean_head as lean_head_module

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class BucketMissing(RuntimeError):
    """The bucket itself does not exist: a configuration error, never "object missing"."""


@dataclass(frozen=True)
class ObjectInfo:
    """What HeadObject says about an object."""

    size: int
    content_type: str | None
    sha256_b64: str | None
    #: Stored metadata that changes what a download serves and that s3-outbox never sets
    #: (an uploader can add unsigned headers to a presigned PUT): (header, value) pairs.
    foreign_metadata: tuple[tuple[str, str], ...] = ()
    #: The composite SHA-256 of an object completed from parts ("<base64>-<parts>": the
    #: hash of the parts' digests), when storage keeps one.
    composite_sha256: str | None = None


@dataclass(frozen=True)
class PartInfo:
    """One part of a multipart upload, as ListParts shows it."""

    number: int
    size: int
    etag: str
    #: Its SHA-256 (base64), when storage lists it (AWS S3 does; SeaweedFS 4.48 does not,
    #: but it checks the digests sent with CompleteMultipartUpload).
    sha256_b64: str | None


class Completion(StrEnum):
    """How CompleteMultipartUpload answered."""

    COMPLETED = "completed"
    GONE = "gone"  # NoSuchUpload: completed earlier, or aborted
    EXISTS = "exists"  # If-None-Match refused it: an object is already at the key
    REFUSED = "refused"  # a part is missing, too small, or its digest differs


@dataclass(frozen=True)
class CompleteResult:
    outcome: Completion
    detail: str | None = None  # why storage refused (its error code and message)


@dataclass(frozen=True)
class UploadInProgress:
    """A multipart upload that was neither completed nor aborted (ListMultipartUploads)."""

    key: str
    upload_id: str
    initiated: datetime


#: ListMultipartUploads markers, as the store returns them: AWS S3 pages by key and upload
#: id; SeaweedFS 4.48 sorts by upload id and returns only NextUploadIdMarker. Passing back
#: whichever markers came is right for both.
UploadMarkers = dict[str, str]

#: Errors of CompleteMultipartUpload that are about the parts sent (the event's business:
#: snoozed until the verify deadline, then rejected), not storage being unavailable.
_PART_PROBLEMS = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "BadDigest"}


#: HeadObject fields that a stored object carries into every GET response.
_RESPONSE_METADATA = (
    ("ContentEncoding", "Content-Encoding"),
    ("CacheControl", "Cache-Control"),
    ("ContentDisposition", "Content-Disposition"),
    ("ContentLanguage", "Content-Language"),
    ("ExpiresString", "Expires"),
    ("WebsiteRedirectLocation", "x-amz-website-redirect-location"),
)
#: Values that mean "nothing set" for those fields.
_NEUTRAL = {"", "identity"}


def foreign_metadata(head: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The response-affecting metadata of a HeadObject response that s3-outbox did not set:
    Content-Encoding (other than identity), Cache-Control, Content-Disposition,
    Content-Language, Expires, a website redirect, and any user metadata (x-amz-meta-*)."""
    found = []
    for field, header in _RESPONSE_METADATA:
        value = head.get(field)
        if value is not None and str(value).strip().lower() not in _NEUTRAL:
            found.append((header, str(value)))
    for name, value in sorted((head.get("Metadata") or {}).items()):
        found.append((f"x-amz-meta-{name}", str(value)))
    return tuple(found)


#: Error codes that mean storage cannot serve us now, whatever the object: an outage,
#: throttling, or credentials/permissions the operator must fix. Never the event's fault.
_UNAVAILABLE_CODES = {
    "SlowDown": "throttled",
    "ServiceUnavailable": "server_error",
    "InternalError": "server_error",
    "RequestTimeout": "connection",
    "AccessDenied": "access_denied",
    "403": "access_denied",
    "Forbidden": "access_denied",
    "InvalidAccessKeyId": "access_denied",
    "SignatureDoesNotMatch": "access_denied",
    "ExpiredToken": "access_denied",
    "NoSuchBucket": "bucket_missing",
}


def unavailable(exc: BaseException) -> str | None:
    """Why storage could not serve a request (a reason label), or None when the error is
    about this request itself. Unavailability is retried without limit and never makes an
    event dead: an outage of any length, or credentials fixed an hour later, lose nothing."""
    if isinstance(exc, BucketMissing):
        return "bucket_missing"
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return "connection"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _UNAVAILABLE_CODES:
            return _UNAVAILABLE_CODES[code]
        if status == 403:
            return "access_denied"
        if status >= 500:
            return "server_error"
    return None


class Storage:
    """Thin wrapper over one boto3 client for the bucket. Thread-safe.

    HeadObject, the call of every verify, goes through ``worker.lean_head`` (a fifth of
    boto3's CPU per call, same answers), unless ``lean_head`` (default: the setting
    ``s3_lean_head``) is False, boto3 would use an HTTP proxy from the environment, or a
    client was given (a test's own)."""

    def __init__(
        self,
        settings: Settings,
        client: S3Client | None = None,
        *,
        lean_head: bool | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        given = client is not None
        self.client: S3Client = client or make_client(settings, settings.s3_endpoint_url)
        # Send If-None-Match: * with CompleteMultipartUpload until the store says it cannot.
        self._if_none_match = True
        self._lean: lean_head_module.LeanHead | None = None
        if lean_head is None:
            lean_head = settings.s3_lean_head
        if lean_head and not given and lean_head_module.usable(settings):
            self._lean = lean_head_for(settings, self.client)

    @property
    def lean(self) -> bool:
        """Whether HeadObject goes through the lean client."""
        return self._lean is not None

    def head_object(self, key: str) -> Mapping[str, Any]:
        """HeadObject with ChecksumMode: boto3's response dict (or the lean client's, same
        fields). Raises boto3's exceptions."""
        if self._lean is not None:
            return self._lean.head_object(key)
        resp: Mapping[str, Any] = self.client.head_object(
            Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
        )
        return resp

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, content type and stored SHA-256, or None when it is missing."""
        try:
            resp = self.head_object(key)
        except ClientError as exc:
            if _is_missing(exc):
                # A HEAD 404 has no body, so a missing bucket looks like a missing object;
                # telling them apart keeps a misconfigured worker from rejecting good uploads.
                self.check_bucket()
                return None
            raise
        checksum: str | None = resp.get("ChecksumSHA256")
        composite = None
        # A multipart object's checksum is a checksum of part checksums ("...-N"): not the
        # SHA-256 of its body.
        if checksum is not None and "-" in checksum:
            checksum, composite = None, checksum
        return ObjectInfo(
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType"),
            sha256_b64=checksum,
            foreign_metadata=foreign_metadata(resp),
            composite_sha256=composite,
        )

    def sha256_hex(self, key: str, max_bytes: int) -> str | None:
        """SHA-256 of the object's body, read as a stream (used when storage kept no checksum).
        None when the object is missing or longer than ``max_bytes``."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        digest = hashlib.sha256()
        read = 0
        body = resp["Body"]
        try:
            for chunk in body.iter_chunks(chunk_size=1024 * 1024):
                read += len(chunk)
                if read > max_bytes:
                    return None
                digest.update(chunk)
        finally:
            body.close()
        return digest.hexdigest()

    def check_bucket(self) -> None:
        """Raise ``BucketMissing`` when the bucket does not exist.

        A one-key listing of the key prefix, not HeadBucket: both need s3:ListBucket, but
        HeadBucket carries no prefix, so credentials whose s3:ListBucket is limited to the
        prefix (README "Storage permissions") would be refused it.
        """
        try:
            self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.settings.key_prefix, MaxKeys=1
            )
        except ClientError as exc:
            if _is_missing(exc):
                raise BucketMissing(f"bucket {self.bucket!r} does not exist") from None
            raise

    def list_page(
        self, prefix: str, start_after: str, max_keys: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """One ListObjectsV2 page: up to ``max_keys`` objects under ``prefix`` whose keys sort
        after ``start_after`` ('' for the first), as dicts with Key, Size and LastModified,
        and whether more follow. Needs ``s3:ListBucket``."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after:
            params["StartAfter"] = start_after
        resp = self.client.list_objects_v2(**params)
        contents = [dict(obj) for obj in resp.get("Contents", [])]
        return contents, bool(resp.get("IsTruncated")) and bool(contents)

    def delete(self, key: str) -> None:
        """DeleteObject. Deleting a missing key succeeds, so purge is idempotent."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- multipart uploads ---------------------------------------------------------------

    def create_multipart(self, key: str, content_type: str) -> str:
        """CreateMultipartUpload with SHA-256 part checksums and the declared content type
        (the completed object's); returns the upload id."""
        resp = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
        )
        return str(resp["UploadId"])

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo] | None:
        """Every part of an upload (all ListParts pages), by number; None when the upload
        does not exist (completed, or aborted)."""
        parts: list[PartInfo] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            try:
                resp = self.client.list_parts(**params)
            except ClientError as exc:
                if _code(exc) in _NO_UPLOAD_CODES:
                    return None
                raise
            parts.extend(
                PartInfo(
                    number=int(p["PartNumber"]),
                    size=int(p["Size"]),
                    etag=str(p["ETag"]),
                    sha256_b64=p.get("ChecksumSHA256"),
                )
                for p in resp.get("Parts", [])
            )
            marker = resp.get("NextPartNumberMarker")
            if (
                not resp.get("IsTruncated")
                or not marker
                or str(marker) == str(params.get("PartNumberMarker"))
            ):
                return sorted(parts, key=lambda p: p.number)
            params["PartNumberMarker"] = marker

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str, str]]
    ) -> CompleteResult:
        """CompleteMultipartUpload with ``(number, etag, sha256_b64)`` per part and, where
        the store supports it, ``If-None-Match: *`` (nothing overwrites the key; a store that
        answers NotImplemented is asked again without it, and not again after that)."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {
                "Parts": [
                    {"PartNumber": n, "ETag": etag, "ChecksumSHA256": digest}
                    for n, etag, digest in parts
                ]
            },
        }
        while True:
            try:
                if self._if_none_match:
                    self.client.complete_multipart_upload(**params, IfNoneMatch="*")
                else:
                    self.client.complete_multipart_upload(**params)
                return CompleteResult(Completion.COMPLETED)
            except ClientError as exc:
                code = _code(exc)
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if self._if_none_match and (code == "NotImplemented" or status == 501):
                    self._if_none_match = False
                    continue
                if code in _NO_UPLOAD_CODES:
                    return CompleteResult(Completion.GONE)
                if code in ("PreconditionFailed", "412") or status == 412:
                    return CompleteResult(Completion.EXISTS)
                if code in _PART_PROBLEMS:
                    message = exc.response.get("Error", {}).get("Message", "")
                    return CompleteResult(Completion.REFUSED, f"{code}: {message}")
                raise

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload. An upload already gone (aborted or completed) is fine, so
        aborting is idempotent; a completed object is left alone."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in _NO_UPLOAD_CODES:
                raise

    def abort_uploads_of(self, key: str) -> int:
        """Abort every multipart upload in progress for exactly ``key``, recorded or not: a
        CreateMultipartUpload whose answer was lost (the connection dropped after storage
        acted) made an upload that no row names, and a retry made another. Returns how many
        were aborted. Needs ``s3:ListBucketMultipartUploads``."""
        aborted = 0
        markers: UploadMarkers | None = {}
        while markers is not None:
            page, markers = self.list_uploads_page(key, markers, 1000)
            for upload in page:
                if upload.key == key:  # the prefix also matches longer keys
                    self.abort_multipart(key, upload.upload_id)
                    aborted += 1
        return aborted

    def list_uploads_page(
        self, prefix: str, markers: UploadMarkers, max_uploads: int
    ) -> tuple[list[UploadInProgress], UploadMarkers | None]:
        """One ListMultipartUploads page under ``prefix`` from ``markers`` ({} for the
        first): the uploads in progress, and the markers of the next page (None at the end,
        or when the store gave no marker that moves on). Needs ``s3:ListBucketMultipartUploads``."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxUploads": max_uploads,
            **markers,
        }
        resp = self.client.list_multipart_uploads(**params)
        uploads = [
            UploadInProgress(str(u["Key"]), str(u["UploadId"]), u["Initiated"])
            for u in resp.get("Uploads", [])
        ]
        following: UploadMarkers = {}
        if resp.get("NextKeyMarker"):
            following["KeyMarker"] = str(resp["NextKeyMarker"])
        if resp.get("NextUploadIdMarker"):
            following["UploadIdMarker"] = str(resp["NextUploadIdMarker"])
        if not resp.get("IsTruncated") or not following or following == markers:
            return uploads, None
        return uploads, following


_NO_UPLOAD_CODES = {"NoSuchUpload", "404", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def lean_head_for(settings: Settings, client: S3Client) -> lean_head_module.LeanHead:
    """A lean HEAD client that addresses the bucket as ``client`` does: the bucket's URL is
    read from a URL boto3 signs (path or virtual-host style, whatever it resolved)."""
    probe = "k"
    url = client.generate_presigned_url(
        "head_object", Params={"Bucket": settings.s3_bucket, "Key": probe}, ExpiresIn=60
    )
    base = url.split("?", 1)[0]
    if not base.endswith("/" + probe):
        raise ValueError(f"unexpected object URL from boto3: {base!r}")
    return lean_head_module.LeanHead(settings, base[: -len(probe) - 1])


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code")) in _MISSING_CODES or status == 404


def ensure_bucket(settings: Settings) -> None:
    """Create the bucket when it does not exist (development servers: ``s3-outbox run``)."""
    client = make_client(settings, settings.s3_endpoint_url)
    try:
        client.head_bucket(Bucket=settings.s3_bucket)
    except ClientError:
        client.create_bucket(Bucket=settings.s3_bucket)
