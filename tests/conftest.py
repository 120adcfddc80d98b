"""Shared fixtures. Broker URLs come from FACTBUS_TEST_* variables (see
scripts/brokers.sh env); in CI (FACTBUS_CI=1) a broker test that cannot reach its
broker fails instead of skipping."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

DEFAULT_URLS = {
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "kafka://127.0.0.1:9092",
    "redis": "kombu+redis://127.0.0.1:6379/0",
    "kombu_amqp": "kombu+amqp://guest:guest@127.0.0.1:5672//",
    "postgres": "postgresql://factbus:factbus@127.0.0.1:5432/factbus",
}


def broker_url(name: str) -> str:
    """The URL of a test broker; skips (or, in CI, fails) when it does not answer."""
    url = os.environ.get(f"FACTBUS_TEST_{name.upper()}_URL", DEFAULT_URLS[name])
    parts = urlsplit(url.split(",")[0])
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=2):
            pass
    except OSError as error:
        message = f"{name} broker at {host}:{port} does not answer ({error}); run `make brokers`"
        if os.environ.get("FACTBUS_CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url
