"""A fault-injecting HTTP reverse proxy for S3-compatible storage (chaos runs and tests).

It sits between the workers and storage: only the workers' ``S3OUTBOX_S3_ENDPOINT_URL``
points at it, while presigned URLs keep going straight to storage. Requests are forwarded
with every header unchanged, including ``Host``: SigV4 signs the host the client talked to
(the proxy's address), and the storage checks the signature against the ``Host`` header it
receives, so an unchanged header keeps the signature valid.

Faults, each drawn per request from a seeded random generator at a configurable rate:

- ``http_500`` / ``http_503``: an S3 XML error instead of forwarding;
- ``drop``: the connection is closed without any response, before or after the request
  reached storage (so a DeleteObject may have happened although the client saw an error);
- ``delay``: the response is held back for a while;
- ``stale_404``: an eventually consistent store. A HEAD or GET of an object written less than
  ``stale_window_seconds`` ago (by its ``Last-Modified``) answers 404 NoSuchKey, for a share
  of keys chosen per key, so verification has to retry a 404 until the object shows up.

- ``http_403`` (windows, not drawn per request): while ``deny(seconds)`` is in force, every
  request for an object (HEAD, GET, PUT, DELETE of a key; never a bucket-level request such as
  a listing) answers 403 AccessDenied, as when the workers' s3:GetObject/s3:DeleteObject is
  taken away for a while. A HEAD's 403 has no body (botocore reports the code "403"), a GET's
  or DELETE's carries ``<Code>AccessDenied</Code>``: what AWS sends. The caller opens a window
  only while every process that checks its credentials at boot has booted (a 403 at boot
  stops a worker on purpose, ``worker.permissions``).

Every fault is counted by kind (thread-safe) for the chaos report. ``force(kind)`` makes the
next eligible request get that fault, so a short run can make sure every kind happened.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("s3outbox.faultproxy")

#: Faults drawn per request (and forced with ``force``).
FAULT_KINDS = ("http_500", "http_503", "drop", "delay", "stale_404")
#: The fault of a ``deny`` window: 403 for every object request while it lasts.
DENY_KIND = "http_403"

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
)


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request (0 disables it)."""

    http_500: float = 0.03
    http_503: float = 0.03
    drop: float = 0.03
    delay: float = 0.05
    delay_min_seconds: float = 0.2
    delay_max_seconds: float = 2.0
    # Share of objects that look missing for a while after they were written.
    stale_share: float = 0.3
    stale_window_seconds: float = 4.0


