"""The example apps (examples/flask_app.py, examples/django_app/) against the real database,
driven by each framework's test client: the library's calls run in the app's transaction, so
a request that succeeds leaves the document, its quota reservation and the app's own row,
and a request whose handler fails after the library call leaves none of them and no event."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import requests
from psycopg import sql

from outbox import Outbox, Settings
from tests.support.core import sha256_hex

BODY = b"example upload body\n" * 50


@dataclass
class AppClient:
    """One example app behind a uniform interface: post/get JSON as an owner."""

    name: str
    audit_table: str
    call: Callable[[str, str, str, dict[str, Any] | None], tuple[int, dict[str, Any]]]
    module: Any  # the module whose record_audit the handlers call

    def post(self, path: str, owner: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return self.call("POST", path, owner, body)

    def get(self, path: str, owner: str) -> tuple[int, Any]:
        return self.call("GET", path, owner, None)


def flask_client(settings: Settings) -> AppClient:
    pytest.importorskip("flask", reason="flask not installed (pip install -e '.[test]')")
    from examples import flask_app

    app = flask_app.create_app(settings)
    app.testing = True  # exceptions reach the test instead of becoming a 500
    client = app.test_client()

    def call(method: str, path: str, owner: str, body: dict[str, Any] | None) -> Any:
        response = client.open(path, method=method, json=body, headers={"X-User-Id": owner})
        return response.status_code, response.get_json()

    return AppClient("flask", "flask_example_audit", call, flask_app)


def django_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AppClient:
    django = pytest.importorskip("django", reason="django not installed (pip install -e '.[test]')")
    from django.conf import settings as django_settings

    if not django_settings.configured:
        from examples.django_app import settings as example

        values = {k: getattr(example, k) for k in dir(example) if k.isupper()}
        values["DATABASES"] = {"default": example.database_from_url(settings.database_url)}
        django_settings.configure(**values)
        django.setup()
    assert django_settings.DATABASES["default"]["PORT"] == str(
        psycopg.conninfo.conninfo_to_dict(settings.database_url)["port"]
    ), "Django is configured for another database"
    from django.test import Client

    from examples.django_app import views

    outbox = Outbox(settings)
    monkeypatch.setattr(views, "get_outbox", lambda: outbox)
    client = Client(raise_request_exception=True)

    def call(method: str, path: str, owner: str, body: dict[str, Any] | None) -> Any:
        headers = {"X-User-Id": owner}
        if method == "POST":
            response = client.post(
                path, json.dumps(body or {}), content_type="application/json", headers=headers
            )
        else:
            response = client.get(path, headers=headers)
        return response.status_code, json.loads(response.content)

    return AppClient("django", "django_example_audit", call, views)


@pytest.fixture(params=["flask", "django"])
def app(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppClient]:
    if request.param == "flask":
        yield flask_client(settings)
    else:
        yield django_client(settings, monkeypatch)


def state(settings: Settings, app: AppClient, owner: str) -> dict[str, Any]:
    """What the database holds for ``owner``: documents, events, reservation, audit rows."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        docs = c.execute(
            "SELECT id, status FROM s3outbox.documents WHERE owner_id = %s", (owner,)
        ).fetchall()
        events = c.execute(
            "SELECT e.topic, e.status FROM s3outbox.events e"
            " JOIN s3outbox.documents d ON d.id = e.document_id WHERE d.owner_id = %s",
            (owner,),
        ).fetchall()
        quota = c.execute(
            "SELECT reserved_bytes FROM s3outbox.quotas WHERE owner_id = %s", (owner,)
        ).fetchone()
        audit = c.execute(
            sql.SQL("SELECT action FROM {} WHERE owner_id = %s ORDER BY id").format(
                sql.Identifier(app.audit_table)
            ),
            (owner,),
        ).fetchall()
    return {
        "documents": {str(i): s for i, s in docs},
        "events": sorted(events),
        "reserved": 0 if quota is None else quota[0],
        "audit": [a for (a,) in audit],
    }


def upload_request(note: str = "") -> dict[str, Any]:
    return {
        "filename": "notes.txt",
        "content_type": "text/plain",
        "size": len(BODY),
        "sha256": sha256_hex(BODY),
        "note": note,
    }


