"""HeadObject without boto3's request machinery: botocore's SigV4 signer over a pooled urllib3
connection. The workers' HEAD is their largest single cost per verified document: boto3's
``head_object`` spends about 1 ms of CPU per call (parameter validation, the endpoint rules,
event hooks, response parsing), this about 0.35 ms (README "Performance").

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
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
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
from urllib3.exceptions import ConnectTimeoutError as Urllib3ConnectTimeout
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout
from urllib3.exceptions import SSLError as Urllib3SSLError

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


def usable(settings: Settings) -> bool:
    """Whether the lean HEAD can stand in for boto3's: not when boto3 would go through an
    HTTP proxy from the environment (``HTTPS_PROXY``...), which this client does not use."""
    return not get_environ_proxies(settings.s3_endpoint_url)


class LeanHead:
    """``head_object`` for one bucket on the workers' (internal) endpoint. Thread-safe: the
    signer keeps no per-request state and the urllib3 pool hands each thread its own
    connection.

    ``base_url`` is where the bucket's objects live (``http://host:port/bucket`` for path
    style, ``http://bucket.host:port`` for virtual hosts): ``Storage`` takes it from its
    boto3 client, so both address storage alike whatever ``s3_addressing_style`` says.
    """

    def __init__(self, settings: Settings, base_url: str, pool_size: int = 10) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/") + "/"
        credentials = Credentials(
            settings.s3_access_key_id, settings.s3_secret_access_key.get_secret_value()
        )
        self._signer = S3SigV4Auth(credentials, "s3", settings.s3_region)
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
        # maxsize as boto3's max_pool_connections (10); more threads than that still work,
        # their extra connections are closed after use.
        self._pool: urllib3.HTTPConnectionPool = urllib3.connectionpool.connection_from_url(
            self._origin,
            maxsize=pool_size,
            timeout=timeout,
            retries=False,
            **({"ca_certs": get_cert_path(True)} if parts.scheme == "https" else {}),
        )

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
        try:
            # A HEAD response has no body: preloading reads nothing and frees the connection.
            resp = self._pool.urlopen(
                "HEAD", path, headers=dict(request.headers.items()), redirect=False
            )
        except NewConnectionError as exc:  # a ConnectTimeoutError in urllib3 2: first
            raise EndpointConnectionError(endpoint_url=url, error=exc) from None
        except Urllib3ConnectTimeout:
            raise ConnectTimeoutError(endpoint_url=url) from None
        except Urllib3ReadTimeout as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from None
        except Urllib3SSLError as exc:
            raise SSLError(endpoint_url=url, error=exc) from None
        except ProtocolError as exc:
            raise ConnectionClosedError(endpoint_url=url, error=exc) from None
        except Urllib3HTTPError as exc:
            raise HTTPClientError(error=exc) from None
        return resp.status, resp.headers

    def close(self) -> None:
        self._pool.close()


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
