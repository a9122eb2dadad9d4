"""Single-file settings: PostgreSQL through psycopg 3, the same database as s3-outbox.

The database comes from ``S3OUTBOX_DATABASE_URL`` (the library's own setting), so the app's
rows and the library's rows live in one database and commit in one transaction.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from outbox import Settings


def database_from_url(url: str) -> dict[str, Any]:
    """A Django DATABASES entry for a libpq URL or key=value string."""
    info = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when installed (Django 4.2+)
        "NAME": info.get("dbname", "postgres"),
        "USER": info.get("user", ""),
        "PASSWORD": info.get("password", ""),
        "HOST": info.get("host", ""),
        "PORT": str(info.get("port", "")),
        "CONN_MAX_AGE": 0,
        "ATOMIC_REQUESTS": False,  # the views open their transactions explicitly
    }


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "examples.django_app.urls"
# The example itself is an app only for its migration (migrations/0001_s3outbox.py).
INSTALLED_APPS: list[str] = ["examples.django_app"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DATABASES = {"default": database_from_url(Settings().database_url)}