def owner_for(app: AppClient, request: pytest.FixtureRequest) -> str:
    return f"{app.name}-{request.node.name[:40]}"


def test_request_put_confirm_commit_together(
    app: AppClient, settings: Settings, request: pytest.FixtureRequest
) -> None:
    owner = owner_for(app, request)
    status, body = app.post("/documents", owner, upload_request("first upload"))
    assert status == 201, body
    doc_id = body["document_id"]
    assert state(settings, app, owner) == {
        "documents": {doc_id: "pending"},
        "events": [],
        "reserved": len(BODY),
        "audit": ["upload requested"],
    }

    # The browser's part: a real HTTP PUT to the presigned URL.
    upload = body["upload"]
    headers = {k: v for k, v in upload["headers"].items() if k != "Content-Length"}
    assert requests.put(upload["url"], data=BODY, headers=headers, timeout=30).status_code == 200

    status, body = app.post(f"/documents/{doc_id}/confirm", owner, {"note": "done"})
    assert (status, body["status"]) == (200, "uploaded"), body
    assert state(settings, app, owner) == {
        "documents": {doc_id: "uploaded"},
        "events": [("verify", "pending")],
        "reserved": len(BODY),
        "audit": ["upload requested", "upload confirmed"],
    }
    assert app.get(f"/documents/{doc_id}", owner) == (
        200,
        {"document_id": doc_id, "status": "uploaded", "filename": "notes.txt"},
    )
    # Another owner sees nothing (the library's 404 through the app's error handling).
    status, body = app.get(f"/documents/{doc_id}", "someone-else")
    assert (status, body["error"]) == (404, "not_found")


def test_request_rolled_back_when_the_apps_own_insert_fails(
    app: AppClient, settings: Settings, request: pytest.FixtureRequest
) -> None:
    """The library call succeeded, then the app's INSERT broke a CHECK: all rolled back."""
    owner = owner_for(app, request)
    status, body = app.post("/documents", owner, upload_request("x" * 201))
    assert status == 422, body
    assert state(settings, app, owner) == {
        "documents": {},
        "events": [],
        "reserved": 0,
        "audit": [],
    }


def test_request_rolled_back_when_the_handler_raises(
    app: AppClient, settings: Settings, request: pytest.FixtureRequest, monkeypatch
) -> None:
    owner = owner_for(app, request)

    def boom(*_args: object) -> None:
        raise RuntimeError("the handler failed after the library call")

    original = app.module.record_audit
    monkeypatch.setattr(app.module, "record_audit", boom)
    with pytest.raises(RuntimeError, match="after the library call"):
        app.post("/documents", owner, upload_request())
    assert state(settings, app, owner) == {
        "documents": {},
        "events": [],
        "reserved": 0,
        "audit": [],
    }
    # The app still works afterwards (its connection was not left in a failed transaction).
    monkeypatch.setattr(app.module, "record_audit", original)
    status, body = app.post("/documents", owner, upload_request())
    assert status == 201, body
    assert state(settings, app, owner)["audit"] == ["upload requested"]


def test_confirm_rolled_back_leaves_no_event(
    app: AppClient, settings: Settings, request: pytest.FixtureRequest, monkeypatch
) -> None:
    owner = owner_for(app, request)
    status, body = app.post("/documents", owner, upload_request())
    assert status == 201, body
    doc_id = body["document_id"]

    status, refused = app.post(f"/documents/{doc_id}/confirm", owner, {"note": "y" * 500})
    assert status == 422, refused
    after_refusal = state(settings, app, owner)
    assert after_refusal["documents"] == {doc_id: "pending"}
    assert after_refusal["events"] == []
    assert after_refusal["audit"] == ["upload requested"]

    def boom(*_args: object) -> None:
        raise RuntimeError("the handler failed after confirm")

    monkeypatch.setattr(app.module, "record_audit", boom)
    with pytest.raises(RuntimeError, match="after confirm"):
        app.post(f"/documents/{doc_id}/confirm", owner, {})
    assert state(settings, app, owner) == after_refusal
