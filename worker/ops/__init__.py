"""Operator tools: ``status``, ``events show|retry`` (status.py), ``reconcile`` and
``quota audit`` (the repairs). Each is a Python API returning plain data; ``worker.cli``
parses arguments and prints."""
