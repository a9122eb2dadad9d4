"""The upload helper's front end over the reference HTTP API (``outbox.webapp``): the same
calls as JSON requests, its error bodies turned back into the library's typed errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from outbox.constants import DocumentStatus
from outbox.errors import HttpApiError, InvalidInput, OutboxError, QuotaExceeded
from outbox.models import MultipartPlan, PartTicket, UploadedPart
from outbox.uploader.frontend import RemoteUpload, Started, Transient

#: The library's default threshold, the guess when the server's is not given.
DEFAULT_MULTIPART_THRESHOLD = 100 * 1024 * 1024
#: Answers that mean "not now": the database or a proxy briefly unavailable, throttling.
_BUSY = frozenset({429, 502, 503, 504})


def error_classes() -> dict[str, type[OutboxError]]:
    """Every ``OutboxError`` class by its ``code`` (what an error body's ``error`` holds)."""
    found: dict[str, type[OutboxError]] = {}
    todo: list[type[OutboxError]] = [OutboxError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    found.pop(HttpApiError.code, None)
    return found


def error_from(status: int, body: Any) -> OutboxError:
    """The typed error an API error response stands for; ``HttpApiError`` when its code is
    not one of the library's (or the body is not a JSON error)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return HttpApiError(f"the API answered {status}", http_status=status, body=body)
    details = {k: v for k, v in body.items() if k not in ("error", "message")}
    message = str(body.get("message") or body["error"])
    cls = error_classes().get(body["error"])
    if cls is None:
        return HttpApiError(message, http_status=status, code=body["error"], **details)
    if cls is QuotaExceeded:
        try:
            return QuotaExceeded(
                used=int(details["used"]),
                reserved=int(details["reserved"]),
                limit=int(details["limit"]),
                requested=int(details["requested"]),
            )
        except (KeyError, TypeError, ValueError):
            return HttpApiError(message, http_status=status, code=body["error"], **details)
    return cls(message, **details)


class HttpApi:
    """The reference HTTP API's calls, as one owner (``headers``: whatever the app's owner
    dependency reads: ``{"X-Owner-Id": ...}`` for the demo one, a session cookie or an
    ``Authorization`` header for a real app). Thread-safe: pooled keep-alive connections.

    The API does not publish its multipart threshold, and a request must carry the file's
    SHA-256 at or below it and none above it: give ``multipart_threshold_bytes`` (the
    server's ``S3OUTBOX_MULTIPART_THRESHOLD_BYTES``); otherwise the library's default is
    guessed, and a wrong guess is corrected from the server's answer (one more request,
    and the threshold is remembered).

    Raises (from every call): the library's typed errors rebuilt from the error body
    (``NotFound``, ``UploadNotReady`` with ``retry_after``, ``QuotaExceeded`` with its
    figures...), ``HttpApiError`` for other errors (a 401 from the owner dependency), and
    ``Transient`` when the API is unreachable or busy (429, 502, 503, 504).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        multipart_threshold_bytes: int | None = None,
        timeout: float = 60.0,
        connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.threshold = multipart_threshold_bytes or DEFAULT_MULTIPART_THRESHOLD
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
        )

    def close(self) -> None:
        self._http.clear()

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        headers = {**self.headers, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            resp = self._http.request(
                method, self.base_url + path, body=data, headers=headers, redirect=False
            )
        except (NewConnectionError, ConnectTimeoutError) as exc:
            raise Transient(f"API unreachable: {exc}") from exc
        except HTTPError as exc:
            # Sent, but no answer: the server may have acted on it.
            raise Transient(f"no answer from the API: {exc}", repeatable=False) from exc
        try:
            payload = json.loads(resp.data) if resp.data else None
        except ValueError:
            payload = resp.data[:500].decode("utf-8", "replace")
        if 200 <= resp.status < 300:
            return payload
        if resp.status in _BUSY:
            retry_after = resp.headers.get("Retry-After")
            raise Transient(
                f"the API answered {resp.status}",
                # 503 is the API's own "database unavailable" (its transaction rolled back);
                # a proxy's 502/504 may hide a request that went through.
                repeatable=resp.status in (429, 503),
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        raise error_from(resp.status, payload)

    def start(
        self, *, filename: str, content_type: str, size: int, sha256: Callable[[], str]
    ) -> Started:
        """``POST /documents/upload-url``; the whole file is hashed only for a single PUT."""
        request = {"filename": filename, "content_type": content_type, "size": size}
        single = size <= self.threshold
        try:
            data = self._request(
                "POST", "/documents/upload-url", {**request, "sha256": sha256() if single else None}
            )
        except InvalidInput as exc:
            # A wrong guess of the threshold: the server says which it is.
            learned = exc.details.get("multipart_threshold_bytes")
            if single and isinstance(learned, int):
                self.threshold = learned
                data = self._request("POST", "/documents/upload-url", request)
            elif not single and "sha256" in exc.message:
                self.threshold = max(self.threshold, size)
                data = self._request(
                    "POST", "/documents/upload-url", {**request, "sha256": sha256()}
                )
            else:
                raise
        doc = data["document"]
        plan = data.get("multipart")
        return Started(
            document_id=UUID(doc["id"]),
            status=DocumentStatus(doc["status"]),
            plan=None if plan is None else MultipartPlan.model_validate(plan),
            url=data.get("url"),
            headers=dict(data.get("headers") or {}),
            deduplicated=bool(data.get("deduplicated")),
        )

    def part_url(self, document_id: UUID, part_number: int, sha256: str) -> PartTicket:
        data = self._request(
            "POST",
            f"/documents/{document_id}/parts/{part_number}/upload-url",
            {"sha256": sha256},
        )
        return PartTicket.model_validate(data)

    def report_part(self, document_id: UUID, part_number: int, etag: str) -> None:
        self._request("PUT", f"/documents/{document_id}/parts/{part_number}", {"etag": etag})

    def status(self, document_id: UUID) -> RemoteUpload:
        data = self._request("GET", f"/documents/{document_id}/upload")
        doc = data["document"]
        plan = data.get("multipart")
        return RemoteUpload(
            document_id=UUID(doc["id"]),
            status=DocumentStatus(doc["status"]),
            filename=doc["filename"],
            content_type=doc["content_type"],
            size=int(doc["size"]),
            plan=None if plan is None else MultipartPlan.model_validate(plan),
            ready=bool(data["ready"]),
            parts=tuple(UploadedPart.model_validate(p) for p in data.get("parts") or []),
        )

    def confirm(self, document_id: UUID) -> DocumentStatus:
        data = self._request("POST", f"/documents/{document_id}/confirm")
        return DocumentStatus(data["status"])
