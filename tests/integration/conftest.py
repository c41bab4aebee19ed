"""Fixtures shared by integration test modules (beyond tests/conftest.py)."""

from tests.integration.ray_support import ray_head  # noqa: F401 - a fixture: a Ray head on loopback
