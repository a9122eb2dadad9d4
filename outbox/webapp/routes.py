"""The API routes, as an ``APIRouter`` that any FastAPI app can include.

Not ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at
definition time, and they name dependencies made inside ``create_router``.
"""

import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from http import HTTPStatus
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout

from outbox.errors import OutboxError
from outbox.logs import log_context
from outbox.webapp.backend import Backend
from outbox.webapp.schemas import (
    DocumentOut,
    DocumentPageOut,
    DownloadOut,
    ErrorBody,
    PartOut,
    PartReport,
    PartUrlOut,
    PartUrlRequest,
    QuotaOut,
    UploadLimitsOut,
    UploadRequest,
    UploadStatusOut,
    UploadUrlOut,
)

log = logging.getLogger("s3outbox.webapp")

REQUEST_ID_HEADER = "X-Request-Id"
OWNER_HEADER = "X-Owner-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

OwnerDependency = Callable[..., Any]
"""A FastAPI dependency that returns the owner id (str) of the request, or raises 401/403."""


def header_owner(
    x_owner_id: Annotated[
        str | None,
        Header(
            alias=OWNER_HEADER,
            description="Demo only: the caller says who it is. Replace with real auth.",
        ),
    ] = None,
) -> str:
    """The default *demo* owner dependency: the ``X-Owner-Id`` header, 401 when missing.

    It authenticates nobody. A real app passes its own dependency (session, JWT, ...) as
    ``owner_dependency``.
    """
    if x_owner_id is None or not x_owner_id.strip():
        raise HTTPException(status_code=401, detail=f"missing {OWNER_HEADER} header")
    return x_owner_id


def request_trace_id(request: Request) -> str:
    """The request's trace id: a well-formed ``X-Request-Id`` header, or a new one."""
    existing = getattr(request.state, "s3outbox_trace_id", None)
    if isinstance(existing, str):
        return existing
    given = request.headers.get(REQUEST_ID_HEADER, "")
    trace = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request.state.s3outbox_trace_id = trace
    return trace


def error_response(status: int, body: dict[str, Any], trace_id: str) -> JSONResponse:
    """A JSON error response carrying the trace id."""
    return JSONResponse(
        status_code=status,
        content=jsonable_encoder(body),
        headers={REQUEST_ID_HEADER: trace_id, "Cache-Control": "no-store"},
    )


def _http_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


