"""A PUT to a presigned URL whose body goes out when the caller says: the request line and
the signed headers at once (storage checks the URL's expiry then), the body later, piece by
piece, over a raw HTTP connection. How a slow client on a poor link behaves."""

from __future__ import annotations

import contextlib
import http.client
from urllib.parse import urlsplit

from outbox.models import UploadTicket


class SlowPut:
    """``start`` sends the request line, the signed headers and the first piece of the body;
    ``send`` one more piece; ``finish`` the rest, then returns the HTTP status and text.
    One request per instance."""

    def __init__(self, ticket: UploadTicket, body: bytes, *, pieces: int) -> None:
        assert ticket.url is not None
        self.ticket = ticket
        self.body = body
        self.piece = max(1, -(-len(body) // max(pieces, 1)))
        self.sent = 0
        parts = urlsplit(ticket.url)
        assert parts.scheme == "http" and parts.hostname is not None
        self._path = f"{parts.path}?{parts.query}"
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    @property
    def left(self) -> int:
        """Bytes of the body not sent yet."""
        return len(self.body) - self.sent

    def start(self) -> None:
        self._conn.putrequest("PUT", self._path, skip_accept_encoding=True)
        for name, value in self.ticket.headers.items():
            self._conn.putheader(name, value)
        self._conn.endheaders()
        self.send()

    def send(self) -> None:
        piece = self.body[self.sent : self.sent + self.piece]
        self._conn.send(piece)
        self.sent += len(piece)

    def finish(self) -> tuple[int, str]:
        try:
            if self.left:
                self._conn.send(self.body[self.sent :])
                self.sent = len(self.body)
            resp = self._conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")[:300]
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()
