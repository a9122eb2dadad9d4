"""Upload a local file through s3-outbox from a server or a script: the upload helper.

The same road as the browser's: ask for a ticket, PUT the bytes straight to storage through
presigned URLs, confirm. Above the multipart threshold the file goes in parts, several at
once (threads, 4 by default); each part is read and hashed just before it is sent (SHA-256,
signed into its URL, so storage refuses any other body), never the whole file in memory;
a failed part is retried with backoff; each finished part is reported, so an interrupted
upload resumes with only the missing parts (``Uploader.resume``). Small files take one PUT,
hashed as a stream. A progress bar shows on a terminal.

Two front ends over one core: ``LibraryApi`` calls the library in its own transactions (an
``Outbox`` and a way to get connections), ``HttpApi`` calls the reference HTTP API.

>>> with Uploader(LibraryApi(outbox, owner_id="u1", connect=pool.connection)) as up:
...     result = up.upload("scan.tiff", content_type="image/tiff")
>>> result.document_id, result.status          # "uploaded": a worker verifies it next
"""

from outbox.uploader.core import Uploader
from outbox.uploader.frontend import RemoteUpload, Started, Transient, UploadApi
from outbox.uploader.http_api import HttpApi
from outbox.uploader.library import LibraryApi
from outbox.uploader.models import Backoff, UploadResult

__all__ = [
    "Backoff",
    "HttpApi",
    "LibraryApi",
    "RemoteUpload",
    "Started",
    "Transient",
    "UploadApi",
    "UploadResult",
    "Uploader",
]
