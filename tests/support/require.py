"""Skip a test whose tool or server is missing, except under CI: there, a missing chromium,
prometheus or embedded server fails the run (a green CI must mean every test ran)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail under CI."""
    if in_ci():
        pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
    pytest.skip(reason)


def tool(name: str, hint: str) -> str:
    """The path of command ``name``, or skip (fail under CI) with ``hint`` on installing it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found ({hint})")
    return path


def missing_module(reason: str) -> None:
    """``missing`` at module level (collection): skip the module locally; fail under CI."""
    if in_ci():
        pytest.fail(f"CI must run these tests, but: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
