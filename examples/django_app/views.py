"""Views: each write opens ``transaction.atomic()`` and hands the library the psycopg 3
connection Django uses, so the library's rows, the app's own rows (written through Django's
cursor here; the ORM works the same) and the outbox event commit together -- or, if anything
in the block raises, not at all: no document row, no quota reservation, no event.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from uuid import UUID

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from outbox import Outbox, OutboxError

#: The app's own table. The CHECK stands for any rule of yours the database enforces after
#: the library call succeeded.
AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS django_example_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id    text NOT NULL,
    action      text NOT NULL,
    document_id uuid NOT NULL,
    note        text NOT NULL DEFAULT '' CHECK (char_length(note) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""


@functools.cache
def get_outbox() -> Outbox:
    """One Outbox per process, configured from the ``S3OUTBOX_*`` environment variables."""
    return Outbox()


@functools.cache
def ensure_audit_table() -> None:
    """Create the example's own table once per process (a real app uses a migration)."""
    with connection.cursor() as cur:
        cur.execute(AUDIT_DDL)


def psycopg_connection() -> psycopg.Connection[Any]:
    """The psycopg 3 connection under Django's ``default`` database. Inside
    ``transaction.atomic()`` it is in Django's transaction, and the library's calls become
    savepoints of it."""
    connection.ensure_connection()
    raw = connection.connection
    if not isinstance(raw, psycopg.Connection):
        raise ImproperlyConfigured("s3-outbox needs Django's postgresql backend on psycopg 3")
    return raw


def record_audit(owner_id: str, action: str, document_id: UUID, note: str) -> None:
    """The app's own write, through Django's cursor, in the current transaction."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO django_example_audit (owner_id, action, document_id, note)"
            " VALUES (%s, %s, %s, %s)",
            [owner_id, action, document_id, note],
        )


def _owner(request: HttpRequest) -> str:
    """Who is calling. Your authentication goes here; the example trusts a header."""
    return str(request.headers.get("X-User-Id", ""))


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refused(err: Exception) -> JsonResponse:
    """The transaction was rolled back; say why."""
    if isinstance(err, OutboxError):
        return JsonResponse(err.to_dict(), status=err.http_status)
    return JsonResponse({"error": "invalid", "message": str(err).splitlines()[0]}, status=422)


@require_POST
def request_upload(request: HttpRequest) -> HttpResponse:
    body, owner = _body(request), _owner(request)
    ensure_audit_table()
    try:
        with transaction.atomic():  # BEGIN ... COMMIT, or ROLLBACK if anything raises
            ticket = get_outbox().request_upload(
                psycopg_connection(),
                owner_id=owner,
                filename=body.get("filename", ""),
                content_type=body.get("content_type", ""),
                size=body.get("size", 0),
                sha256=body.get("sha256", ""),
            )
            record_audit(owner, "upload requested", ticket.document.id, body.get("note", ""))
    except (OutboxError, IntegrityError) as err:
        return _refused(err)
    upload = None
    if ticket.url is not None:
        upload = {"url": ticket.url, "method": ticket.method, "headers": ticket.headers}
    return JsonResponse(
        {
            "document_id": str(ticket.document.id),
            "status": ticket.document.status.value,
            "deduplicated": ticket.deduplicated,
            "upload": upload,
        },
        status=201,
    )


@require_POST
def confirm(request: HttpRequest, document_id: str) -> HttpResponse:
    body, owner = _body(request), _owner(request)
    ensure_audit_table()
    try:
        with transaction.atomic():
            doc = get_outbox().confirm(
                psycopg_connection(), owner_id=owner, document_id=document_id
            )
            record_audit(owner, "upload confirmed", doc.id, body.get("note", ""))
    except (OutboxError, IntegrityError) as err:
        return _refused(err)
    return JsonResponse({"document_id": str(doc.id), "status": doc.status.value})


@require_GET
def get_document(request: HttpRequest, document_id: str) -> HttpResponse:
    try:
        doc = get_outbox().get(
            psycopg_connection(), owner_id=_owner(request), document_id=document_id
        )
    except OutboxError as err:
        return _refused(err)
    return JsonResponse(
        {"document_id": str(doc.id), "status": doc.status.value, "filename": doc.filename}
    )
