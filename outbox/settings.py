"""Configuration from the environment (prefix ``S3OUTBOX_``); every field is in README."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CONTENT_TYPES = (
    "application/pdf",
    "application/zip",
    "application/json",
    "application/octet-stream",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "image/gif",
    "image/jpeg",
    "image/png",
    "image/webp",
    "text/csv",
    "text/markdown",
    "text/plain",
)


MIB = 1024 * 1024
GIB = 1024 * MIB


class Settings(BaseSettings):
    """All settings of s3-outbox. Read from ``S3OUTBOX_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="S3OUTBOX_", extra="ignore", frozen=True)

    # Servers. The defaults are the embedded dev stack's ports (`make run`).
    database_url: str = "postgresql://postgres@127.0.0.1:55432/postgres"
    redis_url: str = "redis://127.0.0.1:56379/0"
    s3_endpoint_url: str = "http://127.0.0.1:58333"
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "s3outbox-dev"
    s3_secret_access_key: SecretStr = SecretStr("s3outbox-dev-secret")
    s3_bucket: str = "s3outbox"
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    key_prefix: str = "documents/"
    # The workers' HeadObject through worker.lean_head (botocore's signer over urllib3, a
    # third of boto3's CPU per call, same answers); false: boto3's head_object.
    s3_lean_head: bool = True

    # Upload rules.
    upload_url_ttl_seconds: int = Field(900, ge=1)
    upload_url_max_ttl_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    download_url_ttl_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)
    # Every upload, single PUT or multipart; at most 5 TiB (S3's largest object).
    max_upload_bytes: int = Field(50 * GIB, ge=1, le=5 * 1024 * GIB)
    # Multipart (outbox/multipart.py): a document above this size is uploaded in parts (a
    # single PUT is at most 5 GiB on S3). Parts are multipart_part_size_bytes (>= 5 MiB,
    # S3's minimum for every part but the last), raised in whole MiB so that no upload needs
    # more than 10,000 parts. A multipart document stays pending at most
    # multipart_upload_window_seconds after its creation: no part URL reaches past that.
    multipart_threshold_bytes: int = Field(100 * MIB, ge=1, le=5 * GIB)
    multipart_part_size_bytes: int = Field(16 * MIB, ge=5 * MIB, le=5 * GIB)
    multipart_upload_window_seconds: int = Field(24 * 3600, ge=60, le=7 * 24 * 3600)
    allowed_content_types: Annotated[tuple[str, ...], NoDecode] = DEFAULT_CONTENT_TYPES
    max_filename_length: int = Field(255, ge=1, le=4096)
    default_quota_bytes: int = Field(1024 * 1024 * 1024, ge=0)

    # Workers.
    verify_deadline_seconds: float = Field(120.0, ge=0)
    verify_full_read_fallback: bool = True
    # Across owners: once a document's object is verified, a worker points it (and its owner's
    # other documents of that blob) at an existing verified blob of the same SHA-256 and size
    # and purges the duplicate object. Nothing is revealed: the owner uploaded the bytes.
    dedup_across_owners: bool = True
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    max_failures: int = Field(8, ge=1)
    redispatch_after_seconds: float = Field(300.0, gt=0)
    # Clock-skew margin between the API processes (whose clock signs an URL: its expiry is
    # the signing instant + TTL), storage (which checks it) and the database (whose clock
    # every expiry comparison uses).
    purge_grace_seconds: float = Field(5.0, ge=0)
    # The longest a PUT may take once started: storage checks a URL's expiry when a request
    # starts, so a slow upload can land this long after its URL expired. A document that left
    # a live state gets its purge re-checked after upload_expires_at + this + grace.
    max_upload_seconds: float = Field(6 * 3600.0, ge=0)
    # The bucket walk (worker/maintenance/bucket_walk.py): the sweeper lists the bucket under
    # key_prefix on a persisted rolling cursor, this many pages of this many keys per round
    # (0 pages: no walk), and queues a purge for each orphan older than the horizon.
    bucket_walk_pages_per_round: int = Field(10, ge=0, le=10_000)
    bucket_walk_page_size: int = Field(1000, ge=1, le=1000)
    # A pass (every key seen once) is overdue when the last one ended longer ago than this:
    # exported as a metric for the S3OutboxBucketWalkOverdue alert.
    bucket_walk_period_seconds: float = Field(24 * 3600.0, gt=0)
    # Raises the orphan horizon above its derived minimum (see orphan_horizon_seconds).
    orphan_min_age_seconds: float = Field(0.0, ge=0)
    relay_batch_size: int = Field(1000, ge=1, le=10_000)
    # Back-pressure: the most events dispatched and unfinished; a larger backlog waits in
    # PostgreSQL (visible as lag), not in Redis. Size it as worker processes x threads x
    # prefetch per thread x events per message (2 x 8 x 8 x 8 = 1024 by default).
    relay_max_in_flight: int = Field(1024, ge=1)
    relay_poll_seconds: float = Field(1.0, gt=0)
    # Most verify events one message may carry when the relay dispatches a backlog: a
    # message costs a worker more CPU than a verify's own database work. 1: one per event.
    relay_events_per_message: int = Field(8, ge=1, le=64)
    sweeper_interval_seconds: float = Field(30.0, gt=0)
    sweeper_batch_size: int = Field(500, ge=1)
    done_retention_seconds: float = Field(7 * 24 * 3600.0, ge=0)
    actor_time_limit_seconds: float = Field(120.0, gt=0)
    queue_name: str = "s3outbox"
    worker_pool_size: int = Field(8, ge=1)
    # Bounds on every worker, relay and sweeper statement: a lock held by a slow web request
    # (an owner's quota row) or a stuck query fails the attempt, which is retried later,
    # instead of blocking a worker thread without limit. 0 disables.
    db_lock_timeout_seconds: float = Field(10.0, ge=0)
    db_statement_timeout_seconds: float = Field(60.0, ge=0)
    worker_idle_poll_seconds: float = Field(0.05, gt=0, le=10)
    # Messages a worker process holds per thread (Dramatiq's default is 2). Its Redis
    # consumer sleeps while that buffer is full, so a small one leaves threads idle.
    worker_prefetch_per_thread: int = Field(8, ge=1, le=1000)

    # Observability.
    metrics_host: str = "127.0.0.1"
    relay_metrics_port: int = Field(9401, ge=0, le=65535)
    sweeper_metrics_port: int = Field(9402, ge=0, le=65535)
    worker_metrics_port: int = Field(9403, ge=0, le=65535)
    # The reference HTTP API (`s3-outbox api`, the Procfile's web line).
    api_port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("allowed_content_types", mode="before")
    @classmethod
    def _split_types(cls, value: object) -> object:
        # Allow a comma-separated env value as well as JSON.
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(part).strip().lower() for part in value if str(part).strip())
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not value.endswith("/"):
            value += "/"
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("key_prefix must be relative and must not contain '..'")
        return value

    @model_validator(mode="after")
    def _ttls(self) -> Settings:
        if self.upload_url_ttl_seconds > self.upload_url_max_ttl_seconds:
            raise ValueError("upload_url_ttl_seconds exceeds upload_url_max_ttl_seconds")
        if self.retry_base_seconds > self.retry_max_seconds:
            raise ValueError("retry_base_seconds exceeds retry_max_seconds")
        return self

    @property
    def orphan_horizon_seconds(self) -> float:
        """How old an object no live document owns must be before the bucket walk purges it:
        older than any in-flight upload can make it. The longest URL a document can hold
        (``upload_url_max_ttl_seconds``: a refreshed URL never reaches past its document's
        creation + that), plus the longest PUT (``max_upload_seconds``), plus the clock-skew
        margin; or ``orphan_min_age_seconds`` when that is larger."""
        derived = (
            self.upload_url_max_ttl_seconds + self.max_upload_seconds + self.purge_grace_seconds
        )
        return max(derived, self.orphan_min_age_seconds)

    @property
    def bucket_walk_cursor(self) -> str:
        """The name of the bucket walk's row in ``s3outbox.maintenance_cursors``: one per
        bucket and prefix, so a changed prefix starts a new walk from its first key."""
        return f"bucket_walk:{self.s3_bucket}/{self.key_prefix}"

    @cached_property
    def public_endpoint(self) -> str:
        """The endpoint that browsers reach storage at; URLs are signed for it."""
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    def to_env(self) -> dict[str, str]:
        """The S3OUTBOX_* environment that reproduces these settings in a child process
        (secrets included: hand it only to processes of your own)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, tuple | list):
                value = json.dumps(list(value))
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"S3OUTBOX_{name.upper()}"] = str(value)
        return env
