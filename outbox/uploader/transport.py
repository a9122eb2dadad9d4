"""PUTs to presigned storage URLs over pooled HTTP connections (urllib3), with the body
streamed from the file, and what a failed PUT means for a retry."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import cast

import urllib3
from urllib3.exceptions import HTTPError

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
#: Storage answers worth trying again as they are (busy, throttling, a proxy in between).
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: The body was not the one signed (the file moved between hashing and sending): hash the
#: part again and ask for a URL with the new digest.
DIGEST_ERRORS = frozenset({"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"})


class PutFailure(Exception):
    """A PUT that did not succeed. ``status`` is None when no response came (connection
    refused, reset, timed out). ``retryable``: trying again may work; ``fresh_url``: with a
    new URL (the old one expired, or the part's digest changed); ``rehash``: after hashing
    the part again."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = True,
        fresh_url: bool = False,
        rehash: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.fresh_url = fresh_url
        self.rehash = rehash


class StorageClient:
    """Pooled HTTP connections to storage for presigned PUTs (``connections`` per host:
    one per upload thread). Thread-safe."""

    def __init__(self, *, connections: int, timeout: float) -> None:
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=connections,
            retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
        )

    def put(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Iterable[bytes | memoryview],
        size: int,
    ) -> str:
        """PUT ``size`` bytes from ``body`` to ``url`` with ``headers`` (the signed ones);
        the ETag storage answered.

        Raises:
            PutFailure: no response, or an error status (retryable or not, see its fields).
        """
        sent = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        sent["Content-Length"] = str(size)
        try:
            resp = self._http.request(
                "PUT",
                url,
                # urllib3 hands each chunk to socket.sendall, which takes any buffer: views
                # of the reader's buffer go out without a copy.
                body=cast(Iterable[bytes], body),
                headers=sent,
                redirect=False,
                preload_content=True,
            )
        except HTTPError as exc:
            raise PutFailure(f"no response from storage: {exc}") from exc
        if 200 <= resp.status < 300:
            etag = resp.headers.get("ETag")
            if not etag:
                raise PutFailure(
                    f"storage answered {resp.status} without an ETag", status=resp.status
                )
            return str(etag)
        raise failure(resp.status, resp.data)

    def close(self) -> None:
        self._http.clear()


def failure(status: int, body: bytes) -> PutFailure:
    """What an error answer of storage means for the next attempt."""
    found = _CODE.search(body or b"")
    code = found.group(1).decode("ascii", "replace") if found else None
    message = f"storage answered {status}" + (f" {code}" if code else "")
    if status in _RETRY_STATUSES:
        return PutFailure(message, status=status, code=code)
    if code in DIGEST_ERRORS:
        return PutFailure(message, status=status, code=code, fresh_url=True, rehash=True)
    if status == 403:
        # An expired URL (a long wait between asking for it and sending), or a clock
        # between client and storage that moved: a freshly signed one may pass.
        return PutFailure(message, status=status, code=code, fresh_url=True)
    # 404 NoSuchUpload (the upload was aborted: the document expired or was deleted),
    # 400 for a body of another length, ...: the same request would fail again.
    return PutFailure(message, status=status, code=code, retryable=False)
