"""A minimal Flask app on s3-outbox: the library's calls run inside the app's own transaction.

Each request gets one psycopg 3 connection (opened on first use, closed at teardown). A
handler opens its transaction with ``with conn.transaction():``; every library call inside
it is a savepoint in that transaction, and the app's own writes (here, a row in an audit
table) share it. If anything in the block raises -- a library error, the app's own INSERT
failing, a bug -- the whole transaction rolls back: no document row, no quota reservation,
no outbox event, no audit row. If the block ends normally it commits, and the relay is
woken by the commit.

With Flask-SQLAlchemy instead of a plain connection, hand the library the psycopg
connection under your session, inside the session's transaction::

    conn = db.session.connection().connection.driver_connection
    ticket = outbox.request_upload(conn, ...)
    db.session.commit()

Run it (schema applied with ``s3-outbox migrate``, settings in ``S3OUTBOX_*`` variables)::

    flask --app examples.flask_app run

    curl -X POST localhost:5000/documents -H 'X-User-Id: u1' -H 'Content-Type: application/json' \\
         -d '{"filename": "a.txt", "content_type": "text/plain", "size": 5, "sha256": "..."}'
    # PUT the file to upload.url with upload.headers, then:
    curl -X POST localhost:5000/documents/<id>/confirm -H 'X-User-Id: u1'
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue

from outbox import Outbox, OutboxError, Settings

#: The app's own table, written in the same transaction as the library's rows. The CHECK
#: stands for any rule of yours the database enforces after the library call succeeded.
AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS flask_example_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id    text NOT NULL,
    action      text NOT NULL,
    document_id uuid NOT NULL,
    note        text NOT NULL DEFAULT '' CHECK (char_length(note) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""


def record_audit(
    conn: psycopg.Connection[Any], owner_id: str, action: str, document_id: UUID, note: str
) -> None:
    """The app's own write, in the caller's transaction."""
    conn.execute(
        "INSERT INTO flask_example_audit (owner_id, action, document_id, note)"
        " VALUES (%s, %s, %s, %s)",
        (owner_id, action, document_id, note),
    )


def create_app(settings: Settings | None = None) -> Flask:
    """The app. ``settings`` default to the ``S3OUTBOX_*`` environment variables; the app
    uses the same database (``settings.database_url``) as the library."""
    app = Flask(__name__)
    outbox = Outbox(settings)  # one per process: thread-safe, no connection of its own
    dsn = outbox.settings.database_url
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT_DDL)

    def db() -> psycopg.Connection[Any]:
        """This request's connection (not autocommit: handlers open transactions)."""
        if "db" not in g:
            g.db = psycopg.connect(dsn)
        conn: psycopg.Connection[Any] = g.db
        return conn

    @app.teardown_appcontext
    def close_db(_exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()  # anything left uncommitted is rolled back

    def owner() -> str:
        """Who is calling. Your authentication goes here; the example trusts a header."""
        return request.headers.get("X-User-Id", "")

    @app.errorhandler(OutboxError)
    def outbox_error(err: OutboxError) -> ResponseReturnValue:
        return jsonify(err.to_dict()), err.http_status

    @app.errorhandler(psycopg.errors.CheckViolation)
    def app_rule_broken(err: psycopg.errors.CheckViolation) -> ResponseReturnValue:
        return jsonify({"error": "invalid", "message": str(err.diag.message_primary)}), 422

    @app.post("/documents")
    def request_upload() -> ResponseReturnValue:
        body = request.get_json(force=True)
        conn = db()
        with conn.transaction():  # BEGIN ... COMMIT, or ROLLBACK if anything raises
            ticket = outbox.request_upload(
                conn,
                owner_id=owner(),
                filename=body.get("filename", ""),
                content_type=body.get("content_type", ""),
                size=body.get("size", 0),
                sha256=body.get("sha256", ""),
            )
            record_audit(
                conn, owner(), "upload requested", ticket.document.id, body.get("note", "")
            )
        return jsonify(
            {
                "document_id": str(ticket.document.id),
                "status": ticket.document.status.value,
                "deduplicated": ticket.deduplicated,
                "upload": None
                if ticket.url is None
                else {"url": ticket.url, "method": ticket.method, "headers": ticket.headers},
            }
        ), 201

    @app.post("/documents/<document_id>/confirm")
    def confirm(document_id: str) -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        conn = db()
        with conn.transaction():
            doc = outbox.confirm(conn, owner_id=owner(), document_id=document_id)
            record_audit(conn, owner(), "upload confirmed", doc.id, body.get("note", ""))
        return jsonify({"document_id": str(doc.id), "status": doc.status.value})

    @app.get("/documents/<document_id>")
    def get_document(document_id: str) -> ResponseReturnValue:
        doc = outbox.get(db(), owner_id=owner(), document_id=document_id)
        return jsonify(
            {"document_id": str(doc.id), "status": doc.status.value, "filename": doc.filename}
        )

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=5000)
