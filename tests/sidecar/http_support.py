"""Shared pieces of the sidecar HTTP tests: broker URLs, a fresh PostgreSQL
database per test, and sidecar configurations for the shop example's views."""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def broker_url(name: str) -> str:
    """``tests/conftest.py``'s ``broker_url`` (skips, or fails in CI, when down),
    loaded by path (``conftest`` is ambiguous for folders without ``__init__.py``)."""
    spec = importlib.util.spec_from_file_location("factbus_tests_root_conftest", _ROOT_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url: str = module.broker_url(name)
    return url


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "fbhttp") -> AsyncIterator[str]:
    """A PostgreSQL database of its own (the app's database), dropped afterwards."""
    base = broker_url("postgres")
    name = unique(prefix)
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(base)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def shop_document(
    transport: str, store: str, topic: str, node: str, *, outbox: str | None = None
) -> dict[str, Any]:
    """A parsed sidecar.toml: orders with a convergent status, hidden once cancelled."""
    sidecar: dict[str, Any] = {
        "listen": "127.0.0.1:8081",
        "table": [
            {
                "name": "customers",
                "fact": "Shop.Customer",
                "columns": {"email": "fields.email"},
            },
            {
                "name": "orders",
                "fact": "Shop.Order",
                "columns": {"number": "fields.number", "customer": "predecessors.customer"},
                "unless": ["Shop.Order.Cancelled.order"],
            },
        ],
        "property": [
            {
                "table": "orders",
                "column": "status",
                "fact": "Shop.Order.Status",
                "entity": "order",
                "value": "fields.value",
                "prior": "prior",
            }
        ],
    }
    if outbox:
        sidecar["outbox"] = outbox
    return {
        "factbus": {"transport": transport, "store": store, "topic": topic, "node": node},
        "sidecar": sidecar,
    }
