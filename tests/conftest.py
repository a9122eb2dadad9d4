"""Shared pytest configuration. The server fixtures (``stack_urls``, ...) are in servers.py."""

pytest_plugins = ["tests.servers"]
