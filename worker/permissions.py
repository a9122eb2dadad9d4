"""Can the workers' storage credentials tell a missing object from a refused one? Checked
once when a process starts (each Dramatiq worker process at boot, the sweeper before its
first round), because the answer decides what every later HeadObject means.

HeadObject of a random key under the prefix must answer 404. Without s3:ListBucket, AWS
answers 403 instead (it will not tell whether a key exists to credentials that may not list
the bucket); a worker would then postpone every abandoned upload and every missing object as
"storage unavailable" for ever, and their reservations would never be released. So a 403
here stops the process with an error naming the permission to grant. Storage that cannot be
reached, or answers 5xx, is not a reason to stop: the check is skipped (logged) and an
outage is survived, as during work.
"""

from __future__ import annotations

import logging
import uuid

from botocore.exceptions import BotoCoreError, ClientError

from worker.storage import BucketMissing, Storage, unavailable

log = logging.getLogger("s3outbox.permissions")

#: Error codes that mean the credentials themselves are refused, not a permission.
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


class StorageAccessRefused(RuntimeError):
    """Storage refuses what the workers need; the message names the missing permission
    (or the wrong setting) and what to do."""


def check_access(storage: Storage) -> bool:
    """HeadObject of a random key under ``key_prefix`` (404 expected), then a one-key
    listing of the prefix (``Storage.check_bucket``, which a 404 relies on to tell a missing
    bucket from a missing key). True when both answered as they should; False when storage
    could not be reached (logged: not a reason to stop).

    Raises:
        StorageAccessRefused: a 403 (a missing s3:ListBucket or s3:GetObject, or credentials
            storage does not accept), or a bucket that does not exist.
    """
    key = f"{storage.settings.key_prefix}{uuid.uuid4()}"
    try:
        storage.head(key)  # None: a 404, as expected (an object there would be fine too)
        storage.check_bucket()
    except BucketMissing:
        raise StorageAccessRefused(
            f"bucket {storage.bucket!r} does not exist: check S3OUTBOX_S3_BUCKET"
            f" and S3OUTBOX_S3_ENDPOINT_URL ({storage.settings.s3_endpoint_url})"
        ) from None
    except (ClientError, BotoCoreError) as exc:
        reason = unavailable(exc)
        if reason == "access_denied" and isinstance(exc, ClientError):
            raise StorageAccessRefused(explain(storage, exc, key)) from None
        if reason is None:
            raise
        log.warning(
            "could not check the storage permissions (storage unavailable: %s): %s", reason, exc
        )
        return False
    return True


def explain(storage: Storage, exc: ClientError, key: str) -> str:
    """What a 403 at the start check means, naming the permission to grant. A HEAD response
    has no body (its code is only "403"), so a listing of the prefix tells the cases apart:
    it is refused too (no s3:ListBucket, or the credentials), or it works (no s3:GetObject)."""
    bucket, prefix = storage.bucket, storage.settings.key_prefix
    objects = f"arn:aws:s3:::{bucket}/{prefix}*"
    list_bucket = (
        f"s3:ListBucket on arn:aws:s3:::{bucket} (for the prefix {prefix!r}): without it S3"
        " answers 403, not 404, for a missing key, and the sweeper cannot walk the bucket"
    )
    failed = exc.operation_name
    head_worked = failed == "ListObjectsV2"  # the HEAD answered 404, the listing 403
    listing_code = _code(exc) if head_worked else _listing_error(storage)
    if listing_code == "NoSuchBucket":
        missing = "the bucket does not exist: check S3OUTBOX_S3_BUCKET"
    elif listing_code in _CREDENTIAL_CODES:
        missing = (
            f"storage refuses the credentials ({listing_code}): check"
            " S3OUTBOX_S3_ACCESS_KEY_ID, S3OUTBOX_S3_SECRET_ACCESS_KEY and S3OUTBOX_S3_REGION"
        )
    elif head_worked:
        missing = f"the workers' credentials lack {list_bucket}"
    elif listing_code is None:  # listing works: the HEAD itself is refused
        missing = f"the workers' credentials lack s3:GetObject on {objects} (HeadObject needs it)"
    else:
        missing = f"the workers' credentials lack {list_bucket}; check s3:GetObject on {objects}"
    request = f"a listing of {prefix!r}" if head_worked else f"HeadObject of {key!r}"
    return (
        f"storage answered 403 to {request} in bucket {bucket!r}: {missing}."
        ' See README "Storage permissions".'
    )


def _listing_error(storage: Storage) -> str | None:
    """The error code of a one-key listing of the prefix, or None when it works."""
    try:
        storage.client.list_objects_v2(
            Bucket=storage.bucket, Prefix=storage.settings.key_prefix, MaxKeys=1
        )
    except ClientError as exc:
        return _code(exc)
    except BotoCoreError as exc:
        return type(exc).__name__
    return None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or "403"
