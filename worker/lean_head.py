"""HeadObject without boto3's request machinery: botocore's SigV4 signer over libcurl (pycurl),
one handle and its kept-alive connection per thread. The workers' HEAD is their largest single
cost per verified document: boto3's ``head_object`` spends about 1 ms of CPU per call
(parameter validation, the endpoint rules, event hooks, response parsing), the signer over a
pooled urllib3 connection about 0.4 ms (http.client parses each response's headers with the
``email`` package), the signer over libcurl about half that (README "Performance").

It answers as boto3 would, so ``Storage.head`` and ``unavailable`` cannot tell the two apart:
a boto3-shaped response dict (only the fields ``Storage.head`` reads), a ``ClientError`` for
an error status (``Code`` is the status, as boto3 gives for a HEAD, whose error has no body),
and botocore's connection exceptions for transport failures. Retries follow boto3's
"standard" mode as ``outbox.presign.make_client`` configures it: 3 attempts in all, on
connection errors, 500/502/503/504 (jittered backoff from 50 ms) and 429 (from 1 s).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import pycurl
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies
from urllib3 import HTTPHeaderDict

from outbox.settings import Settings

#: What ``make_client`` configures: 3 attempts in all, its connect and read timeouts.
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
#: boto3's standard mode: 500/502/503/504 and connection errors are transient (backoff from
#: 50 ms), a 429 is throttling (backoff from 1 s); the backoff is capped at 20 s.
_TRANSIENT_STATUSES = {500, 502, 503, 504}
_THROTTLING_STATUSES = {429}
_TRANSIENT_SCALE = 0.05
_THROTTLING_SCALE = 1.0
_MAX_BACKOFF = 20.0
#: Headers of a HeadObject response, as boto3 names them in its response dict.
_FIELDS = (
    ("ContentType", "content-type"),
    ("ChecksumSHA256", "x-amz-checksum-sha256"),
    ("ContentEncoding", "content-encoding"),
    ("CacheControl", "cache-control"),
    ("ContentDisposition", "content-disposition"),
    ("ContentLanguage", "content-language"),
    ("ExpiresString", "expires"),
    ("WebsiteRedirectLocation", "x-amz-website-redirect-location"),
)
_META = "x-amz-meta-"
#: libcurl's failures (curl/curl.h) as botocore names them, so callers classify them alike.
_CONNECT_FAILED = {pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT}
_SSL_FAILED = {
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION,
    pycurl.E_SSL_CERTPROBLEM,
    pycurl.E_SSL_CIPHER,
    pycurl.E_SSL_CACERT_BADFILE,
    pycurl.E_SSL_ISSUER_ERROR,
    pycurl.E_SSL_PINNEDPUBKEYNOTMATCH,
    pycurl.E_SSL_INVALIDCERTSTATUS,
}
_CONNECTION_CLOSED = {
    pycurl.E_GOT_NOTHING,
    pycurl.E_SEND_ERROR,
    pycurl.E_RECV_ERROR,
    pycurl.E_PARTIAL_FILE,
}


def usable(settings: Settings) -> bool:
    """Whether the lean HEAD can stand in for boto3's: not when boto3 would go through an
    HTTP proxy from the environment (``HTTPS_PROXY``...), which this client does not use."""
    return not get_environ_proxies(settings.s3_endpoint_url)


class LeanHead:
    """``head_object`` for one bucket on the workers' (internal) endpoint. Thread-safe: the
    signer keeps no per-request state and each thread has its own libcurl handle, which
    keeps its connection alive between calls (a connection the server closed meanwhile is
    noticed and replaced by libcurl before the request is sent).

    ``base_url`` is where the bucket's objects live (``http://host:port/bucket`` for path
    style, ``http://bucket.host:port`` for virtual hosts): ``Storage`` takes it from its
    boto3 client, so both address storage alike whatever ``s3_addressing_style`` says.
    """

    def __init__(
        self,
        settings: Settings,
        base_url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/") + "/"
        credentials = Credentials(
            settings.s3_access_key_id, settings.s3_secret_access_key.get_secret_value()
        )
        self._signer = S3SigV4Auth(credentials, "s3", settings.s3_region)
        self._ca_certs = get_cert_path(True) if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._local = threading.local()
        # Every handle with the thread it belongs to: a thread that ended leaves its handle
        # (and connection) behind, closed when the next thread makes one (a pool per call).
        self._handles: list[tuple[threading.Thread, pycurl.Curl]] = []
        self._handles_lock = threading.Lock()

    def head_object(self, key: str) -> dict[str, Any]:
        """HeadObject with ``ChecksumMode=ENABLED``: a dict shaped like boto3's response.

        Raises:
            ClientError: storage answered an error status (after the retries a 5xx or 429
                gets); ``Error.Code`` is the status ("404", "403", ...).
            botocore.exceptions.ConnectionError, HTTPClientError: storage could not be
                reached, or the connection failed, on every attempt.
        """
        path = self._prefix + quote(key, safe="/~")
        url = self._origin + path
        attempt = 1
        while True:
            scale = 0.0
            try:
                status, headers = self._send(url, path)
            except (BotoConnectionError, HTTPClientError):
                if attempt >= MAX_ATTEMPTS:
                    raise
                scale = _TRANSIENT_SCALE
            else:
                if status < 300:
                    return _response(headers)
                if attempt >= MAX_ATTEMPTS:
                    raise _client_error(status, headers)
                if status in _TRANSIENT_STATUSES:
                    scale = _TRANSIENT_SCALE
                elif status in _THROTTLING_STATUSES:
                    scale = _THROTTLING_SCALE
                else:
                    raise _client_error(status, headers)
            time.sleep(random.random() * min(scale * 2 ** (attempt - 1), _MAX_BACKOFF))
            attempt += 1

    def _send(self, url: str, path: str) -> tuple[int, Mapping[str, str]]:
        """One signed HEAD: its status and headers, or botocore's exception for a failure."""
        request = AWSRequest(method="HEAD", url=url, headers={"x-amz-checksum-mode": "ENABLED"})
        self._signer.add_auth(request)
        curl = self._curl()
        lines: list[bytes] = []
        curl.setopt(pycurl.URL, url)
        # "Accept:" with no value: libcurl's default Accept header is not sent.
        curl.setopt(
            pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in request.headers.items()] + ["Accept:"]
        )
        curl.setopt(pycurl.HEADERFUNCTION, lines.append)
        try:
            curl.perform()
        except pycurl.error as exc:
            raise _transport_error(curl, url, exc) from None
        status = int(curl.getinfo(pycurl.RESPONSE_CODE))
        if not 100 <= status <= 599:  # no HTTP answer: never read as an object's status
            raise HTTPClientError(error=f"no HTTP status from {url} ({status})")
        return status, _headers(lines)

    def _curl(self) -> pycurl.Curl:
        """This thread's handle, made on its first call."""
        curl: pycurl.Curl | None = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.NOBODY, 1)  # HEAD
            curl.setopt(pycurl.NOSIGNAL, 1)  # timeouts without SIGALRM: safe in threads
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(self._connect_timeout * 1000))
            # A HEAD's answer is its headers: the whole request within connect + read.
            curl.setopt(pycurl.TIMEOUT_MS, int((self._connect_timeout + self._read_timeout) * 1000))
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            # The path as signed: libcurl would otherwise squash "/../" and "/./" in a key.
            curl.setopt(pycurl.PATH_AS_IS, 1)
            # Never a proxy from the environment (``usable`` leaves those to boto3).
            curl.setopt(pycurl.PROXY, "")
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
            if self._ca_certs is not None:
                curl.setopt(pycurl.CAINFO, self._ca_certs)
            with self._handles_lock:
                ended = [h for h in self._handles if not h[0].is_alive()]
                self._handles = [h for h in self._handles if h[0].is_alive()]
                self._handles.append((threading.current_thread(), curl))
            for _thread, handle in ended:
                handle.close()
            self._local.curl = curl
        return curl

    def close(self) -> None:
        """Closes every thread's handle and its connection; not to be used afterwards."""
        with self._handles_lock:
            handles, self._handles = self._handles, []
        for _thread, curl in handles:
            curl.close()


