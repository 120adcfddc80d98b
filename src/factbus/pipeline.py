"""The receive pipeline: verify -> dedup -> causal buffer -> dispatch -> record -> ack.

One :meth:`Pipeline.step` takes a batch of deliveries (a
:class:`~factbus.transport.DeliveryBatch`: the bodies as one list, one ack for
the batch) and, in one store transaction, settles every fact in them: each is
handled (its handlers ran and it is recorded as handled), recognised as a
duplicate, parked (durably, with the predecessors it misses), or dead-lettered
(its handlers failed; its dependants stay parked). Only then is the batch
acked. A body that is not a valid envelope is taken out of the batch as a
delivery of its own, dead-lettered with its reason and acked before that; no
other record gets a delivery object. A crash at any instant therefore loses
nothing: unacked deliveries come again and dedup absorbs what was already
recorded (DESIGN.md §4).

Causal order: a fact is dispatched only when each of its predecessors is
handled on this node. Parked facts live in the store, not in memory; the only
facts in memory are those of the current step, so memory is bounded by the
batch size and the envelope size limit whatever number of facts wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import attrgetter
from typing import Any

import structlog

from factbus.causal import CausalBuffer
from factbus.dispatcher import Dispatcher, Handler, HandlerFailed
from factbus.envelope import CodecLimits, decode_each, encode
from factbus.errors import EnvelopeError
from factbus.fact import Fact, FactRef, predecessors_of, ref_of
from factbus.headers import HEADER_DEAD_LETTER_REASON
from factbus.observer import PipelineObserver
from factbus.store.base import FactState, ParkedFact, Store, StoreBatch
from factbus.transport.base import (
    Delivery,
    DeliveryBatch,
    DeliveryList,
    Transport,
    ack_all,
)

log = structlog.get_logger("factbus.pipeline")

_body = attrgetter("body")


@dataclass
class PipelineStats:
    """Counters since the bus started (plain ints: cheap to update per fact)."""

    messages: int = 0
    """Deliveries taken from the transport."""
    facts_received: int = 0
    handled: int = 0
    duplicates: int = 0
    parked: int = 0
    """Facts parked (cumulative); see :attr:`waiting` for those still waiting."""
    released: int = 0
    """Parked facts later handed on because their predecessors arrived."""
    rejected: int = 0
    """Envelopes dead-lettered as malformed, tampered, oversized, ..."""
    failed: int = 0
    """Facts dead-lettered because a handler failed on every attempt."""
    waiting: int = 0
    """Facts parked in the store right now."""
    publish_record_failures: int = 0
    """Failed attempts to record published refs in the store after the broker
    confirmed them (the publish succeeded; the refs wait for the next attempt)."""
    steps: int = 0
    last_step_at: float = field(default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "last_step_at"}


class RefCache:
    """A bounded FIFO of identities (handled, published): spares store look-ups.

    Held as plain strings, hash -> type, so the cache adds no object the cyclic
    garbage collector walks (a dict of strings is untracked): 65,536
    :class:`FactRef` tuples, tracked one by one, made every full collection of
    a busy process ~15 ms longer. A hash held under another type (facts of
    several types with the same fields and predecessors: the type is not
    hashed) goes to a small side table of refs, bounded alike.
    """

    __slots__ = ("_capacity", "_others", "_types")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._types: dict[str, str] = {}
        self._others: dict[FactRef, None] = {}

    def __contains__(self, ref: FactRef) -> bool:
        return self._types.get(ref[1]) == ref[0] or ref in self._others

    def known(self, refs: set[FactRef]) -> set[FactRef]:
        """Those of ``refs`` in the cache."""
        get = self._types.get
        if self._others:
            others = self._others
            return {ref for ref in refs if get(ref[1]) == ref[0] or ref in others}
        return {ref for ref in refs if get(ref[1]) == ref[0]}

    def add_all(self, refs: Iterable[FactRef]) -> None:
        types = self._types
        put = types.setdefault
        for fact_type, fact_hash in refs:
            held = put(fact_hash, fact_type)
            if held is not fact_type and held != fact_type:
                self._others[FactRef(fact_type, fact_hash)] = None
        _trim(types, self._capacity)
        if self._others:
            _trim(self._others, self._capacity)


def _trim(entries: dict[Any, Any], capacity: int) -> None:
    """Drop the oldest entries beyond ``capacity``: O(excess), not O(capacity)."""
    excess = len(entries) - capacity
    if excess > 0:
        for key in list(islice(entries, excess)):
            del entries[key]


class Pipeline:
    """Settles batches of deliveries for one bus (see the module docstring)."""

    def __init__(
        self,
        *,
        topic: str,
        transport: Transport,
        store: Store,
        dispatcher: Dispatcher,
        limits: CodecLimits,
        handled_cache: int = 65536,
        shared_store: bool = False,
        store_lock: asyncio.Lock | None = None,
        release_batch: int = 512,
    ) -> None:
        self.topic = topic
        self.transport = transport
        self.store = store
        self.dispatcher = dispatcher
        self.limits = limits
        self.stats = PipelineStats()
        self._cache = RefCache(handled_cache)
        self._store_lock = store_lock or asyncio.Lock()
        self.release_batch = release_batch
        """About how many facts one transaction hands on: a release of parked
        facts goes on in further transactions of about this many (see
        :meth:`sweep`), so a large backlog is never held in memory at once."""
        self.pending_published: list[FactRef] = []
        """Published refs not yet written; recorded with the next transaction and
        removed only once it committed (:meth:`factbus.bus.Bus.published` reads them)."""
        # With a store of its own, the node knows whether anything is parked and
        # skips the wait-list query when nothing is; a shared store may be
        # parked into by other workers at any time.
        self.shared_store = shared_store
        self.position_key: str | None = None
        """Set when deliveries come from a log read at a position the node keeps
        (:class:`~factbus.transport.LogReader`): each step records the position
        after its last delivery under this key, in the step's own transaction."""
        self.observer: PipelineObserver | None = None
        """Sees each decoded and each rejected delivery (metrics, tracing); see
        :mod:`factbus.observer`. ``None``: one test per delivery, nothing else."""

    async def recover(self) -> None:
        """After a restart: learn how many facts wait, and hand on those left ready
        by a crash between a predecessor's commit and their own."""
        counts = await self.store.counts()
        self.stats.waiting = counts["parked"]
        await self.sweep()

    async def step(self, batch: DeliveryBatch | Sequence[Delivery]) -> None:
        """Settle ``batch`` and ack it (see the module docstring). A sequence of
        deliveries is settled as a :class:`~factbus.transport.DeliveryList`."""
        if not isinstance(batch, DeliveryBatch):
            batch = DeliveryList(batch)
        self.stats.messages += len(batch)
        positions = self._positions(batch)
        if self.observer is not None:
            # The observer reads each record's headers: the per-delivery path.
            facts, accepted = await self._decode(batch.deliveries())
            self.stats.facts_received += len(facts)
            await self._settle(accepted, facts, from_store=(), positions=positions)
            return
        decoded, errors = decode_each(batch.bodies, self.limits)
        for i, error in errors.items():
            await self._reject(batch.delivery(i), error)
        facts = list(chain.from_iterable(decoded))
        # Freed before the settle's awaits, not at the step's end: one list per
        # envelope, freed while the collector's young count is still high, keeps
        # its count honest (frees when it is 0 are not counted, so objects kept
        # to the end of a step bring more collections: benchmarks/studies/PROFILE.md §24).
        del decoded, errors
        self.stats.facts_received += len(facts)
        await self._settle(batch, facts, from_store=(), positions=positions)

    def _positions(self, batch: DeliveryBatch) -> dict[str, int]:
        """The log position to record with this step (none unless read from a log)."""
        if self.position_key is None:
            return {}
        at = batch.position
        return {self.position_key: at} if at is not None else {}

    async def _decode(self, deliveries: Sequence[Delivery]) -> tuple[list[Fact], list[Delivery]]:
        """The facts of the well-formed ``deliveries`` (handed out: each is this
        step's to settle); the others are dead-lettered and acked."""
        decoded, errors = decode_each(map(_body, deliveries), self.limits)
        observer = self.observer
        facts: list[Fact] = []
        accepted: list[Delivery] = []
        for i, (delivery, each) in enumerate(zip(deliveries, decoded, strict=True)):
            error = errors.get(i)
            if error is not None:
                await self._reject(delivery, error)
                continue
            if observer is not None:
                observer.received(delivery, each)
            facts += each
            accepted.append(delivery)
        return facts, accepted

    async def ingest(self, facts: list[Fact], positions: dict[str, int]) -> None:
        """Settle verified ``facts`` that came other than in a delivery (catch-up
        from a peer) exactly as a step settles received ones, recording
        ``positions`` in the same transaction. Not concurrently with :meth:`step`:
        the bus calls it before its consumer starts."""
        self.stats.facts_received += len(facts)
        await self._settle([], facts, from_store=set(), positions=positions)

    async def _reject(self, delivery: Delivery, error: EnvelopeError) -> None:
        self.stats.rejected += 1
        if self.observer is not None:
            self.observer.rejected(delivery, error)
        log.warning("envelope rejected", topic=self.topic, reason=error.reason)
        await self.transport.dead_letter(
            self.topic, delivery.body, dict(delivery.headers), error.reason
        )
        await delivery.ack()

    async def _settle(
        self,
        deliveries: DeliveryBatch | Sequence[Delivery],
        facts: list[Fact],
        *,
        from_store: Iterable[FactRef],
        positions: dict[str, int] | None = None,
    ) -> None:
        """Sort ``facts`` causally, dispatch and record what is ready, park the
        rest, all in one transaction; then ack ``deliveries`` (a batch: what it
        did not hand out; a sequence: each). What the step
        releases beyond :attr:`release_batch` facts is handed on afterwards, in
        further transactions (:meth:`sweep`)."""
        buffer, handled, parked, cut = await self._round(facts, from_store, positions)
        if isinstance(deliveries, DeliveryBatch):
            await deliveries.ack()
        else:
            await ack_all(deliveries)
        if self.shared_store:
            await self._follow_up(handled, [*parked, *buffer.still_parked])
        if cut:
            await self.sweep()

    async def _round(
        self,
        facts: list[Fact],
        from_store: Iterable[FactRef],
        positions: dict[str, int] | None,
    ) -> tuple[CausalBuffer, list[Fact], list[ParkedFact], bool]:
        """One transaction: settle ``facts`` and release what waited on them until
        about :attr:`release_batch` facts are ready; dead-letter what failed once
        it committed. Returns the buffer, what was handled and parked, and whether
        the release was cut short (then facts the store holds parked no longer
        miss anything: :meth:`sweep` hands them on)."""
        buffer = CausalBuffer(await self._states(facts), from_store=from_store)
        frontier = buffer.add(facts)
        limit = self.release_batch
        cut = False
        while frontier and len(buffer.ready) < limit:
            if not self._may_wait():
                frontier = buffer.release(frontier, ())
                continue
            # At most one batch of waiters: a fact many others wait on (a root of
            # thousands) must not load them all. Those not read now lose that wait
            # with this commit and are swept afterwards.
            stored = await self.store.waiting_on(frontier, limit)
            frontier = buffer.release(frontier, stored)
            if len(stored) >= limit:
                cut = True
                break
        handled, dead, parked = await self._commit(buffer, positions)
        self._count(buffer, handled, dead, parked)
        # After the commit, before the acks: a crash in between re-delivers, and
        # the failure was not recorded, so the fact fails and is dead-lettered again.
        await self._dead_letter_facts(dead)
        # Refs left on the frontier matter only if something may wait on them.
        return buffer, handled, parked, cut or (bool(frontier) and self._may_wait())

    def _may_wait(self) -> bool:
        """Whether the store may hold parked facts (a shared one always may)."""
        return self.shared_store or self.stats.waiting > 0

    async def _commit(
        self, buffer: CausalBuffer, positions: dict[str, int] | None
    ) -> tuple[list[Fact], list[tuple[Fact, str]], list[ParkedFact]]:
        """Claim (shared store), dispatch in causal order, and record handled,
        parked and published facts in one transaction; return what failed, to be
        dead-lettered once the transaction is over (no broker call happens while
        it is open: it holds SQLite's write lock or PostgreSQL claims)."""
        handled: list[Fact] = []
        dead: list[tuple[Fact, str]] = []
        ready = buffer.ready
        async with self._store_lock, self.store.transaction() as tx:
            if self.shared_store and ready:
                # Another worker may be handling some of these right now: take only
                # what this transaction could claim; the rest counts as blocked.
                claimed = await tx.claim([f.ref for f in ready])
                for fact in ready:
                    if fact.ref not in claimed:
                        buffer.block(fact.ref)
            dispatcher = self.dispatcher
            blocked = buffer.blocked  # a live view: block() adds to it
            plain: dict[str, tuple[tuple[int, Handler], ...] | None] = {}
            done = handled.append
            with dispatcher.bound(tx):
                for fact in ready:
                    if blocked and not buffer.admit(fact):
                        continue
                    # Plain sync handlers are called here: no coroutine per fact.
                    fact_type = fact.type
                    try:
                        funcs = plain[fact_type]
                    except KeyError:
                        found = dispatcher.plain_handlers(fact_type)
                        funcs = plain[fact_type] = (
                            None if found is None else tuple(enumerate(found))
                        )
                    try:
                        if funcs is None:
                            await dispatcher.dispatch(fact, tx)
                        else:
                            for index, func in funcs:
                                try:
                                    func(fact)
                                except Exception as error:
                                    await dispatcher.resume(fact, tx, index, error)
                                    break
                    except HandlerFailed as failure:
                        buffer.block(fact.ref)
                        dead.append((fact, failure.reason))
                        continue
                    done(fact)
            parked = buffer.parked()
            published = self.pending_published[:]
            await tx.record(
                StoreBatch(
                    handled=handled,
                    parked=parked,
                    published=published,
                    positions=positions or {},
                )
            )
        del self.pending_published[: len(published)]
        return handled, dead, parked

    def _count(
        self,
        buffer: CausalBuffer,
        handled: list[Fact],
        dead: list[tuple[Fact, str]],
        parked: list[ParkedFact],
    ) -> None:
        stats = self.stats
        self._cache.add_all(map(ref_of, handled))
        stats.duplicates += buffer.duplicates
        stats.released += buffer.released
        stats.handled += len(handled)
        stats.failed += len(dead)
        stats.parked += len(parked)
        released_from_store = (
            sum(1 for f in handled if buffer.from_store(f.ref)) if buffer.has_from_store else 0
        )
        stats.waiting += len(parked) - released_from_store
        stats.steps += 1
        stats.last_step_at = time.monotonic()

    async def _follow_up(self, handled: list[Fact], parked: list[ParkedFact]) -> None:
        """Close the race between workers sharing a store.

        A worker that parks a fact and a worker that handles its predecessor may
        each commit before seeing the other's write. After committing, each
        looks again: the handler for facts now waiting on what it handled, the
        parker for predecessors now handled. Whichever looks last finds the
        fact ready; claims keep a fact from being handled twice.
        """
        again: dict[FactRef, Fact] = {}
        if handled:
            for waiting in await self.store.waiting_on([f.ref for f in handled]):
                again[waiting.fact.ref] = waiting.fact
        if parked:
            preds = {m for p in parked for m in p.missing}
            states = await self.store.states(preds)
            for p in parked:
                if all(states.get(m) is FactState.HANDLED for m in p.missing):
                    again[p.fact.ref] = p.fact
        if again:
            await self._settle([], list(again.values()), from_store=set(again))

    async def sweep(self) -> None:
        """Hand on parked facts that no longer miss anything, about
        :attr:`release_batch` per transaction, until none is left: the rest of
        a release cut short, facts left ready by a crash (recovery), and a
        shared store's safety net for a worker that died between claim and
        commit. A fact that cannot be handled now (its handlers failed, another
        worker holds it) is not offered again in the same sweep."""
        given_up: set[FactRef] = set()
        while True:
            batch = await self.store.ready_parked(self.release_batch + len(given_up))
            ready = [fact for fact in batch if fact.ref not in given_up]
            if not ready:
                return
            buffer, handled, parked, _ = await self._round(ready, {f.ref for f in ready}, None)
            done = {fact.ref for fact in handled}
            given_up.update(fact.ref for fact in ready if fact.ref not in done)
            if self.shared_store:
                await self._follow_up(handled, [*parked, *buffer.still_parked])

    async def _states(self, facts: Collection[Fact]) -> dict[FactRef, FactState]:
        """The state of every fact of the step and of their predecessors: the
        handled cache first, the store for the rest (set operations, one query)."""
        refs = set(map(ref_of, facts))
        refs |= predecessors_of(facts)
        cached = self._cache.known(refs)
        known: dict[FactRef, FactState] = dict.fromkeys(cached, FactState.HANDLED)
        wanted = refs - cached
        if wanted:
            known.update(await self.store.states(wanted))
        return known

    async def _dead_letter_facts(self, dead: Sequence[tuple[Fact, str]]) -> None:
        """Dead-letter the facts whose handlers failed in one step: one envelope per
        distinct reason (split to stay under the envelope size limit), each with
        the reason header."""
        if not dead:
            return
        by_reason: dict[str, list[Fact]] = {}
        for fact, reason in dead:
            log.error("fact dead-lettered", topic=self.topic, fact=str(fact.ref), reason=reason)
            by_reason.setdefault(reason, []).append(fact)
        for reason, facts in by_reason.items():
            for body in self._envelopes(facts):
                await self.transport.dead_letter(
                    self.topic, body, {HEADER_DEAD_LETTER_REASON: reason}, reason
                )

    def _envelopes(self, facts: list[Fact]) -> Iterator[bytes]:
        """``facts`` (in causal order) in envelopes of at most ``limits.max_bytes``
        (a single fact larger than that goes alone: it arrived in one)."""
        budget = self.limits.max_bytes - 64
        chunk: list[Fact] = []
        size = 0
        for fact in facts:
            length = len(fact.wire_bytes()) + 1
            if chunk and size + length > budget:
                yield encode(chunk)
                chunk, size = [], 0
            chunk.append(fact)
            size += length
        if chunk:
            yield encode(chunk)