class FaultProxy:
    """A threaded reverse proxy on ``127.0.0.1:<free port>`` in front of ``upstream``.

    >>> with FaultProxy("http://127.0.0.1:8333", FaultRates(), seed=1) as proxy:
    ...     proxy.url  # point the workers' S3 endpoint here
    """

    def __init__(
        self,
        upstream: str,
        rates: FaultRates | None = None,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self.rates = rates or FaultRates()
        self.enabled = True
        self._rng = random.Random(seed)
        self._seed = seed
        self._lock = threading.Lock()
        self._faults: Counter[str] = Counter()
        self._forced: Counter[str] = Counter()
        self._deny_until = 0.0
        self.requests = 0
        self._server = _Server((host, port), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def force(self, kind: str, times: int = 1) -> None:
        """Inject ``kind`` into the next ``times`` requests it applies to, whatever the rates."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._forced[kind] += times

    def deny(self, seconds: float) -> None:
        """Answer 403 AccessDenied to every object request for the next ``seconds``."""
        with self._lock:
            self._deny_until = time.monotonic() + seconds

    def denying(self) -> bool:
        """Is a ``deny`` window in force (and the proxy enabled)?"""
        with self._lock:
            return self.enabled and time.monotonic() < self._deny_until

    def faults(self) -> dict[str, int]:
        """Faults injected so far, by kind (every kind present, zero or not)."""
        with self._lock:
            return {kind: self._faults[kind] for kind in (*FAULT_KINDS, DENY_KIND)}

    def count(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def draw(self) -> str | None:
        """The fault for one request before it is forwarded (None: forward it as it is)."""
        with self._lock:
            self.requests += 1
            for kind in ("http_500", "http_503", "drop", "delay"):
                if self._forced[kind] > 0:
                    self._forced[kind] -= 1
                    return kind
            if not self.enabled:
                return None
            roll = self._rng.random()
        r = self.rates
        for kind, rate in (
            ("http_500", r.http_500),
            ("http_503", r.http_503),
            ("drop", r.drop),
            ("delay", r.delay),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None

    def delay_seconds(self) -> float:
        with self._lock:
            return self._rng.uniform(self.rates.delay_min_seconds, self.rates.delay_max_seconds)

    def coin(self) -> bool:
        with self._lock:
            return self._rng.random() < 0.5

    def looks_stale(self, key: str, last_modified: str | None) -> bool:
        """Should a read of ``key`` (written at ``last_modified``) answer 404 for now?"""
        if last_modified is None:
            return False
        parsed = email.utils.parsedate_to_datetime(last_modified)
        age = time.time() - parsed.timestamp()
        with self._lock:
            if self._forced["stale_404"] > 0 and age < self.rates.stale_window_seconds:
                self._forced["stale_404"] -= 1
                return True
            if not self.enabled or self.rates.stale_share <= 0:
                return False
        # Per key, not per request: a lagging replica lags for every reader of that object.
        chosen = random.Random(f"{self._seed}:{key}").random() < self.rates.stale_share
        return chosen and age < self.rates.stale_window_seconds


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many short worker connections at once; the default of 5 refuses bursts.
    request_queue_size = 128
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed mid-request (a fault we inject ourselves) hangs up on us: expected.
        exc = sys.exc_info()[1]
        if isinstance(exc, BrokenPipeError | ConnectionResetError):
            log.debug("client %s hung up: %s", client_address, exc)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    # -- the work ------------------------------------------------------------------------

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        if self._object_request() and proxy.denying():
            proxy.count(DENY_KIND)
            self._error(403, "AccessDenied", "Access Denied")
            return
        fault = proxy.draw()
        if fault in ("http_500", "http_503"):
            proxy.count(fault)
            if fault == "http_500":
                self._error(500, "InternalError", "We encountered an internal error.")
            else:
                self._error(503, "SlowDown", "Please reduce your request rate.")
            return
        if fault == "drop" and proxy.coin():
            proxy.count("drop")  # before storage saw the request
            self._drop()
            return
        if fault == "delay":
            proxy.count("delay")
            time.sleep(proxy.delay_seconds())  # the fault itself: a slow storage response
        try:
            status, reason, headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("faultproxy: upstream failed: %s", exc)
            self._error(502, "BadGateway", "upstream storage unreachable")
            return
        if fault == "drop":
            proxy.count("drop")  # after storage acted on it: the response is lost
            self._drop()
            return
        if (
            self.command in ("GET", "HEAD")
            and status in (200, 206)
            and proxy.looks_stale(self._key(), _header(headers, "Last-Modified"))
        ):
            proxy.count("stale_404")
            self._error(404, "NoSuchKey", "The specified key does not exist.")
            return
        self._respond(status, reason, headers, payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
        )
        try:
            # Host and every signed header go out exactly as they came in.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()

    def _respond(
        self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "content-length" and self.command != "HEAD":
                continue  # set below from the body we actually send
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str) -> None:
        body = b""
        if self.command != "HEAD":
            body = _ERROR_BODY.format(code=code, message=message, resource=self.path).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "faultproxy")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection with no response at all (a reset, as a crashed server does)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            # SO_LINGER 0: close() sends RST instead of an orderly FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _key(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _object_request(self) -> bool:
        """A request for an object (path style: ``/bucket/key``), not for the bucket."""
        bucket, _, key = self._key().lstrip("/").partition("/")
        return bool(bucket and key)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers:
        if key.lower() == lower:
            return value
    return None
