"""The store suite: every :class:`~factbus.store.Store` passes it.

Subclass :class:`StoreConformance` and override the ``store`` fixture to yield
an opened store on an empty database::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store(self):
            async with opened(MyStore(url)) as store:
                yield store

        @pytest.fixture
        def reopen(self):
            return reopener(lambda: MyStore(url))

``reopen`` (optional) must return a new store object on the same database;
persistence tests skip without it. :func:`opened` and :func:`reopener` serve
any test that opens a store, not only the suite's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest

from factbus.fact import Fact, FactRef
from factbus.store.base import FactState, ParkedFact, Store, StoreBatch

S = TypeVar("S", bound=Store)


@asynccontextmanager
async def opened(store: S) -> AsyncIterator[S]:
    """``store``, opened, for the block; closed when the block is left (also on an
    error). A failed ``open`` propagates and nothing is closed."""
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def reopener(make: Callable[[], Store]) -> Callable[[], Awaitable[Store]]:
    """A ``reopen`` fixture's value: each call opens and returns a new store that
    ``make`` builds (on the same database); the caller closes it."""

    async def again() -> Store:
        store = make()
        await store.open()
        return store

    return again


def _chain(n: int, tag: str = "s") -> list[Fact]:
    facts: list[Fact] = []
    for i in range(n):
        preds = {"prior": facts[-1]} if facts else {}
        facts.append(Fact("Suite.Link", {"i": i, "tag": tag}, preds))
    return facts


async def _record(store: Store, batch: StoreBatch) -> None:
    async with store.transaction() as tx:
        await tx.record(batch)


class StoreConformance:
    """The shared store tests; see the module docstring."""

    @pytest.fixture
    async def store(self) -> Store:
        raise NotImplementedError("override the store fixture (yield an opened store)")

    @pytest.fixture
    def reopen(self) -> Callable[[], Awaitable[Store]] | None:
        return None

    async def test_unknown_facts_have_no_state(self, store: Store) -> None:
        facts = _chain(3)
        assert await store.states([f.ref for f in facts]) == {}
        assert (await store.counts())["handled"] == 0

    async def test_handled_is_permanent_and_keyed_by_type_and_hash(self, store: Store) -> None:
        a, b = _chain(2)
        await _record(store, StoreBatch(handled=[a]))
        states = await store.states([a.ref, b.ref, FactRef("Other.Type", a.hash)])
        assert states == {a.ref: FactState.HANDLED}
        await _record(store, StoreBatch(handled=[a]))  # recording twice is harmless
        assert (await store.counts())["handled"] == 1

    async def test_parked_fact_is_listed_with_what_it_misses(self, store: Store) -> None:
        a, b, c = _chain(3)
        await _record(store, StoreBatch(parked=[ParkedFact(c, frozenset({b.ref}))]))
        assert await store.states([c.ref]) == {c.ref: FactState.PARKED}
        [parked] = await store.parked()
        assert parked.fact == c and parked.fact.hash == c.hash
        assert parked.missing == {b.ref}
        assert (await store.counts())["parked"] == 1
        waiting = await store.waiting_on([b.ref])
        assert [p.fact for p in waiting] == [c]
        assert await store.waiting_on([a.ref]) == []

    async def test_handling_a_predecessor_shrinks_the_wait_list(self, store: Store) -> None:
        _, b = _chain(2)
        other = Fact("Suite.Other", {"x": 1})
        joined = Fact("Suite.Join", {}, {"left": b, "right": other})
        await _record(store, StoreBatch(parked=[ParkedFact(joined, frozenset({b.ref, other.ref}))]))
        await _record(store, StoreBatch(handled=[b]))
        [still] = await store.waiting_on([other.ref])
        assert still.missing == {other.ref}
        assert await store.ready_parked() == []
        await _record(store, StoreBatch(handled=[other]))
        assert await store.ready_parked() == [joined]

    async def test_ready_parked_takes_at_most_limit_oldest_first(self, store: Store) -> None:
        # "Oldest" is by the record that parked a fact (facts parked by one record
        # are equally old and may come in any order: PostgreSQL writes a record's
        # rows sorted by hash, for its lock order), so each is parked on its own.
        root = Fact("Suite.Root", {"r": 1})
        waiting = [Fact("Suite.Leaf", {"i": i}, {"root": root}) for i in range(5)]
        for fact in reversed(waiting):  # arrival decides, not the list
            await _record(store, StoreBatch(parked=[ParkedFact(fact, frozenset({root.ref}))]))
        oldest = waiting[::-1]
        assert await store.ready_parked(3) == []
        await _record(store, StoreBatch(handled=[root]))
        assert await store.ready_parked(3) == oldest[:3]
        assert await store.ready_parked() == oldest
        await _record(store, StoreBatch(handled=oldest[:3]))
        assert await store.ready_parked(3) == oldest[3:]

    async def test_ready_parked_in_one_record_takes_at_most_limit(self, store: Store) -> None:
        root = Fact("Suite.Root", {"r": 3})
        waiting = [Fact("Suite.Leaf", {"j": i}, {"root": root}) for i in range(5)]
        await _record(
            store, StoreBatch(parked=[ParkedFact(f, frozenset({root.ref})) for f in waiting])
        )
        await _record(store, StoreBatch(handled=[root]))
        first = await store.ready_parked(3)
        assert len(first) == 3 and set(first) <= set(waiting)
        assert set(await store.ready_parked()) == set(waiting)
        await _record(store, StoreBatch(handled=first))
        assert set(await store.ready_parked(3)) == set(waiting) - set(first)

    async def test_waiting_on_takes_at_most_limit(self, store: Store) -> None:
        root = Fact("Suite.Root", {"r": 2})
        waiting = [Fact("Suite.Leaf", {"i": i}, {"root": root}) for i in range(5)]
        await _record(
            store, StoreBatch(parked=[ParkedFact(f, frozenset({root.ref})) for f in waiting])
        )
        some = await store.waiting_on([root.ref], 2)
        assert len(some) == 2 and {p.fact for p in some} <= set(waiting)
        assert {p.fact for p in await store.waiting_on([root.ref])} == set(waiting)

    async def test_handling_a_parked_fact_unparks_it(self, store: Store) -> None:
        a, b = _chain(2)
        await _record(store, StoreBatch(parked=[ParkedFact(b, frozenset({a.ref}))]))
        await _record(store, StoreBatch(handled=[a, b]))
        assert await store.states([a.ref, b.ref]) == {
            a.ref: FactState.HANDLED,
            b.ref: FactState.HANDLED,
        }
        assert await store.parked() == []
        assert await store.waiting_on([a.ref]) == []
        assert (await store.counts())["parked"] == 0

    async def test_parking_a_handled_fact_keeps_it_handled(self, store: Store) -> None:
        a, b = _chain(2)
        await _record(store, StoreBatch(handled=[b]))
        await _record(store, StoreBatch(parked=[ParkedFact(b, frozenset({a.ref}))]))
        assert await store.states([b.ref]) == {b.ref: FactState.HANDLED}

    async def test_failed_transaction_writes_nothing(self, store: Store) -> None:
        a, b = _chain(2)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.record(StoreBatch(handled=[a], parked=[ParkedFact(b, frozenset())]))
                raise RuntimeError("handler blew up")
        assert await store.states([a.ref, b.ref]) == {}

    async def test_published_refs_are_remembered(self, store: Store) -> None:
        a, b = _chain(2)
        await _record(store, StoreBatch(published=[a.ref]))
        assert await store.published([a.ref, b.ref]) == {a.ref}
        assert (await store.counts())["published"] == 1

    async def test_positions_commit_with_the_transaction(self, store: Store) -> None:
        (a,) = _chain(1)
        assert await store.position("log:t") is None
        await _record(store, StoreBatch(handled=[a], positions={"log:t": 10, "log:u": 3}))
        await _record(store, StoreBatch(positions={"log:t": 25}))
        assert (await store.position("log:t"), await store.position("log:u")) == (25, 3)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.record(StoreBatch(positions={"log:t": 99}))
                raise RuntimeError("the step failed")
        assert await store.position("log:t") == 25

    async def test_load_returns_content_with_its_hash(self, store: Store) -> None:
        root = Fact("Suite.Root", {})
        fact = Fact(
            "Suite.Rich", {"n": 1.5, "s": "été", "l": [1, {"k": None}], "b": True}, {"root": root}
        )
        await _record(store, StoreBatch(parked=[ParkedFact(fact, frozenset({root.ref}))]))
        loaded = await store.load([fact.ref])
        assert loaded[fact.ref].hash == fact.hash
        assert loaded[fact.ref].fields["l"][1]["k"] is None

    async def test_many_refs_in_one_query(self, store: Store) -> None:
        facts = [Fact("Suite.Many", {"i": i}) for i in range(2500)]
        await _record(store, StoreBatch(handled=facts[:2000]))
        states = await store.states([f.ref for f in facts])
        assert len(states) == 2000
        assert all(f.ref not in states for f in facts[2000:])

    async def test_parked_list_is_oldest_first_and_limited(self, store: Store) -> None:
        root = Fact("Suite.Root", {})
        kids = [Fact("Suite.Kid", {"i": i}, {"root": root}) for i in range(5)]
        for kid in kids:
            await _record(store, StoreBatch(parked=[ParkedFact(kid, frozenset({root.ref}))]))
        assert [p.fact for p in await store.parked(limit=3)] == kids[:3]
        assert {p.fact for p in await store.waiting_on([root.ref])} == set(kids)

    async def test_state_survives_reopen(
        self, store: Store, reopen: Callable[[], Awaitable[Store]] | None
    ) -> None:
        if reopen is None:
            pytest.skip("this store does not persist")
        a, b, c = _chain(3)
        await _record(
            store,
            StoreBatch(
                handled=[a],
                parked=[ParkedFact(c, frozenset({b.ref}))],
                published=[a.ref],
                positions={"log:t": 7},
            ),
        )
        await store.aclose()
        again = await reopen()
        try:
            assert await again.states([a.ref, c.ref]) == {
                a.ref: FactState.HANDLED,
                c.ref: FactState.PARKED,
            }
            assert [p.missing for p in await again.waiting_on([b.ref])] == [{b.ref}]
            assert await again.published([a.ref]) == {a.ref}
            assert await again.position("log:t") == 7
        finally:
            await again.aclose()
