"""The multipart endpoints of the reference HTTP API (outbox.webapp) over the real PostgreSQL
and storage: a three-part upload through HTTP with each part PUT to its presigned URL over
real HTTP, resume from the upload status, and the errors (409 with Retry-After while the
upload is being created, parts missing, bad part numbers and bodies)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

pytest.importorskip("fastapi", reason="the api extra is not installed")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx")

from fastapi.testclient import TestClient

from outbox import Settings
from outbox.webapp import create_app
from tests.support.core import InlineWorker
from tests.support.multipart import MULTIPART_SETTINGS, PART, THREE_PARTS, sha, uploads_of

OWNER = {"X-Owner-Id": "alice"}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings(**MULTIPART_SETTINGS)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def big_request(client: TestClient, size: int = THREE_PARTS) -> dict[str, Any]:
    resp = client.post(
        "/documents/upload-url",
        json={"filename": "big.bin", "content_type": "application/octet-stream", "size": size},
        headers=OWNER,
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def part_of(body: bytes, plan: dict[str, Any], number: int) -> bytes:
    start = (number - 1) * plan["part_size"]
    return body[start : start + plan["part_size"]]


def ask_part_url(client: TestClient, doc_id: str, number: int, part: bytes) -> Any:
    return client.post(
        f"/documents/{doc_id}/parts/{number}/upload-url",
        json={"sha256": sha(part)},
        headers=OWNER,
    )


def send_part(client: TestClient, doc_id: str, number: int, part: bytes) -> str:
    """Ask the part's URL, PUT the part over real HTTP, report its ETag; the ETag."""
    resp = ask_part_url(client, doc_id, number, part)
    assert resp.status_code == 200, resp.text
    ticket = resp.json()
    assert ticket["size"] == len(part) and ticket["method"] == "PUT"
    headers = {k: v for k, v in ticket["headers"].items() if k.lower() != "content-length"}
    put = requests.put(ticket["url"], data=part, headers=headers, timeout=60)
    assert put.status_code == 200, put.text
    etag = put.headers["ETag"]
    report = client.put(f"/documents/{doc_id}/parts/{number}", json={"etag": etag}, headers=OWNER)
    assert report.status_code == 200, report.text
    assert report.json()["etag"] == etag
    return etag


