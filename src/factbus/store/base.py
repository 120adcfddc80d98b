"""The store contract: what a node remembers (DESIGN.md §3).

A store records which fact identities were handled (permanent dedup), parks
facts that wait for predecessors (durably, with what each misses), and
remembers which facts this node has published (so ancestors ship once).
Every write happens inside a :class:`StoreTransaction`, which is also the
transaction a transactional handler writes its own rows in: the handled mark
and the handler's effect commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import orjson
import structlog

from factbus.errors import StoreOwnedError
from factbus.fact import Fact, FactRef

log = structlog.get_logger("factbus.store")


class FactState(IntEnum):
    """What a store knows of a fact identity."""

    HANDLED = 1
    PARKED = 2


@dataclass(frozen=True, slots=True)
class ParkedFact:
    """A fact waiting for predecessors; ``missing`` are those not handled yet."""

    fact: Fact
    missing: frozenset[FactRef]


@dataclass(slots=True)
class StoreBatch:
    """Everything one pipeline step writes, applied atomically by :meth:`StoreTransaction.record`.

    ``handled``: facts whose handlers succeeded (or that have no handler); they
    are stored, marked handled, unparked, and removed from every wait list.
    ``parked``: facts to park with the predecessors they miss.
    ``published``: identities this node has published.
    ``positions``: read positions in broker logs (key -> the next offset to read),
    written with the step that settled the messages before them, so a node that
    restarts resumes exactly where its last commit left off (RabbitMQ streams).
    """

    handled: list[Fact] = field(default_factory=list)
    parked: list[ParkedFact] = field(default_factory=list)
    published: list[FactRef] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.handled or self.parked or self.published or self.positions)


class CommitHooks:
    """Callbacks a transaction runs around its commit (base of every transaction class).

    ``before_commit`` callbacks run, in registration order, inside the
    transaction after its body finished: what they write commits with it, and
    if one raises the transaction rolls back and the error propagates.
    ``after_commit`` callbacks run once the commit succeeded (never after a
    rollback); an exception in one is logged and the others still run.
    """

    __slots__ = ("_after", "_before")

    def __init__(self) -> None:
        self._before: list[Callable[[], Awaitable[None]]] = []
        self._after: list[Callable[[], None]] = []

    def before_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._before.append(callback)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._after.append(callback)

    async def run_before_commit(self) -> None:
        """Run (and forget) the before-commit callbacks; those they add run too."""
        while self._before:
            callbacks, self._before = self._before, []
            for callback in callbacks:
                await callback()

    def run_after_commit(self) -> None:
        callbacks, self._after = self._after, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed", callback=repr(callback))


class StoreTransaction(Protocol):
    """One open transaction on a store."""

    @property
    def connection(self) -> Any:
        """The driver connection the transaction runs on (``sqlite3.Connection``,
        ``asyncpg.Connection``; ``None`` for the memory store). Transactional
        handlers write through it."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested scope: if the body raises, its writes are undone and the
        exception propagates; the outer transaction goes on."""
        ...

    async def record(self, batch: StoreBatch) -> None:
        """Apply ``batch`` within this transaction."""

    def before_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` inside this transaction just before it commits (see
        :class:`CommitHooks`)."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this transaction has committed (see :class:`CommitHooks`)."""

    async def claim(self, refs: Sequence[FactRef]) -> set[FactRef]:
        """Claim ``refs`` for handling in this transaction; return those claimed.

        A store shared by several workers returns only refs that no other open
        transaction holds and that are not handled yet; the claims last until
        this transaction ends. A store of one node returns every ref.
        """
        ...


class Store(Protocol):
    """A node's memory of facts. One store per node (fan-out) or one shared by a
    group (PostgreSQL). Methods may be called from one task at a time."""

    @property
    def shared(self) -> bool:
        """True when other workers use this store at the same time (PostgreSQL): the
        bus then claims facts before handling them and sweeps parked facts when
        idle, and ``factbus worker --workers N`` accepts it. False for a store one
        node owns (memory, SQLite)."""
        ...

    async def open(self) -> None:
        """Create the schema if needed and connect. Idempotent."""

    async def aclose(self) -> None:
        """Close connections. Idempotent."""

    async def own(self, owner: str) -> None:
        """Record ``owner`` (``"group G"`` or ``"node N"``, see :func:`owner_of`)
        as the store's owner if it has none yet; the bus calls it before it
        handles anything. Idempotent for the same owner.

        :raises StoreOwnedError: another owner was recorded first.
        """

    async def states(self, refs: Collection[FactRef]) -> dict[FactRef, FactState]:
        """The state of each of ``refs`` that the store knows (unknown ones are absent)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]:
        """Open a transaction; it commits when the block exits normally and rolls
        back when it raises."""
        ...

    async def waiting_on(
        self, refs: Collection[FactRef], limit: int | None = None
    ) -> list[ParkedFact]:
        """Parked facts that wait for any of ``refs``, each once, ``missing`` as
        stored; at most ``limit`` of them (all when ``None``; which ones is up to
        the store, oldest first where it can)."""
        ...

    async def ready_parked(self, limit: int | None = None) -> list[Fact]:
        """Parked facts that no longer miss anything, oldest first (by the
        :meth:`StoreTransaction.record` that parked them; those parked by one
        record come in any order), at most
        ``limit`` (all when ``None``): left so by a release cut short into
        bounded steps, or by a crash between handling a predecessor and
        handling them. The pipeline's sweep hands them on."""
        ...

    async def parked(self, limit: int = 1000) -> list[ParkedFact]:
        """Up to ``limit`` parked facts, oldest first (as :meth:`ready_parked`),
        with what each misses."""
        ...

    async def counts(self) -> dict[str, int]:
        """``{"handled": n, "parked": m, "published": k}``."""
        ...

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        """Those of ``refs`` that this node has published, as recorded: what
        committed ``StoreBatch.published`` lists. A Bus records its published refs
        after the broker confirmed them, later while a step holds the store, so
        this lags :meth:`factbus.bus.Bus.published`, which callers should ask."""
        ...

    async def position(self, key: str) -> int | None:
        """The read position last recorded under ``key`` (``StoreBatch.positions``),
        or ``None`` when none was."""
        ...

    async def load(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        """The content of parked facts among ``refs``, and of handled ones where the
        store keeps content (SQLite with ``keep_bodies=1``; the memory store keeps
        none)."""
        ...


def fact_to_bytes(fact: Fact) -> bytes:
    """A fact's stored form: its envelope wire object."""
    return fact.wire_bytes()


def fact_from_bytes(body: bytes | memoryview) -> Fact:
    """Rebuild a stored fact (its hash is recomputed and checked)."""
    wire = orjson.loads(bytes(body))
    preds: dict[str, Any] = {}
    for role, value in wire["predecessors"].items():
        if isinstance(value, list):
            preds[role] = [FactRef(v["type"], v["hash"]) for v in value]
        else:
            preds[role] = FactRef(value["type"], value["hash"])
    fact = Fact(wire["type"], wire["fields"], preds)
    if fact.hash != wire["hash"]:
        raise ValueError(f"stored fact {wire['type']} is corrupt: hash mismatch")
    return fact


def owner_of(group: str | None, node: str) -> str:
    """The owner a consuming bus records in its store: its group in group mode (every
    worker of the group shares the store), else its node (fan-out)."""
    return f"group {group!r}" if group else f"node {node!r}"


def check_owner(store: str, recorded: str, wanted: str) -> None:
    """:raises StoreOwnedError: ``recorded`` (the store's owner) is not ``wanted``."""
    if recorded != wanted:
        raise StoreOwnedError(store, recorded, wanted)
