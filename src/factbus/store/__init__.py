"""Stores: what a node remembers. ``memory://``, ``sqlite:///path`` (the embedded
default) and ``postgresql://`` (shared by a group), chosen by URL.

Stores register under the entry-point group ``factbus.stores``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from factbus.errors import ConfigError, MissingDriver
from factbus.store.base import (
    FactState,
    ParkedFact,
    Store,
    StoreBatch,
    StoreTransaction,
    fact_from_bytes,
    fact_to_bytes,
)

__all__ = [
    "FactState",
    "ParkedFact",
    "Store",
    "StoreBatch",
    "StoreTransaction",
    "fact_from_bytes",
    "fact_to_bytes",
    "open_store",
]

_BUILTIN = {
    "memory": ("factbus.store.memory:MemoryStore", None),
    "sqlite": ("factbus.store.sqlite:SqliteStore", None),
    "postgresql": ("factbus_postgres:PostgresStore", "postgres"),
    "postgres": ("factbus_postgres:PostgresStore", "postgres"),
}


def open_store(url: str) -> Store:
    """A new, not yet opened store for ``url``.

    :raises ConfigError: unknown scheme. :raises MissingDriver: driver not installed.
    """
    scheme = urlsplit(url).scheme
    found = [ep for ep in entry_points(group="factbus.stores") if ep.name == scheme]
    target, extra = _BUILTIN.get(scheme, (None, None))
    if found:
        target = found[0].value
    if target is None:
        raise ConfigError(
            f"no store for {scheme or url!r} (use memory://, sqlite:///path.db, postgresql://...)"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDriver(scheme, extra or scheme, exc) from exc
    store: Store = getattr(module, attr)(url)
    return store
