"""The memory and SQLite stores pass the shared store suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from factbus.store import Store, open_store, sql_dialect
from factbus.store.memory import MemoryStore
from factbus.store.sqlite import SqliteStore
from factbus.testing.store_suite import StoreConformance, opened, reopener


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with opened(MemoryStore()) as store:
            yield store


class TestSqliteStore(StoreConformance):
    option = ""
    """URL options of the store under test."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        async with opened(SqliteStore(f"sqlite:///{tmp_path}/node.db{self.option}")) as store:
            yield store

    @pytest.fixture
    def reopen(self, tmp_path: Path) -> Callable[[], Awaitable[Store]]:
        return reopener(lambda: SqliteStore(f"sqlite:///{tmp_path}/node.db{self.option}"))


class TestSqliteStoreCommitThread(TestSqliteStore):
    """The same with ``commit_thread=1`` (each COMMIT in the writer thread)."""

    option = "?commit_thread=1"


def test_sqlite_urls_map_to_paths() -> None:
    assert SqliteStore("sqlite:///rel/x.db").path == "rel/x.db"
    assert SqliteStore("sqlite:////abs/x.db").path == "/abs/x.db"
    assert SqliteStore("sqlite:///:memory:").path == ":memory:"


def test_open_store_picks_by_scheme() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("sqlite:///x.db"), SqliteStore)
    with pytest.raises(ValueError, match="no store for"):
        open_store("mongodb://x")


def test_sql_dialect_names_the_database_of_a_store_url() -> None:
    assert sql_dialect("sqlite:///x.db") == sql_dialect("sqlite:///:memory:") == "sqlite"
    assert sql_dialect("postgresql://u:p@h/db?schema=s") == "postgresql"
    assert sql_dialect("postgres://h/db") == "postgresql"
    for other in ("memory://", "mongodb://x", "x.db", ""):
        assert sql_dialect(other) is None, other
