"""``create_app()``: the reference HTTP API plus the upload page, ready for uvicorn."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from outbox.settings import Settings
from outbox.webapp.backend import Backend
from outbox.webapp.routes import OwnerDependency, create_router

STATIC_DIR = Path(__file__).resolve().parent / "static"


def storage_origins(settings: Settings) -> list[str]:
    """The origins a browser uploads to and downloads from (for the page's CSP)."""
    parts = urlsplit(settings.public_endpoint)
    origins = [f"{parts.scheme}://{parts.netloc}"]
    if settings.s3_addressing_style != "path":
        origins.append(f"{parts.scheme}://*.{parts.netloc}")  # bucket.host (virtual style)
    return origins


def page_headers(settings: Settings) -> dict[str, str]:
    """Security headers for the upload page: scripts only from here, uploads only to here
    and to storage."""
    csp = "; ".join(
        [
            "default-src 'self'",
            f"connect-src 'self' {' '.join(storage_origins(settings))}",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def create_app(
    settings: Settings | None = None,
    owner_dependency: OwnerDependency | None = None,
    *,
    backend: Backend | None = None,
    page: bool = True,
) -> FastAPI:
    """The API (see ``create_router``) and, with ``page``, the upload page at ``/``.

    ``settings`` defaults to the ``S3OUTBOX_*`` environment; ``backend`` lets several apps (or
    tests) share one pool. The connection pool is opened in the app's lifespan.
    """
    be = backend or Backend(settings)
    app = FastAPI(
        title="s3-outbox reference API",
        version="0.1.0",
        description=(
            "Uploads straight to S3-compatible storage through presigned URLs; rows and "
            "outbox events in PostgreSQL. The owner comes from a pluggable dependency; the "
            "default demo one trusts the `X-Owner-Id` header."
        ),
    )
    app.include_router(create_router(be, owner_dependency=owner_dependency))
    if page:
        headers = page_headers(be.settings)

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", headers=headers)

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
