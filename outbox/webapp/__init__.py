"""A reference HTTP API and upload page over the library (FastAPI).

Needs the optional extra: ``pip install 's3-outbox[api]'``. Nothing else in s3-outbox imports
this package.

- ``create_app(settings=None, owner_dependency=None)``: a FastAPI app with the API and the
  upload page at ``/``; run it with ``s3-outbox api`` or any ASGI server.
- ``create_router(backend, owner_dependency=...)``: only the API, to include in your own app.
- ``header_owner``: the default *demo* owner dependency (trusts ``X-Owner-Id``).
"""

from outbox.webapp.app import create_app
from outbox.webapp.backend import Backend
from outbox.webapp.routes import OutboxRoute, OwnerDependency, create_router, header_owner

__all__ = [
    "Backend",
    "OutboxRoute",
    "OwnerDependency",
    "create_app",
    "create_router",
    "header_owner",
]
