"""The causal buffer (DESIGN.md §3): one step's decisions, without I/O.

Given the facts of one pipeline step and what the store (or the handled
cache) knows of them and of their predecessors, a :class:`CausalBuffer` says

- which facts are **duplicates** (known already, or twice in the step);
- which are **ready**, in causal order: a fact enters :attr:`~CausalBuffer.ready`
  only after each of its predecessors is handled or entered it before;
- which **park**, and on which predecessors (:meth:`~CausalBuffer.parked`).

The pipeline does the I/O around it: it asks the store which parked facts wait
on what became ready and offers them (:meth:`~CausalBuffer.release`), claims and
dispatches the ready facts, and tells the buffer which of them could not be
handled (:meth:`~CausalBuffer.block`); a ready fact that depends on a blocked one
parks on it instead (:meth:`~CausalBuffer.admit`). Nothing here awaits, so every
decision can be checked in isolation (tests/unit/test_causal.py).

One buffer serves one step: create it, :meth:`~CausalBuffer.add` the facts,
release until the frontier is empty, admit the ready facts in order, then read
:meth:`~CausalBuffer.parked` and :attr:`~CausalBuffer.still_parked`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from factbus.fact import Fact, FactRef, ref_of
from factbus.store.base import FactState, ParkedFact

__all__ = ["CausalBuffer"]


class CausalBuffer:
    """Sorts one step's facts into duplicates, ready (causal order) and parked.

    ``known`` maps identities to what is known of them (at least the step's
    facts and their predecessors; an identity absent is unknown). ``from_store``
    are the identities of facts that come out of the store's wait list (a sweep,
    a follow-up): they are parked there already, so being known as parked does
    not make them duplicates, and they are not parked a second time.
    """

    __slots__ = (
        "_from_store",
        "_known",
        "_new_parked",
        "_ready_refs",
        "_waiting_here",
        "blocked",
        "duplicates",
        "ready",
        "released",
        "still_parked",
    )

    def __init__(
        self, known: Mapping[FactRef, FactState], *, from_store: Iterable[FactRef] = ()
    ) -> None:
        self._known = known
        self._from_store: set[FactRef] = set(from_store)
        self.ready: list[Fact] = []
        """Facts that may be dispatched, each after its predecessors."""
        self._ready_refs: set[FactRef] = set()
        self._new_parked: dict[FactRef, ParkedFact] = {}
        self._waiting_here: dict[FactRef, list[FactRef]] = {}
        """Predecessor -> facts of this step parked on it."""
        self.blocked: set[FactRef] = set()
        """Refs blocked in this step (read only: :meth:`block` adds to it)."""
        self.duplicates = 0
        """Facts of the step recognised as duplicates."""
        self.released = 0
        """Parked facts (of this step or of the store) that became ready."""
        self.still_parked: list[ParkedFact] = []
        """Facts from the store that stay parked because a predecessor is blocked."""

    def _handled(self, ref: FactRef) -> bool:
        return self._known.get(ref) is FactState.HANDLED

    def _satisfied(self, ref: FactRef) -> bool:
        return ref in self._ready_refs or self._handled(ref)

    def add(self, facts: Iterable[Fact]) -> list[FactRef]:
        """Sort ``facts`` (in the order given); return the refs that became ready.

        The returned refs are the first frontier for :meth:`release`.
        """
        facts = facts if type(facts) is list else list(facts)
        if not self._ready_refs and not self._new_parked and not self._from_store:
            quick = self._add_ready(facts)
            if quick is not None:
                return quick
        added: list[FactRef] = []
        known, ready_refs, new_parked = self._known, self._ready_refs, self._new_parked
        for fact in facts:
            ref = fact.ref
            if (
                ref in ready_refs
                or ref in new_parked
                or (ref in known and ref not in self._from_store)
            ):
                self.duplicates += 1
                continue
            missing = [p for p in fact.predecessor_refs() if not self._satisfied(p)]
            if missing:
                new_parked[ref] = ParkedFact(fact, frozenset(missing))
                for pred in missing:
                    self._waiting_here.setdefault(pred, []).append(ref)
            else:
                self._make_ready(fact)
                added.append(ref)
        return added

    def _add_ready(self, facts: list[Fact]) -> list[FactRef] | None:
        """The whole step at once when every fact is new, none is there twice and
        each predecessor is handled or comes earlier in the step (the usual
        step): all are ready, in the order given. ``None``, nothing changed:
        :meth:`add` sorts them one by one."""
        refs = list(map(ref_of, facts))
        unique = set(refs)
        known = self._known
        if len(unique) != len(refs) or not unique.isdisjoint(known):
            return None
        handled = FactState.HANDLED
        position: dict[FactRef, int] | None = None
        for i, fact in enumerate(facts):
            if not fact._predecessors:
                continue
            for pred in fact.predecessor_refs():
                if known.get(pred) is handled:
                    continue
                if position is None:
                    position = dict(zip(refs, range(len(refs)), strict=True))
                if position.get(pred, i) >= i:
                    return None
        self.ready.extend(facts)
        self._ready_refs = unique
        return refs

    def _make_ready(self, fact: Fact) -> None:
        self.ready.append(fact)
        self._ready_refs.add(fact.ref)

    def release(self, frontier: Sequence[FactRef], stored: Iterable[ParkedFact]) -> list[FactRef]:
        """Hand on what waited on ``frontier`` (refs that just became ready).

        Candidates are this step's facts parked on the frontier and ``stored``:
        the store's parked facts waiting on it (empty when the store holds none).
        A candidate whose every missing predecessor is now ready or handled
        becomes ready; the refs that did are returned: the next frontier. Call
        again until it is empty.
        """
        waiting_here = self._waiting_here
        candidates = (
            [
                self._new_parked[w]
                for r in frontier
                for w in waiting_here.get(r, ())
                if w in self._new_parked
            ]
            if waiting_here
            else []
        )
        candidates.extend(stored)
        next_frontier: list[FactRef] = []
        for parked in candidates:
            ref = parked.fact.ref
            if ref in self._ready_refs:
                continue
            if all(self._satisfied(m) for m in parked.missing):
                self._make_ready(parked.fact)
                next_frontier.append(ref)
                if self._new_parked.pop(ref, None) is None:
                    self._from_store.add(ref)
                self.released += 1
        return next_frontier

    @property
    def has_from_store(self) -> bool:
        """Whether any fact of the step came out of the store's wait list."""
        return bool(self._from_store)

    def from_store(self, ref: FactRef) -> bool:
        """Whether the fact came out of the store's wait list (it is parked there)."""
        return ref in self._from_store

    def block(self, ref: FactRef) -> None:
        """A ready fact will not be handled in this step (its handlers failed, or
        another worker holds it): whatever depends on it must keep waiting."""
        self.blocked.add(ref)

    def admit(self, fact: Fact) -> bool:
        """Whether the ready ``fact`` may be dispatched now.

        No if it is blocked; no if a predecessor is blocked, and then it parks on
        those predecessors (and counts as blocked itself). Call in the order of
        :attr:`ready`, after blocking what came before.
        """
        ref = fact.ref
        blocked = self.blocked
        if ref in blocked:
            return False
        if not blocked:
            return True
        stuck = frozenset(p for p in fact.predecessor_refs() if p in blocked)
        if not stuck:
            return True
        blocked.add(ref)
        if ref in self._from_store:  # stays parked in the store
            self.still_parked.append(ParkedFact(fact, stuck))
        else:
            self._new_parked[ref] = ParkedFact(fact, stuck)
        return False

    def parked(self) -> list[ParkedFact]:
        """The facts of this step to park, each with what it misses.

        A fact parked early in the step did not list predecessors that were
        ready then; those later blocked are added to what it waits for, or it
        would be released without them.
        """
        blocked = self.blocked
        if not blocked:
            return list(self._new_parked.values())
        result: list[ParkedFact] = []
        for parked in self._new_parked.values():
            extra = {p for p in parked.fact.predecessor_refs() if p in blocked}
            if extra <= parked.missing:
                result.append(parked)
            else:
                result.append(ParkedFact(parked.fact, parked.missing | extra))
        return result
