"""The local file being uploaded: ranges read in small chunks (for hashing, then again for
sending), so memory holds a chunk per thread, never a part or the file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from outbox.errors import FileChanged

#: Bytes read (and sent) at a time: large enough for few system calls, small enough that
#: memory stays a few MiB whatever the part size.
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Identity:
    """What says the file is still the one that was hashed: its size and modification time."""

    size: int
    mtime_ns: int


def identity_of(path: Path) -> Identity:
    st = os.stat(path)
    return Identity(size=st.st_size, mtime_ns=st.st_mtime_ns)


class LocalFile:
    """A regular file, read by range. Each read opens its own handle, so threads read
    different ranges side by side. ``check`` (called before each chunk) lets a stopped
    upload end mid-range.

    Raises:
        FileNotFoundError / IsADirectoryError / PermissionError: the path cannot be read.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise (IsADirectoryError if self.path.is_dir() else FileNotFoundError)(
                f"not a regular file: {self.path}"
            )
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.chunk_bytes = chunk_bytes
        self.identity = identity_of(self.path)

    @property
    def size(self) -> int:
        return self.identity.size

    def chunks(
        self, offset: int, length: int, check: Callable[[], None] | None = None
    ) -> Iterator[memoryview]:
        """The bytes ``offset .. offset + length`` as views of one reused buffer: each view
        is valid until the next one is asked for (a socket's sendall or a hash update uses
        it at once).

        Raises:
            FileChanged: the file ended before ``offset + length`` (it shrank).
        """
        buffer = bytearray(min(self.chunk_bytes, max(length, 1)))
        view = memoryview(buffer)
        left = length
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            while left > 0:
                if check is not None:
                    check()
                want = min(left, len(buffer))
                got = 0
                while got < want:
                    n = f.readinto(view[got:want])
                    if not n:
                        raise FileChanged(
                            f"{self.path} ended at byte {offset + length - left + got}: it"
                            f" changed since the upload started ({self.size} bytes then)",
                            path=str(self.path),
                        )
                    got += n
                left -= want
                yield view[:want]

    def sha256(self, offset: int, length: int, check: Callable[[], None] | None = None) -> str:
        """The hex SHA-256 of a range, read as a stream."""
        digest = hashlib.sha256()
        for chunk in self.chunks(offset, length, check):
            digest.update(chunk)
        return digest.hexdigest()

    def check_unchanged(self) -> None:
        """Raise ``FileChanged`` if the file's size or modification time moved since it was
        opened: parts hashed at different moments would then mix two versions of it."""
        now = identity_of(self.path)
        if now != self.identity:
            raise FileChanged(
                f"{self.path} changed during the upload (size {self.identity.size} ->"
                f" {now.size}, or a new modification time): nothing was confirmed; upload it"
                " again once it is complete",
                path=str(self.path),
            )