def test_a_three_part_upload_over_http_with_resume(
    client: TestClient, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = os.urandom(THREE_PARTS)
    data = big_request(client)
    doc_id = data["document"]["id"]
    assert data["url"] is None and data["deduplicated"] is False
    plan = data["multipart"]
    assert plan == {
        "size": THREE_PARTS,
        "part_size": PART,
        "part_count": 3,
        "last_part_size": 1234,
    }
    assert data["document"]["sha256"] is None and data["document"]["multipart"] == plan

    # Before a worker created the upload: 409 with Retry-After, never a 500.
    early = ask_part_url(client, doc_id, 1, part_of(body, plan, 1))
    assert early.status_code == 409
    assert early.json()["error"] == "upload_not_ready"
    assert int(early.headers["Retry-After"]) >= 1
    status = client.get(f"/documents/{doc_id}/upload", headers=OWNER).json()
    assert status["ready"] is False and status["missing"] == [1, 2, 3]

    inline_worker.drain()
    first = send_part(client, doc_id, 1, part_of(body, plan, 1))
    # A reload: the status says what was sent; the client re-sends only the rest.
    status = client.get(f"/documents/{doc_id}/upload", headers=OWNER).json()
    assert status["ready"] is True and status["missing"] == [2, 3]
    assert [(p["part_number"], p["sha256"], p["etag"]) for p in status["parts"]] == [
        (1, sha(part_of(body, plan, 1)), first)
    ]
    missing = client.post(f"/documents/{doc_id}/confirm", headers=OWNER)
    assert missing.status_code == 409
    assert missing.json()["error"] == "parts_missing"
    assert missing.json()["missing"] == [2, 3]
    for number in status["missing"]:
        send_part(client, doc_id, number, part_of(body, plan, number))

    confirmed = client.post(f"/documents/{doc_id}/confirm", headers=OWNER)
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "uploaded"
    inline_worker.drain()
    got = client.get(f"/documents/{doc_id}", headers=OWNER).json()
    assert got["status"] == "available" and got["verified_size"] == THREE_PARTS
    link = client.get(
        f"/documents/{doc_id}/download", headers={**OWNER, "Accept": "application/json"}
    )
    assert requests.get(link.json()["url"], timeout=60).content == body
    quota = client.get("/quota", headers=OWNER).json()
    assert (quota["used_bytes"], quota["reserved_bytes"]) == (THREE_PARTS, 0)


def test_errors_of_the_part_endpoints(
    client: TestClient, settings: Settings, inline_worker: InlineWorker
) -> None:
    body = os.urandom(THREE_PARTS)
    data = big_request(client)
    doc_id, plan = data["document"]["id"], data["multipart"]
    inline_worker.drain()
    part = part_of(body, plan, 1)

    whole = client.post(
        "/documents/upload-url",
        json={
            "filename": "big.bin",
            "content_type": "application/octet-stream",
            "size": THREE_PARTS,
            "sha256": sha(body),
        },
        headers=OWNER,
    )
    assert whole.status_code == 400 and whole.json()["error"] == "invalid_input"
    no_sha = client.post(
        "/documents/upload-url",
        json={"filename": "s.txt", "content_type": "text/plain", "size": 10},
        headers=OWNER,
    )
    assert no_sha.status_code == 400 and "sha256" in no_sha.json()["message"]

    assert ask_part_url(client, doc_id, 4, part).status_code == 400  # beyond the plan
    assert ask_part_url(client, doc_id, 0, part).status_code == 400
    assert ask_part_url(client, doc_id, 10_001, part).status_code == 400
    not_a_number = client.post(
        f"/documents/{doc_id}/parts/one/upload-url", json={"sha256": sha(part)}, headers=OWNER
    )
    assert not_a_number.status_code == 422
    assert not_a_number.json()["error"] == "request_validation_failed"
    bad_sha = client.post(
        f"/documents/{doc_id}/parts/1/upload-url", json={"sha256": "nope"}, headers=OWNER
    )
    assert bad_sha.status_code == 400
    extra = client.post(
        f"/documents/{doc_id}/parts/1/upload-url",
        json={"sha256": sha(part), "size": 1},
        headers=OWNER,
    )
    assert extra.status_code == 422  # the size comes from the plan, never from the client
    other = client.post(
        f"/documents/{doc_id}/parts/1/upload-url",
        json={"sha256": sha(part)},
        headers={"X-Owner-Id": "bob"},
    )
    assert other.status_code == 404
    unknown = client.get(f"/documents/{uuid.uuid4()}/upload", headers=OWNER)
    assert unknown.status_code == 404
    not_issued = client.put(f"/documents/{doc_id}/parts/2", json={"etag": '"x"'}, headers=OWNER)
    assert not_issued.status_code == 409
    bad_etag = client.put(f"/documents/{doc_id}/parts/1", json={"etag": "a b"}, headers=OWNER)
    assert bad_etag.status_code == 400

    # The URL signs the part's SHA-256: storage refuses other bytes (over real HTTP).
    ticket = ask_part_url(client, doc_id, 1, part).json()
    headers = {k: v for k, v in ticket["headers"].items() if k.lower() != "content-length"}
    wrong = requests.put(ticket["url"], data=bytes(len(part)), headers=headers, timeout=60)
    assert wrong.status_code == 400

    # Deleted: the part endpoints say so, and the upload is aborted.
    assert client.delete(f"/documents/{doc_id}", headers=OWNER).status_code == 200
    gone = ask_part_url(client, doc_id, 1, part)
    assert gone.status_code == 409 and gone.json()["status"] == "deleting"
    inline_worker.drain()
    key = f"{settings.key_prefix}{doc_id}"
    assert uploads_of(settings, key) == []
