"""A PUT to a presigned URL whose body the test sends when it wants: the request line and
the signed headers go out at once (storage checks the URL's expiry then), the body later, in
small chunks, over a raw HTTP connection. How a slow client on a poor link behaves."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from outbox.models import UploadTicket


class SlowPut:
    """``start`` sends the request line, the signed headers and ``first`` bytes of the body;
    ``finish`` sends the rest in ``chunk``-byte pieces and returns the HTTP status and text.
    One request per instance."""

    def __init__(self, ticket: UploadTicket, body: bytes, *, chunk: int = 16 * 1024) -> None:
        assert ticket.url is not None
        self.ticket = ticket
        self.body = body
        self.chunk = chunk
        self.sent = 0
        parts = urlsplit(ticket.url)
        assert parts.scheme == "http" and parts.hostname is not None
        self._path = f"{parts.path}?{parts.query}"
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def start(self, first: int) -> None:
        self._conn.putrequest("PUT", self._path, skip_accept_encoding=True)
        for name, value in self.ticket.headers.items():
            self._conn.putheader(name, value)
        self._conn.endheaders()
        self._send(first)

    def finish(self) -> tuple[int, str]:
        while self.sent < len(self.body):
            self._send(self.chunk)
        resp = self._conn.getresponse()
        text = resp.read().decode(errors="replace")
        self._conn.close()
        return resp.status, text

    def _send(self, n: int) -> None:
        piece = self.body[self.sent : self.sent + n]
        self._conn.send(piece)
        self.sent += len(piece)