class OutboxRoute(APIRoute):
    """Every route of the router: a trace id in and out (``X-Request-Id``), and errors as JSON
    bodies, whatever app the router is mounted in:

    - ``OutboxError`` -> its ``http_status`` with ``error.to_dict()``;
    - request validation -> 422 ``{"error": "request_validation_failed", "errors": [...]}``;
    - ``HTTPException`` (e.g. the owner dependency's 401) -> its status, ``{"error", "message"}``;
    - PostgreSQL unreachable or the pool exhausted -> 503; anything else -> 500 (logged).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            trace = request_trace_id(request)
            started = time.perf_counter()
            with log_context(trace_id=trace):
                response = await self._handle(handler, request, trace)
                log.info(
                    "%s %s -> %s",
                    request.method,
                    request.url.path,
                    response.status_code,
                    extra={"duration_ms": round((time.perf_counter() - started) * 1000, 1)},
                )
            response.headers[REQUEST_ID_HEADER] = trace
            return response

        return route

    @staticmethod
    async def _handle(
        handler: Callable[[Request], Coroutine[Any, Any, Response]], request: Request, trace: str
    ) -> Response:
        try:
            return await handler(request)
        except OutboxError as exc:
            response = error_response(exc.http_status, exc.to_dict(), trace)
            retry_after = exc.details.get("retry_after")
            if isinstance(retry_after, int):  # UploadNotReady, UploadWindowClosed
                response.headers["Retry-After"] = str(retry_after)
            return response
        except RequestValidationError as exc:
            body = {
                "error": "request_validation_failed",
                "message": "the request body or parameters are invalid",
                "errors": exc.errors(),
            }
            return error_response(422, body, trace)
        except HTTPException as exc:
            body = {"error": _http_code(exc.status_code), "message": str(exc.detail)}
            response = error_response(exc.status_code, body, trace)
            response.headers.update(exc.headers or {})
            return response
        except (PoolTimeout, psycopg.OperationalError):
            log.exception("database unavailable")
            body = {"error": "unavailable", "message": "the database is unavailable; retry"}
            response = error_response(503, body, trace)
            response.headers["Retry-After"] = "1"
            return response
        except Exception:
            log.exception("unhandled error")
            body = {"error": "internal_error", "message": "internal server error"}
            return error_response(500, body, trace)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in (*statuses, 401, 422, 503)}


def create_router(
    backend: Backend | None = None,
    *,
    owner_dependency: OwnerDependency | None = None,
) -> APIRouter:
    """The API as a router: ``app.include_router(create_router(backend, owner_dependency=...))``.

    Each request runs in one transaction on a pooled connection and commits before its response
    is sent (rolls back on error). The router's lifespan opens the backend's pool and closes it
    (FastAPI merges router lifespans into the app's); ``backend`` defaults to one built from
    the ``S3OUTBOX_*`` environment. ``owner_dependency`` returns the caller's owner id; the
    default is the demo ``header_owner``.
    """
    be = backend or Backend()
    outbox = be.outbox

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        be.open()
        try:
            yield
        finally:
            be.close()

    router = APIRouter(route_class=OutboxRoute, lifespan=lifespan, tags=["documents"])
    Owner = Annotated[str, Depends(owner_dependency or header_owner)]
    Trace = Annotated[str, Depends(request_trace_id)]

    @router.get(
        "/upload-limits",
        response_model=UploadLimitsOut,
        responses=_errors(),
        dependencies=[Depends(owner_dependency or header_owner)],  # authenticated as the rest
    )
    def upload_limits() -> UploadLimitsOut:
        """The size limit and the multipart threshold: whether to hash a file before asking
        for its upload (one PUT) or to ask without a hash (parts). Reads no database."""
        return UploadLimitsOut.of(be.settings)

    @router.post(
        "/documents/upload-url",
        response_model=UploadUrlOut,
        responses=_errors(400, 409, 413, 415),
    )
    def request_upload(body: UploadRequest, owner: Owner, trace: Trace) -> UploadUrlOut:
        """Reserve quota and get a presigned PUT for the declared file; above the multipart
        threshold, a parts plan instead (then one URL per part)."""
        with be.transaction() as conn:
            ticket = outbox.request_upload(
                conn,
                owner_id=owner,
                filename=body.filename,
                content_type=body.content_type,
                size=body.size,
                sha256=body.sha256,
                trace_id=trace,
            )
        return UploadUrlOut.of(ticket)

    @router.post(
        "/documents/{document_id}/parts/{part_number}/upload-url",
        response_model=PartUrlOut,
        responses=_errors(400, 404, 409),
    )
    def part_url(
        document_id: str, part_number: int, body: PartUrlRequest, owner: Owner
    ) -> PartUrlOut:
        """A presigned PUT for one part of a multipart upload, signed for that part's size and
        SHA-256. 409 ``upload_not_ready`` (with Retry-After) until a worker has created the
        upload, moments after the upload-url request."""
        with be.transaction() as conn:
            ticket = outbox.part_url(
                conn,
                owner_id=owner,
                document_id=document_id,
                part_number=part_number,
                sha256=body.sha256,
                expires_in=body.expires_in,
            )
        return PartUrlOut.of(ticket)

    @router.put(
        "/documents/{document_id}/parts/{part_number}",
        response_model=PartOut,
        responses=_errors(400, 404, 409),
    )
    def report_part(document_id: str, part_number: int, body: PartReport, owner: Owner) -> PartOut:
        """Report a part whose PUT succeeded (its ETag), so a reload can resume."""
        with be.transaction() as conn:
            part = outbox.report_part(
                conn,
                owner_id=owner,
                document_id=document_id,
                part_number=part_number,
                etag=body.etag,
            )
        return PartOut.of(part)

    @router.get(
        "/documents/{document_id}/upload",
        response_model=UploadStatusOut,
        responses=_errors(400, 404),
    )
    def upload_status(document_id: str, owner: Owner) -> UploadStatusOut:
        """Where an upload stands: its plan, whether part URLs can be asked for yet, and the
        parts reported (to resume after a reload)."""
        with be.transaction() as conn:
            status = outbox.upload_status(conn, owner_id=owner, document_id=document_id)
        return UploadStatusOut.of(status)

    @router.post(
        "/documents/{document_id}/confirm",
        response_model=DocumentOut,
        responses=_errors(400, 404, 409),
    )
    def confirm(document_id: str, owner: Owner, trace: Trace) -> DocumentOut:
        """The upload finished: a worker verifies the object and makes it available."""
        with be.transaction() as conn:
            doc = outbox.confirm(conn, owner_id=owner, document_id=document_id, trace_id=trace)
        return DocumentOut.of(doc)

    @router.get("/documents/{document_id}", response_model=DocumentOut, responses=_errors(400, 404))
    def get_document(document_id: str, owner: Owner) -> DocumentOut:
        """One document of the caller."""
        with be.transaction() as conn:
            doc = outbox.get(conn, owner_id=owner, document_id=document_id)
        return DocumentOut.of(doc)

    @router.get("/documents", response_model=DocumentPageOut, responses=_errors(400))
    def list_documents(
        owner: Owner,
        limit: Annotated[int, Query(description="page size, 1..500")] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the last page")] = None,
        status: Annotated[str | None, Query(description="only documents in this state")] = None,
    ) -> DocumentPageOut:
        """The caller's documents, newest first, one page at a time."""
        with be.transaction() as conn:
            page = outbox.list(conn, owner_id=owner, limit=limit, cursor=cursor, status=status)
        return DocumentPageOut.of(page)

    @router.delete(
        "/documents/{document_id}", response_model=DocumentOut, responses=_errors(400, 404)
    )
    def delete_document(document_id: str, owner: Owner, trace: Trace) -> DocumentOut:
        """Delete a document; its blob is removed by a worker after this commits."""
        with be.transaction() as conn:
            doc = outbox.delete(conn, owner_id=owner, document_id=document_id, trace_id=trace)
        return DocumentOut.of(doc)

    @router.get(
        "/documents/{document_id}/download",
        status_code=302,
        response_class=RedirectResponse,
        responses={
            302: {"description": "Redirect to a short-lived presigned GET of the object."},
            200: {
                "model": DownloadOut,
                "description": "With `Accept: application/json`: the presigned URL as JSON.",
            },
            **_errors(400, 404, 409),
        },
    )
    def download(document_id: str, owner: Owner, request: Request) -> Response:
        """Redirect to a presigned GET of an available document. A page that sends the owner
        in a header (a link cannot) asks with ``Accept: application/json`` for the URL."""
        with be.transaction() as conn:
            ticket = outbox.download_url(conn, owner_id=owner, document_id=document_id)
        headers = {"Cache-Control": "no-store", "Vary": "Accept"}
        if "application/json" in request.headers.get("accept", ""):
            body = jsonable_encoder(DownloadOut.of(ticket))
            return JSONResponse(body, headers=headers)
        return RedirectResponse(ticket.url, status_code=302, headers=headers)

    @router.get("/quota", response_model=QuotaOut, tags=["quota"], responses=_errors(400))
    def quota(owner: Owner) -> QuotaOut:
        """The caller's quota: limit, used, reserved and free bytes."""
        with be.transaction() as conn:
            q = outbox.quota(conn, owner_id=owner)
        return QuotaOut.of(q)

    return router