def _headers(lines: list[bytes]) -> HTTPHeaderDict:
    """The last response's headers from libcurl's raw header lines (an interim 1xx answer
    comes first when there is one), decoded as http.client decodes them (ISO-8859-1)."""
    headers = HTTPHeaderDict()
    for raw in lines:
        if raw.startswith(b"HTTP/"):
            headers = HTTPHeaderDict()
            continue
        name, sep, value = raw.decode("iso-8859-1").partition(":")
        if sep and name.strip():
            headers.add(name.strip(), value.strip())
    return headers


def _transport_error(curl: pycurl.Curl, url: str, exc: pycurl.error) -> Exception:
    """botocore's exception for libcurl's failure, as its urllib3 session raises them."""
    code = exc.args[0] if exc.args else None
    if code in _CONNECT_FAILED:
        return EndpointConnectionError(endpoint_url=url, error=exc)
    if code == pycurl.E_OPERATION_TIMEDOUT:
        if curl.getinfo(pycurl.CONNECT_TIME) == 0.0:  # never connected
            return ConnectTimeoutError(endpoint_url=url)
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if code in _SSL_FAILED:
        return SSLError(endpoint_url=url, error=exc)
    if code in _CONNECTION_CLOSED:
        return ConnectionClosedError(endpoint_url=url, error=exc)
    return HTTPClientError(error=exc)


def _response(headers: Mapping[str, str]) -> dict[str, Any]:
    """The fields of boto3's HeadObject response that ``Storage.head`` reads."""
    out: dict[str, Any] = {"ContentLength": int(headers.get("content-length", 0))}
    for field, header in _FIELDS:
        value = headers.get(header)
        if value is not None:
            out[field] = value
    # As botocore: the name after the prefix keeps the case the server sent.
    out["Metadata"] = {
        name[len(_META) :]: value
        for name, value in headers.items()
        if name.lower().startswith(_META)
    }
    return out


def _client_error(status: int, headers: Mapping[str, str]) -> ClientError:
    """The ``ClientError`` boto3 raises for a HEAD that failed with ``status``: a HEAD error
    has no body, so its code is the status and its message the reason phrase."""
    response: Any = {
        "Error": {"Code": str(status), "Message": http.client.responses.get(status, "")},
        "ResponseMetadata": {
            "HTTPStatusCode": status,
            "HTTPHeaders": {k.lower(): v for k, v in headers.items()},
            "RequestId": headers.get("x-amz-request-id", ""),
        },
    }
    return ClientError(response, "HeadObject")
