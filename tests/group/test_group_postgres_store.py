"""The PostgreSQL store passes the store suite, and its claims hold across workers.

Each test gets a schema of its own (dropped afterwards), so the tests can run
against a database that holds other data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef
from factbus.store import FactState, ParkedFact, Store, StoreBatch, open_store
from factbus.testing.brokers import broker_url, drop_schema, unique, with_options
from factbus.testing.store_suite import StoreConformance, opened, reopener
from factbus_postgres import PostgresConfig, PostgresStore


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    """(base URL, store URL on a fresh schema); the schema is dropped afterwards."""
    base = broker_url("postgres")
    schema = unique("fbtest", "_")
    try:
        yield base, with_options(base, schema=schema)
    finally:
        await drop_schema(base, schema)


@pytest.fixture
async def store_url(pg_schema: tuple[str, str]) -> str:
    return pg_schema[1]


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[Store]:
        async with opened(PostgresStore(store_url)) as store:
            yield store

    @pytest.fixture
    def reopen(self, store_url: str) -> Callable[[], Awaitable[Store]]:
        return reopener(lambda: PostgresStore(store_url))


# -- configuration -------------------------------------------------------------


def test_url_options_are_parsed_and_the_rest_goes_to_the_driver() -> None:
    config = PostgresConfig.from_url(
        "postgres://u:secret@db:5433/app?schema=grp_a&prefix=fb_&pool_min=2&pool_max=8"
        "&connect_timeout=3&command_timeout=9.5&sslmode=require"
    )
    assert (config.schema, config.prefix, config.pool_min, config.pool_max) == (
        "grp_a",
        "fb_",
        2,
        8,
    )
    assert (config.connect_timeout, config.command_timeout) == (3.0, 9.5)
    assert config.dsn == "postgresql://u:secret@db:5433/app?sslmode=require"


def test_custom_plans_can_be_turned_off() -> None:
    assert PostgresConfig.from_url("postgresql://localhost/db").custom_plans is True
    off = PostgresConfig.from_url("postgresql://localhost/db?custom_plans=false&fact_cache=0")
    assert (off.custom_plans, off.fact_cache) == (False, 0)
    with pytest.raises(ConfigError, match="custom_plans"):
        PostgresConfig.from_url("postgresql://localhost/db?custom_plans=maybe")


async def test_store_connections_plan_each_statement(store_url: str) -> None:
    store = PostgresStore(store_url)
    await store.open()
    try:
        async with store.transaction() as tx:
            assert await tx.connection.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        await store.aclose()


def test_defaults() -> None:
    config = PostgresConfig.from_url("postgresql://localhost/db")
    assert (config.schema, config.prefix, config.pool_min, config.pool_max) == (
        "public",
        "factbus_",
        1,
        4,
    )


@pytest.mark.parametrize(
    "query",
    ["schema=Bad-Name", "prefix=x;drop", "pool_max=0", "pool_min=5&pool_max=2", "pool_min=x"],
)
def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(ConfigError):
        PostgresConfig.from_url(f"postgresql://u:secret@localhost/db?{query}")


def test_password_never_in_repr_or_errors() -> None:
    store = PostgresStore("postgresql://user:hunter2@localhost/db?schema=s1")
    assert "hunter2" not in repr(store)
    with pytest.raises(ConfigError) as info:
        PostgresStore("postgresql://user:hunter2@localhost/db?pool_min=x")
    assert "hunter2" not in str(info.value)


def test_open_store_returns_the_postgres_store() -> None:
    for scheme in ("postgresql", "postgres"):
        store = open_store(f"{scheme}://u:p@localhost/db")
        assert isinstance(store, PostgresStore)
        assert store.shared is True


def test_claim_keys_differ_per_store_and_fact() -> None:
    a = PostgresStore("postgresql://localhost/db?schema=one")
    b = PostgresStore("postgresql://localhost/db?schema=two")
    ref = FactRef("T", "h" * 88)
    assert a.claim_key(ref) != b.claim_key(ref)
    assert a.claim_key(ref) != a.claim_key(FactRef("U", ref.hash))
    assert -(2**63) <= a.claim_key(ref) < 2**63


# -- concurrency ---------------------------------------------------------------


async def test_many_workers_open_the_same_new_schema_at_once(store_url: str) -> None:
    stores = [PostgresStore(store_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        fact = Fact("Group.Open", {"x": 1})
        async with stores[0].transaction() as tx:
            await tx.record(StoreBatch(handled=[fact]))
        for store in stores:
            assert await store.states([fact.ref]) == {fact.ref: FactState.HANDLED}
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_a_claim_excludes_other_transactions_until_it_ends(store_url: str) -> None:
    one, two = PostgresStore(store_url), PostgresStore(store_url)
    await one.open()
    await two.open()
    a, b = Fact("Group.Claim", {"i": 1}), Fact("Group.Claim", {"i": 2})
    try:
        async with one.transaction() as tx1:
            assert await tx1.claim([a.ref]) == {a.ref}
            assert await tx1.claim([a.ref]) == {a.ref}  # re-entrant in its own transaction
            async with two.transaction() as tx2:
                assert await tx2.claim([a.ref, b.ref]) == {b.ref}
            await tx1.record(StoreBatch(handled=[a]))
        # Committed as handled: nobody claims it again.
        async with two.transaction() as tx2:
            assert await tx2.claim([a.ref, b.ref]) == {b.ref}
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_rolled_back_claim_is_free_again(store_url: str) -> None:
    one, two = PostgresStore(store_url), PostgresStore(store_url)
    await one.open()
    await two.open()
    a = Fact("Group.Claim", {"i": 3})
    try:
        with pytest.raises(RuntimeError):
            async with one.transaction() as tx1:
                assert await tx1.claim([a.ref]) == {a.ref}
                raise RuntimeError("worker step failed")
        async with two.transaction() as tx2:
            assert await tx2.claim([a.ref]) == {a.ref}
    finally:
        await one.aclose()
        await two.aclose()


async def test_claim_waits_for_nothing_and_sees_the_holders_commit(store_url: str) -> None:
    """The handled check runs after the lock: a claim granted once the holder has
    committed sees the holder's handled mark."""
    one, two = PostgresStore(store_url), PostgresStore(store_url)
    await one.open()
    await two.open()
    a = Fact("Group.Claim", {"i": 4})
    held, committed = asyncio.Event(), asyncio.Event()
    try:

        async def holder() -> None:
            async with one.transaction() as tx:
                assert await tx.claim([a.ref]) == {a.ref}
                held.set()
                await asyncio.sleep(0.2)
                await tx.record(StoreBatch(handled=[a]))
            committed.set()

        async def contender() -> list[set[FactRef]]:
            seen: list[set[FactRef]] = []
            await held.wait()
            while not committed.is_set():
                async with two.transaction() as tx:
                    seen.append(await tx.claim([a.ref]))
                await asyncio.sleep(0.01)
            async with two.transaction() as tx:
                seen.append(await tx.claim([a.ref]))
            return seen

        _, seen = await asyncio.gather(holder(), contender())
        assert all(s == set() for s in seen), seen
    finally:
        await one.aclose()
        await two.aclose()


