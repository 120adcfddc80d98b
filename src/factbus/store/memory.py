"""``memory://``: a store that lives in the process, for tests and throwaway nodes.

It passes the same store suite as SQLite but forgets everything when the
process ends. Transactions are applied at commit; a savepoint is a no-op scope
(the memory store has no handler tables to roll back).

Handled and published facts are kept as ``hash -> type`` strings, not as
``Fact`` objects or :class:`~factbus.fact.FactRef` tuples (as the SQLite fact
log keeps no bodies by default): a dict of strings is invisible to the garbage
collector, so a node that handled or published millions of facts does not make
every full collection walk them, nor does each fact count as a long-lived object
towards the next one (a ``FactRef``, a ``NamedTuple``, stays tracked for good:
PROFILE.md, "Survivors"). Parked facts keep their content until handled.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from factbus.fact import Fact, FactRef, ref_of
from factbus.store.base import CommitHooks, FactState, ParkedFact, StoreBatch, check_owner
from factbus.urls import query_options


class MemoryTransaction(CommitHooks):
    """Collects batches; :class:`MemoryStore` applies them when the block exits cleanly."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[StoreBatch] = []

    @property
    def connection(self) -> Any:
        return None

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        yield

    async def claim(self, refs: Sequence[FactRef]) -> set[FactRef]:
        return set(refs)  # one node per store: nothing to contend with

    async def record(self, batch: StoreBatch) -> None:
        self.batches.append(batch)


class MemoryStore:
    """Dictionaries: handled facts, parked facts and their wait lists, published refs."""

    shared: Final = False
    """Private to its process: see :attr:`factbus.store.Store.shared`."""

    def __init__(self, url: str = "memory://") -> None:
        query_options(url, (), what="memory store")
        self.url = url
        self._handled: dict[str, str] = {}  # hash -> type, untracked by the collector
        self._handled_other: set[FactRef] = set()  # a handled hash under a second type
        self._facts: dict[FactRef, Fact] = {}  # parked facts only
        self._missing: dict[FactRef, set[FactRef]] = {}  # parked ref -> what it still misses
        self._waiting: dict[FactRef, set[FactRef]] = collections.defaultdict(
            set
        )  # missing -> parked
        self._published: dict[str, str] = {}  # hash -> type, as _handled
        self._published_other: set[FactRef] = set()  # a published hash under a second type
        self._positions: dict[str, int] = {}
        self._owner: str | None = None

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def own(self, owner: str) -> None:
        """See :meth:`factbus.store.Store.own`."""
        if self._owner is None:
            self._owner = owner
        check_owner(self.url, self._owner, owner)

    async def states(self, refs: Collection[FactRef]) -> dict[FactRef, FactState]:
        handled = self._handled
        other = self._handled_other
        parked = self._facts
        out: dict[FactRef, FactState] = {}
        for ref in refs:
            if handled.get(ref[1]) == ref[0] or (other and ref in other):
                out[ref] = FactState.HANDLED
            elif ref in parked:
                out[ref] = FactState.PARKED
        return out

    def _is_handled(self, ref: FactRef) -> bool:
        return self._handled.get(ref[1]) == ref[0] or ref in self._handled_other

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        tx = MemoryTransaction()
        yield tx
        await tx.run_before_commit()
        for batch in tx.batches:
            self._apply(batch)
        tx.run_after_commit()

    def _apply(self, batch: StoreBatch) -> None:
        for parked in batch.parked:
            ref = parked.fact.ref
            if self._is_handled(ref):
                continue
            self._facts[ref] = parked.fact
            self._missing[ref] = set(parked.missing)
            for missing in parked.missing:
                self._waiting[missing].add(ref)
        handled = batch.handled
        refs = list(map(ref_of, handled))
        index = self._handled
        for fact_type, fact_hash in refs:
            known = index.setdefault(fact_hash, fact_type)
            if known != fact_type:
                self._handled_other.add(FactRef(fact_type, fact_hash))
        if self._facts:
            for ref in refs:
                self._facts.pop(ref, None)
        if self._missing or self._waiting:
            self._unpark(refs)
        if batch.published:
            self.record_published(batch.published)
        self._positions.update(batch.positions)

    def record_published(self, refs: Collection[FactRef]) -> None:
        """Record ``refs`` as published at once, outside any transaction: a dict
        insert each, nothing to roll back or to write, and a transaction open
        meanwhile (applied at its commit) is not affected. :class:`~factbus.Bus`
        records what a publish shipped this way on a memory store instead of
        one transaction per call (docs/decisions.md, "Published refs on a
        memory store: recorded at once")."""
        published = self._published
        for fact_type, fact_hash in refs:
            known = published.setdefault(fact_hash, fact_type)
            if known != fact_type:
                self._published_other.add(FactRef(fact_type, fact_hash))

    def _unpark(self, refs: list[FactRef]) -> None:
        """Handled ``refs`` no longer wait, and no longer hold up their waiters."""
        for ref in refs:
            for missing in self._missing.pop(ref, ()):
                waiters = self._waiting.get(missing)
                if waiters is not None:
                    waiters.discard(ref)
            for waiter in self._waiting.pop(ref, ()):
                still = self._missing.get(waiter)
                if still is not None:
                    still.discard(ref)

    async def waiting_on(
        self, refs: Collection[FactRef], limit: int | None = None
    ) -> list[ParkedFact]:
        out: dict[FactRef, ParkedFact] = {}
        for ref in refs:
            for waiter in self._waiting.get(ref, ()):
                if limit is not None and len(out) >= limit:
                    return list(out.values())
                if waiter not in out:
                    out[waiter] = ParkedFact(self._facts[waiter], frozenset(self._missing[waiter]))
        return list(out.values())

    async def ready_parked(self, limit: int | None = None) -> list[Fact]:
        ready = [self._facts[ref] for ref, missing in self._missing.items() if not missing]
        return ready if limit is None else ready[:limit]

    async def parked(self, limit: int = 1000) -> list[ParkedFact]:
        return [
            ParkedFact(self._facts[ref], frozenset(missing))
            for ref, missing in list(self._missing.items())[:limit]
        ]

    async def counts(self) -> dict[str, int]:
        return {
            "handled": len(self._handled) + len(self._handled_other),
            "parked": len(self._missing),
            "published": len(self._published) + len(self._published_other),
        }

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        published, other = self._published, self._published_other
        return {ref for ref in refs if published.get(ref[1]) == ref[0] or ref in other}

    async def position(self, key: str) -> int | None:
        return self._positions.get(key)

    async def load(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        return {ref: self._facts[ref] for ref in refs if ref in self._facts}
