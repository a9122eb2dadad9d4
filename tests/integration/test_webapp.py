"""The reference HTTP API (outbox.webapp) over the real PostgreSQL and storage: the whole upload
flow through HTTP, presigned PUT and GET over real HTTP, and every error mapped to JSON."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import requests

pytest.importorskip("fastapi", reason="the api extra is not installed")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx")

from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from harness.invariants import check_invariants
from outbox import Outbox, Settings
from outbox.webapp import Backend, create_app, create_router
from outbox.webapp.app import STATIC_DIR
from tests.support.core import InlineWorker, sha256_hex
from tests.support.worker import blob_exists

OWNER = {"X-Owner-Id": "alice"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:  # `with`: runs the lifespan (opens the pool)
        yield c


def upload_body(body: bytes, **overrides: Any) -> dict[str, Any]:
    return {
        "filename": "report.txt",
        "content_type": "text/plain",
        "size": len(body),
        "sha256": sha256_hex(body),
        **overrides,
    }


def put_json(data: dict[str, Any], body: bytes) -> requests.Response:
    """PUT ``body`` to the ``url`` of an upload-url answer with its headers, as a browser does
    (Content-Length comes from the body)."""
    headers = {k: v for k, v in data["headers"].items() if k.lower() != "content-length"}
    return requests.put(data["url"], data=body, headers=headers, timeout=30)


def request_and_put(client: TestClient, body: bytes, owner: str = "alice") -> dict[str, Any]:
    resp = client.post(
        "/documents/upload-url", json=upload_body(body), headers={"X-Owner-Id": owner}
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    assert put_json(data, body).status_code == 200
    return data


def test_full_flow_over_http(
    client: TestClient, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = b"hello over http\n" * 500
    resp = client.post(
        "/documents/upload-url",
        json=upload_body(body),
        headers={**OWNER, "X-Request-Id": "trace-flow-1"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Request-Id"] == "trace-flow-1"
    data = resp.json()
    doc_id = data["document"]["id"]
    assert data["method"] == "PUT"
    assert data["deduplicated"] is False
    assert data["url"].startswith(settings.public_endpoint)
    assert data["headers"]["Content-Type"] == "text/plain"
    assert data["headers"]["Content-Length"] == str(len(body))
    assert "x-amz-checksum-sha256" in data["headers"]
    assert data["expires_at"]
    assert data["document"]["status"] == "pending"
    assert data["document"]["size"] == len(body)
    assert "object_key" not in data["document"]  # internal: not shown to clients

    # The trace id reached the library: it is on the row.
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute("SELECT trace_id FROM s3outbox.documents WHERE id = %s", (doc_id,))
        assert row.fetchone() == ("trace-flow-1",)

    # Real HTTP PUT straight to storage with the signed headers.
    assert put_json(data, body).status_code == 200

    confirmed = client.post(f"/documents/{doc_id}/confirm", headers=OWNER)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "uploaded"
    assert client.get("/quota", headers=OWNER).json()["reserved_bytes"] == len(body)

    inline_worker.drain()

    got = client.get(f"/documents/{doc_id}", headers=OWNER)
    assert got.status_code == 200
    assert got.json()["status"] == "available"
    assert got.json()["verified_size"] == len(body)

    # The download is a 302 to a presigned GET that serves the real bytes.
    redirect = client.get(f"/documents/{doc_id}/download", headers=OWNER, follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["Cache-Control"] == "no-store"
    fetched = requests.get(redirect.headers["Location"], timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == body
    assert "report.txt" in fetched.headers["Content-Disposition"]

    # The JSON form, for pages that cannot send the owner header with a plain link.
    as_json = client.get(
        f"/documents/{doc_id}/download", headers={**OWNER, "Accept": "application/json"}
    )
    assert as_json.status_code == 200
    assert as_json.json()["document_id"] == doc_id
    assert requests.get(as_json.json()["url"], timeout=30).content == body

    listed = client.get("/documents", headers=OWNER, params={"status": "available"}).json()
    assert [d["id"] for d in listed["items"]] == [doc_id]
    assert listed["next_cursor"] is None
    quota = client.get("/quota", headers=OWNER).json()
    assert quota["used_bytes"] == len(body)
    assert quota["reserved_bytes"] == 0
    assert quota["free_bytes"] == quota["limit_bytes"] - len(body)

    # The same content again: a document of its own on the same object, no URL, available.
    again = client.post("/documents/upload-url", json=upload_body(body), headers=OWNER).json()
    assert again["deduplicated"] is True
    assert again["url"] is None
    assert again["document"]["id"] != doc_id
    assert again["document"]["status"] == "available"

    for n, gone in enumerate((doc_id, again["document"]["id"])):
        deleted = client.delete(f"/documents/{gone}", headers=OWNER)
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "deleting"
        inline_worker.drain()
        assert client.get(f"/documents/{gone}", headers=OWNER).json()["status"] == "deleted"
        # The object stays while the other document references it.
        expected = 200 if n == 0 else 404
        assert requests.get(redirect.headers["Location"], timeout=30).status_code == expected
    assert client.get("/quota", headers=OWNER).json()["used_bytes"] == 0


def test_the_issue_12_walk_two_names_one_object_then_another_owner(
    client: TestClient, settings: Settings, inline_worker: InlineWorker
) -> None:
    """Issue 12's walk through the reference API: first.pdf, then the same bytes as
    second.txt (text/plain): two documents with their own names and types sharing one object;
    deleting one keeps the other downloadable (a real GET, served with its own type); deleting
    both removes the object; another owner uploading the same bytes gets a URL and, after
    verification, shares the blob (its duplicate object purged)."""
    body = b"%PDF-1.7\n" + b"the same bytes twice\n" * 400
    alice = {"X-Owner-Id": "alice"}
    bob = {"X-Owner-Id": "bob"}
    ids: dict[str, str] = {}
    for name, ctype in (("first.pdf", "application/pdf"), ("second.txt", "text/plain")):
        resp = client.post(
            "/documents/upload-url",
            json=upload_body(body, filename=name, content_type=ctype),
            headers=alice,
        )
        assert resp.status_code == 200, resp.text
        data = resp.json()
        if name == "first.pdf":  # the upload
            assert data["url"] is not None and data["deduplicated"] is False
            assert put_json(data, body).status_code == 200
            confirmed = client.post(f"/documents/{data['document']['id']}/confirm", headers=alice)
            assert confirmed.status_code == 200
            inline_worker.drain()
        else:  # nothing to upload: the object is stored
            assert data["url"] is None and data["deduplicated"] is True
        ids[name] = data["document"]["id"]
    assert ids["first.pdf"] != ids["second.txt"]

    def downloaded(doc_id: str, headers: dict[str, str]) -> requests.Response:
        resp = client.get(
            f"/documents/{doc_id}/download", headers={**headers, "Accept": "application/json"}
        )
        assert resp.status_code == 200, resp.text
        return requests.get(resp.json()["url"], timeout=30)

    docs = {n: client.get(f"/documents/{i}", headers=alice).json() for n, i in ids.items()}
    assert {n: (d["filename"], d["content_type"], d["status"]) for n, d in docs.items()} == {
        "first.pdf": ("first.pdf", "application/pdf", "available"),
        "second.txt": ("second.txt", "text/plain", "available"),
    }
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        keys = {
            r[0]: r[1]
            for r in c.execute(
                "SELECT id::text, object_key FROM s3outbox.documents WHERE id = ANY(%s)",
                (list(ids.values()),),
            ).fetchall()
        }
    shared = keys[ids["first.pdf"]]
    assert keys[ids["second.txt"]] == shared  # one object
    for name, ctype in (("first.pdf", "application/pdf"), ("second.txt", "text/plain")):
        got = downloaded(ids[name], alice)
        assert got.content == body and got.headers["Content-Type"] == ctype
        assert name in got.headers["Content-Disposition"]

    # Deleting one keeps the other downloadable.
    assert client.delete(f"/documents/{ids['first.pdf']}", headers=alice).status_code == 200
    inline_worker.drain()
    got = downloaded(ids["second.txt"], alice)
    assert got.content == body and got.headers["Content-Type"] == "text/plain"
    assert blob_exists(settings, shared)
    # Deleting both removes the object.
    assert client.delete(f"/documents/{ids['second.txt']}", headers=alice).status_code == 200
    inline_worker.drain()
    assert not blob_exists(settings, shared)

    # Another owner: a URL of his own (no existence leak), then the blob is shared.
    carol_first = client.post(
        "/documents/upload-url",
        json=upload_body(body, filename="keep.pdf", content_type="application/pdf"),
        headers={"X-Owner-Id": "carol"},
    ).json()
    assert put_json(carol_first, body).status_code == 200
    carol_id = carol_first["document"]["id"]
    confirmed = client.post(f"/documents/{carol_id}/confirm", headers={"X-Owner-Id": "carol"})
    assert confirmed.status_code == 200
    inline_worker.drain()
    data = client.post(
        "/documents/upload-url",
        json=upload_body(body, filename="bobs.txt", content_type="text/plain"),
        headers=bob,
    ).json()
    assert data["url"] is not None and data["deduplicated"] is False
    assert put_json(data, body).status_code == 200
    bob_id = data["document"]["id"]
    assert client.post(f"/documents/{bob_id}/confirm", headers=bob).status_code == 200
    inline_worker.drain()
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = dict(
            c.execute(
                "SELECT id::text, object_key FROM s3outbox.documents WHERE id = ANY(%s)",
                ([bob_id, carol_id],),
            ).fetchall()
        )
    assert rows[bob_id] == rows[carol_id]  # bob shares carol's blob
    assert not blob_exists(settings, f"{settings.key_prefix}{bob_id}")  # his copy purged
    got = downloaded(bob_id, bob)
    assert got.content == body and got.headers["Content-Type"] == "text/plain"
    assert client.get("/quota", headers=bob).json()["used_bytes"] == len(body)
    report = check_invariants(settings, settled=True)
    assert report.ok, report.summary()


def test_list_pages_with_cursor(client: TestClient) -> None:
    ids = {request_and_put(client, f"doc {i}".encode())["document"]["id"] for i in range(3)}
    first = client.get("/documents", headers=OWNER, params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = client.get(
        "/documents", headers=OWNER, params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert second["next_cursor"] is None
    assert {d["id"] for d in first["items"] + second["items"]} == ids


def test_quota_exceeded_is_413_with_figures(
    client: TestClient, outbox: Outbox, conn: psycopg.Connection[Any]
) -> None:
    outbox.set_limit(conn, owner_id="alice", limit_bytes=1000)
    conn.commit()
    request_and_put(client, b"x" * 600)  # reserves 600
    resp = client.post("/documents/upload-url", json=upload_body(b"y" * 500), headers=OWNER)
    assert resp.status_code == 413
    assert resp.json() == {
        "error": "quota_exceeded",
        "message": resp.json()["message"],
        "used": 0,
        "reserved": 600,
        "limit": 1000,
        "requested": 500,
    }
    assert resp.headers["X-Request-Id"]
    # Nothing was reserved by the refused request (its transaction rolled back).
    assert client.get("/quota", headers=OWNER).json()["reserved_bytes"] == 600


def test_file_too_large_is_413(client: TestClient, settings: Settings) -> None:
    size = settings.max_upload_bytes + 1
    resp = client.post(
        "/documents/upload-url", json=upload_body(b"", size=size, sha256="a" * 64), headers=OWNER
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "file_too_large"


def test_other_owners_document_is_404(client: TestClient) -> None:
    doc_id = request_and_put(client, b"alice's secret")["document"]["id"]
    bob = {"X-Owner-Id": "bob"}
    unknown = str(uuid.uuid4())
    calls: list[Callable[[str], Any]] = [
        lambda i: client.get(f"/documents/{i}", headers=bob),
        lambda i: client.post(f"/documents/{i}/confirm", headers=bob),
        lambda i: client.delete(f"/documents/{i}", headers=bob),
        lambda i: client.get(f"/documents/{i}/download", headers=bob, follow_redirects=False),
    ]
    for call in calls:
        theirs, nobodys = call(doc_id), call(unknown)
        assert theirs.status_code == nobodys.status_code == 404
        assert (
            theirs.json()
            == nobodys.json()
            == {"error": "not_found", "message": "document not found"}
        )
    assert client.get("/documents", headers=bob).json()["items"] == []
    # Alice's document is untouched.
    assert client.get(f"/documents/{doc_id}", headers=OWNER).json()["status"] == "pending"


def test_missing_owner_is_401(client: TestClient) -> None:
    some = str(uuid.uuid4())
    responses = [
        client.post("/documents/upload-url", json=upload_body(b"x")),
        client.post(f"/documents/{some}/confirm"),
        client.get(f"/documents/{some}"),
        client.get("/documents"),
        client.delete(f"/documents/{some}"),
        client.get(f"/documents/{some}/download", follow_redirects=False),
        client.get("/quota"),
        client.get("/quota", headers={"X-Owner-Id": "   "}),
    ]
    for resp in responses:
        assert resp.status_code == 401, resp.request.url
        assert resp.json() == {"error": "unauthorized", "message": "missing X-Owner-Id header"}
        assert resp.headers["X-Request-Id"]


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    for ctype in ("application/x-msdownload", "text/html", "text/plain; charset=utf-8", "nope"):
        resp = client.post(
            "/documents/upload-url", json=upload_body(b"x", content_type=ctype), headers=OWNER
        )
        assert resp.status_code == 415, ctype
        assert resp.json()["error"] == "unsupported_content_type"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        # (No sha256 is the library's 400: required up to the multipart threshold only.)
        {"filename": "a.txt", "content_type": "text/plain", "size": "three", "sha256": "a" * 64},
        {"filename": ["a"], "content_type": "text/plain", "size": 3, "sha256": "a" * 64},
        {"filename": "a.txt", "content_type": "text/plain", "size": 3, "sha256": "a" * 64, "x": 1},
        [],
        "not an object",
    ],
)
def test_bad_body_is_422(client: TestClient, payload: Any) -> None:
    resp = client.post("/documents/upload-url", json=payload, headers=OWNER)
    assert resp.status_code == 422
    data = resp.json()
    assert data["error"] == "request_validation_failed"
    assert data["errors"]


def test_non_json_body_is_422(client: TestClient) -> None:
    resp = client.post(
        "/documents/upload-url",
        content=b"{not json",
        headers={**OWNER, "Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "request_validation_failed"


def test_library_validation_errors_keep_their_status(client: TestClient) -> None:
    cases = [
        (upload_body(b"x", filename="../etc/passwd"), 422, "validation_failed"),
        (upload_body(b"x", filename=""), 422, "validation_failed"),
        (upload_body(b"x", sha256="zz"), 400, "invalid_input"),
        (upload_body(b"x", size=-1), 400, "invalid_input"),
    ]
    for payload, status, code in cases:
        resp = client.post("/documents/upload-url", json=payload, headers=OWNER)
        assert (resp.status_code, resp.json()["error"]) == (status, code), payload
    bad_id = client.get("/documents/not-a-uuid", headers=OWNER)
    assert (bad_id.status_code, bad_id.json()["error"]) == (400, "invalid_input")
    bad_list = client.get("/documents", headers=OWNER, params={"limit": 0})
    assert (bad_list.status_code, bad_list.json()["error"]) == (400, "invalid_input")
    bad_status = client.get("/documents", headers=OWNER, params={"status": "nope"})
    assert bad_status.status_code == 400
    bad_cursor = client.get("/documents", headers=OWNER, params={"cursor": "%%%"})
    assert bad_cursor.status_code == 400


def test_download_of_pending_document_is_409(client: TestClient) -> None:
    doc_id = request_and_put(client, b"not verified yet")["document"]["id"]
    resp = client.get(f"/documents/{doc_id}/download", headers=OWNER, follow_redirects=False)
    assert resp.status_code == 409
    assert resp.json()["error"] == "invalid_state"
    assert resp.json()["status"] == "pending"


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.get("/quota", headers={**OWNER, "X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = client.get("/quota", headers=OWNER).headers["X-Request-Id"]
    assert len(made) == 32
    # A header that could inject into logs or other headers is replaced, not echoed.
    for hostile in ("a b", "x" * 200, "évil".encode(), "a\tb"):
        resp = client.get("/quota", headers={**OWNER, "X-Request-Id": hostile})
        assert resp.headers["X-Request-Id"] != hostile
        assert len(resp.headers["X-Request-Id"]) == 32


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = {path: set(ops) for path, ops in schema["paths"].items()}
    assert paths == {
        "/documents/upload-url": {"post"},
        "/documents/{document_id}/confirm": {"post"},
        "/documents/{document_id}": {"get", "delete"},
        "/documents": {"get"},
        "/documents/{document_id}/download": {"get"},
        "/documents/{document_id}/parts/{part_number}/upload-url": {"post"},
        "/documents/{document_id}/parts/{part_number}": {"put"},
        "/documents/{document_id}/upload": {"get"},
        "/quota": {"get"},
        "/upload-limits": {"get"},
    }
    upload = schema["paths"]["/documents/upload-url"]["post"]
    assert {"413", "415", "401", "422"} <= set(upload["responses"])
    # sha256 is optional: required up to the multipart threshold, refused above it.
    assert set(schema["components"]["schemas"]["UploadRequest"]["required"]) == {
        "filename",
        "content_type",
        "size",
    }
    download = schema["paths"]["/documents/{document_id}/download"]["get"]
    assert {"302", "200", "404", "409"} <= set(download["responses"])


def test_page_and_static_files(client: TestClient, settings: Settings) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert f"connect-src 'self' {settings.public_endpoint}" in csp
    assert "script-src" not in csp or "'unsafe-inline'" not in csp
    assert '<script type="module" src="static/app.js">' in page.text
    scripts = sorted(p.name for p in STATIC_DIR.glob("*.js"))
    assert {"app.js", "sha256.js", "multipart.js"} <= set(scripts)
    assert "crypto.subtle.digest" in client.get("/static/sha256.js").text
    for asset in [f"/static/{name}" for name in scripts] + ["/static/style.css"]:
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        if asset.endswith(".js"):  # a module script needs a JavaScript MIME type
            assert resp.headers["content-type"].startswith("text/javascript"), asset
        # No external resources: nothing is loaded from any other origin.
        assert "https://" not in resp.text and "http://" not in resp.text, asset
        assert "import(" not in resp.text, asset  # static imports only, from this folder
    assert "https://" not in page.text and "http://" not in page.text


def test_upload_limits(client: TestClient, settings: Settings) -> None:
    assert client.get("/upload-limits").status_code == 401
    resp = client.get("/upload-limits", headers=OWNER)
    assert resp.status_code == 200
    assert resp.json() == {
        "max_upload_bytes": settings.max_upload_bytes,
        "multipart_threshold_bytes": settings.multipart_threshold_bytes,
        "multipart_part_size_bytes": settings.multipart_part_size_bytes,
    }


def test_router_in_an_existing_app_with_a_custom_owner(settings: Settings) -> None:
    def token_owner(authorization: str | None = Header(None)) -> str:
        if authorization != "Bearer good":
            raise HTTPException(status_code=403, detail="bad token")
        return "token-user"

    host = FastAPI()

    @host.get("/health")
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    host.include_router(
        create_router(Backend(settings), owner_dependency=token_owner), prefix="/api"
    )
    with TestClient(host) as c:
        assert c.get("/health").json() == {"ok": "yes"}
        ok = c.get("/api/quota", headers={"Authorization": "Bearer good"})
        assert ok.status_code == 200
        assert ok.json()["owner_id"] == "token-user"
        denied = c.get("/api/quota", headers={"Authorization": "Bearer bad"})
        assert denied.status_code == 403
        assert denied.json() == {"error": "forbidden", "message": "bad token"}
        # X-Owner-Id means nothing to this app.
        assert c.get("/api/quota", headers=OWNER).status_code == 403


def test_database_down_is_503(make_settings: Callable[..., Settings]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/postgres")
    app = create_app(settings, backend=Backend(settings, pool_timeout=0.5))
    with TestClient(app) as c:
        resp = c.get("/quota", headers=OWNER)
    assert resp.status_code == 503
    assert resp.json()["error"] == "unavailable"
    assert resp.headers["Retry-After"] == "1"
