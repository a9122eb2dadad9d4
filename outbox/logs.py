"""Structured logging: every record carries the trace id and document id of the work at hand,
and secrets (credentials, presigned signatures) are redacted before any handler sees them."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "s3outbox_trace_id", default=None
)
_document_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "s3outbox_document_id", default=None
)

# Presigned URL signatures and credentials must never reach a log line.
_REDACTIONS = (
    (re.compile(r"(X-Amz-Signature=)[0-9a-fA-F]+"), r"\1REDACTED"),
    (re.compile(r"(X-Amz-Credential=)[^&\s\"']+"), r"\1REDACTED"),
    (re.compile(r"(X-Amz-Security-Token=)[^&\s\"']+"), r"\1REDACTED"),
    (re.compile(r"(Signature=)[0-9a-fA-F]{16,}"), r"\1REDACTED"),
    # botocore's DEBUG log of every SigV4 signature it computes, presigned URLs' included.
    (re.compile(r"(Signature:\s*)[0-9a-fA-F]{16,}"), r"\1REDACTED"),
    # user:password@ and :password@ (Redis URLs often have no user name).
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+(@)"), r"\1REDACTED\2"),
    (
        re.compile(
            r"((?:secret|password|aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", re.I
        ),
        r"\1REDACTED",
    ),
)


def redact(text: str) -> str:
    """``text`` with presigned signatures, credentials and URL passwords replaced."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def new_trace_id() -> str:
    return uuid.uuid4().hex


def current_trace_id() -> str | None:
    return _trace_id.get()


@contextlib.contextmanager
def log_context(*, trace_id: str | None = None, document_id: object = None) -> Iterator[None]:
    """Attach a trace id and document id to every log record made inside the block."""
    tokens = []
    if trace_id is not None:
        tokens.append((_trace_id, _trace_id.set(trace_id)))
    if document_id is not None:
        tokens.append((_document_id, _document_id.set(str(document_id))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``document_id`` to records and redacts secrets in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            record.trace_id = _trace_id.get()
        if getattr(record, "document_id", None) is None:
            record.document_id = _document_id.get()
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                # Extra fields bypass the message redaction: redact them here.
                payload[key] = (
                    value if isinstance(value, int | float | bool) else redact(str(value))
                )
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{key}={value}"
            for key in ("document_id", "trace_id", "event_id", "topic")
            if (value := getattr(record, key, None)) is not None
        )
        return redact(f"{line} {extras}" if extras else line)


def configure(level: str = "INFO", json_lines: bool = False) -> None:
    """Set up the root logger for an s3-outbox process (relay, sweeper, worker, CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # boto and urllib3 log request URLs at DEBUG; keep them quiet and redacted.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
