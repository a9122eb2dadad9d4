"""Input checks for the public calls. Each raises a typed error and touches nothing."""

from __future__ import annotations

import re
import unicodedata
from uuid import UUID

from outbox.errors import FileTooLarge, InvalidInput, UnsupportedContentType, ValidationFailed
from outbox.settings import Settings

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# RFC 6838 restricted names; no parameters, no whitespace, no CR/LF.
_NAME_PART = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_NAME_PART}/{_NAME_PART}")
# Bidirectional embeddings/overrides/isolates: they make "evil\u202egpj.exe" look like ".jpg".
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}
MAX_OWNER_ID_LENGTH = 200


def owner_id(value: object) -> str:
    """A non-empty string of printable characters, at most 200 long."""
    if not isinstance(value, str) or not value or len(value) > MAX_OWNER_ID_LENGTH:
        raise InvalidInput("owner_id must be a non-empty string of at most 200 characters")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise InvalidInput("owner_id must not contain control or format characters")
    return value


def document_id(value: object) -> UUID:
    """A UUID, or its canonical string form."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidInput("document id must be a UUID")


def sha256_hex(value: object) -> str:
    """64 hexadecimal digits; returned lower-case."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput("sha256 must be 64 hexadecimal digits")
    return value.lower()


def size(value: object, settings: Settings) -> int:
    """A positive integer number of bytes, at most ``max_upload_bytes``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("size must be an integer number of bytes")
    if value <= 0:
        raise InvalidInput("size must be positive")
    if value > settings.max_upload_bytes:
        raise FileTooLarge(
            f"size {value} exceeds the maximum of {settings.max_upload_bytes} bytes",
            max_bytes=settings.max_upload_bytes,
            requested=value,
        )
    return value


#: S3's limit on the parts of one multipart upload.
MAX_PARTS = 10_000
# An ETag as storage sends it (quoted hex, possibly with a -N suffix): printable ASCII.
_ETAG = re.compile(r"[\x21-\x7e]{1,256}")


def part_number(value: object) -> int:
    """A part number: an integer between 1 and 10,000 (S3's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTS:
        raise InvalidInput(f"part_number must be an integer between 1 and {MAX_PARTS}")
    return value


def etag(value: object) -> str:
    """An ETag as storage returned it: 1-256 printable ASCII characters, no spaces."""
    if not isinstance(value, str) or not _ETAG.fullmatch(value):
        raise InvalidInput("etag must be 1-256 printable ASCII characters without spaces")
    return value


def content_type(value: object, settings: Settings) -> str:
    """A bare media type (no parameters) from the allowed list; returned lower-case."""
    if not isinstance(value, str):
        raise UnsupportedContentType("content type must be a string")
    normalized = value.strip().lower()
    if not _MEDIA_TYPE.fullmatch(normalized) or normalized != value.lower():
        raise UnsupportedContentType("content type must be a bare media type such as image/png")
    if normalized not in settings.allowed_content_types:
        raise UnsupportedContentType(
            f"content type {normalized!r} is not allowed",
            allowed=list(settings.allowed_content_types),
        )
    return normalized


def filename(value: object, settings: Settings) -> str:
    """A display name: NFC-normalised, no path separators, control or bidi characters."""
    if not isinstance(value, str):
        raise InvalidInput("filename must be a string")
    name = unicodedata.normalize("NFC", value)
    if not name.strip():
        raise ValidationFailed("filename must not be empty")
    if len(name) > settings.max_filename_length:
        raise ValidationFailed(
            f"filename longer than {settings.max_filename_length} characters",
            max_length=settings.max_filename_length,
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ValidationFailed("filename must not contain control characters or lone surrogates")
    if any(ch in _BIDI for ch in name):
        raise ValidationFailed("filename must not contain bidirectional override characters")
    # Invisible format characters (zero-width space, BOM...) let a name impersonate another;
    # the zero-width joiner stays allowed for emoji sequences.
    if any(unicodedata.category(ch) == "Cf" and ch != "\u200d" for ch in name):
        raise ValidationFailed("filename must not contain invisible format characters")
    if "/" in name or "\\" in name:
        raise ValidationFailed("filename must not contain path separators")
    if name.strip(". ") == "":
        raise ValidationFailed("filename must not consist only of dots")
    if name != name.strip():
        raise ValidationFailed("filename must not start or end with whitespace")
    return name


def page_limit(value: object) -> int:
    """A page size between 1 and 500."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 500:
        raise InvalidInput("limit must be an integer between 1 and 500")
    return value


def limit_bytes(value: object) -> int:
    """A quota limit: a non-negative integer that fits PostgreSQL's bigint."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1:
        raise InvalidInput("limit_bytes must be a non-negative 64-bit integer")
    return value


def ttl(value: object, maximum: int) -> int:
    """An expiry in seconds, between 1 and the configured maximum."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"expires_in must be an integer between 1 and {maximum} seconds")
    return value


_TRACE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def trace_id(value: object) -> str | None:
    """An optional trace id from the caller (e.g. a request-id header): 1-128 characters of
    ``A-Z a-z 0-9 . _ : / + = -``."""
    if value is None:
        return None
    if not isinstance(value, str) or not _TRACE_ID.fullmatch(value):
        raise InvalidInput("trace_id must be 1-128 characters of A-Z a-z 0-9 . _ : / + = -")
    return value