async def test_handled_never_goes_back_to_parked_under_concurrency(store_url: str) -> None:
    stores = [PostgresStore(store_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    root = Fact("Group.Root", {})
    kids = [Fact("Group.Kid", {"i": i}, {"root": root}) for i in range(300)]
    try:

        async def park(store: PostgresStore) -> None:
            for start in range(0, len(kids), 50):
                async with store.transaction() as tx:
                    await tx.record(
                        StoreBatch(
                            parked=[ParkedFact(k, frozenset({root.ref})) for k in kids[start:][:50]]
                        )
                    )

        async def handle(store: PostgresStore) -> None:
            for start in range(0, len(kids), 30):
                async with store.transaction() as tx:
                    await tx.record(StoreBatch(handled=[root, *kids[start:][:30]]))

        await asyncio.gather(park(stores[0]), park(stores[1]), handle(stores[2]))
        states = await stores[3].states([k.ref for k in kids])
        assert set(states.values()) == {FactState.HANDLED}
        assert await stores[3].parked() == []
        assert await stores[3].waiting_on([root.ref]) == []
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_a_fact_parked_as_its_predecessor_is_handled_stays_findable(
    store_url: str,
) -> None:
    """The post-commit follow-up asks ``waiting_on(predecessor)`` after both commits:
    the wait-list row must still be there, with nothing missing."""
    store = PostgresStore(store_url)
    await store.open()
    a, b = Fact("Group.A", {}), None
    b = Fact("Group.B", {}, {"a": a})
    try:
        async with store.transaction() as tx:
            await tx.record(StoreBatch(parked=[ParkedFact(b, frozenset({a.ref}))]))
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=[a]))
        [waiting] = await store.waiting_on([a.ref])
        assert waiting.fact == b and waiting.missing == frozenset()
        assert await store.ready_parked() == [b]
    finally:
        await store.aclose()


async def test_transactional_writes_commit_with_the_handled_mark(
    store_url: str, pg_schema: tuple[str, str]
) -> None:
    store = PostgresStore(store_url)
    await store.open()
    schema = store.config.schema
    a, b = Fact("Group.Tx", {"i": 1}), Fact("Group.Tx", {"i": 2})
    try:
        async with store.transaction() as tx:
            await tx.connection.execute(f'CREATE TABLE "{schema}".effects (h text)')
        async with store.transaction() as tx:
            await tx.connection.execute(f'INSERT INTO "{schema}".effects VALUES ($1)', a.hash)
            with pytest.raises(ValueError, match="undo"):
                async with tx.savepoint():
                    await tx.connection.execute(
                        f'INSERT INTO "{schema}".effects VALUES ($1)', b.hash
                    )
                    raise ValueError("undo this attempt")
            await tx.record(StoreBatch(handled=[a]))
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.connection.execute(f'INSERT INTO "{schema}".effects VALUES ($1)', b.hash)
                await tx.record(StoreBatch(handled=[b]))
                raise RuntimeError("crash before commit")
        rows = await store.pool.fetch(f'SELECT h FROM "{schema}".effects')
        assert [r["h"] for r in rows] == [a.hash]
        assert await store.states([a.ref, b.ref]) == {a.ref: FactState.HANDLED}
    finally:
        await store.aclose()
