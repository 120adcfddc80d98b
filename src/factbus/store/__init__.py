"""Stores: what a node remembers. ``memory://``, ``sqlite:///path`` (the embedded
default) and ``postgresql://`` (shared by a group), chosen by URL.

Stores register under the entry-point group ``factbus.stores``.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlsplit

from factbus import plugins
from factbus.errors import ConfigError
from factbus.store.base import (
    FactState,
    ParkedFact,
    Store,
    StoreBatch,
    StoreTransaction,
    fact_from_bytes,
    fact_to_bytes,
)
from factbus.urls import redact

__all__ = [
    "FactState",
    "ParkedFact",
    "Store",
    "StoreBatch",
    "StoreTransaction",
    "fact_from_bytes",
    "fact_to_bytes",
    "open_store",
    "sql_dialect",
]

GROUP = "factbus.stores"

_BUILTIN = {
    "memory": ("factbus.store.memory:MemoryStore", None),
    "sqlite": ("factbus.store.sqlite:SqliteStore", None),
    "postgresql": ("factbus_postgres:PostgresStore", "postgres"),
    "postgres": ("factbus_postgres:PostgresStore", "postgres"),
}


_SQL_DIALECTS: Final[dict[str, Literal["sqlite", "postgresql"]]] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}


def sql_dialect(url: str) -> Literal["sqlite", "postgresql"] | None:
    """The SQL database a store URL names: ``"sqlite"`` (``sqlite:///``),
    ``"postgresql"`` (``postgresql://`` or ``postgres://``), or ``None`` for any
    other store (``memory://``, a plugin's). Reads only the scheme; whoever
    opens the database checks the rest of the URL."""
    return _SQL_DIALECTS.get(urlsplit(url).scheme)


def open_store(url: str) -> Store:
    """A new, not yet opened store for ``url``.

    :raises ConfigError: unknown scheme. :raises MissingDriver: driver not installed.
    """
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(
            f"no store for {redact(url)!r} (use memory://, sqlite:///path.db, postgresql://...)"
        )
    store: Store = plugins.load(GROUP, scheme, _BUILTIN, what="store")(url)
    return store
