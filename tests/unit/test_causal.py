"""The causal buffer on its own (no store, no transport): what is a duplicate,
what is ready and in which order, what parks and on what.

The property test drives the buffer through many steps against a small model
of the store's wait list (the contract of ``Store.waiting_on`` and
``StoreTransaction.record``): whatever the arrival order, duplicates and
batch sizes, every fact is handled once and after its predecessors, and a fact
downstream of a failing one stays parked on it, never lost and never stuck.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from factbus.causal import CausalBuffer
from factbus.fact import Fact, FactRef
from factbus.store.base import FactState, ParkedFact
from factbus.testing.scenario import random_dag, shuffled_with_duplicates

HANDLED, PARKED = FactState.HANDLED, FactState.PARKED


def fact(name: str, *preds: Fact) -> Fact:
    return Fact("Test.Causal", {"name": name}, {"after": list(preds)} if preds else {})


A = fact("a")
B = fact("b", A)
C = fact("c", B)
D = fact("d", A, C)


def refs(facts: Iterable[Fact]) -> list[FactRef]:
    return [f.ref for f in facts]


def test_known_facts_and_repeats_within_the_step_are_duplicates() -> None:
    buffer = CausalBuffer({A.ref: HANDLED, B.ref: PARKED})
    ready = buffer.add([A, B, C, C, fact("x"), fact("x")])
    assert buffer.duplicates == 4  # A handled, B parked, C and x twice
    assert ready == [fact("x").ref]
    assert [(p.fact, p.missing) for p in buffer.parked()] == [(C, frozenset({B.ref}))]


def test_facts_from_the_store_are_not_duplicates_of_themselves() -> None:
    buffer = CausalBuffer({A.ref: HANDLED, B.ref: PARKED}, from_store=[B.ref])
    assert buffer.add([B]) == [B.ref]
    assert buffer.duplicates == 0
    assert buffer.from_store(B.ref) and not buffer.from_store(A.ref)
    assert buffer.parked() == []  # parked already: not parked twice


def test_a_step_in_reverse_order_is_released_in_causal_order() -> None:
    buffer = CausalBuffer({})
    frontier = buffer.add([D, C, B, A])
    assert frontier == [A.ref]
    rounds = []
    while frontier:
        frontier = buffer.release(frontier, ())
        rounds.append(frontier)
    assert rounds == [[B.ref], [C.ref], [D.ref], []]
    assert refs(buffer.ready) == refs([A, B, C, D])
    assert buffer.released == 3
    assert buffer.parked() == []
    assert not any(buffer.from_store(r) for r in refs([A, B, C, D]))


def test_stored_facts_are_released_when_all_they_miss_is_ready_or_handled() -> None:
    other = fact("other")
    waits_for_other = fact("w", B, other)
    buffer = CausalBuffer({A.ref: HANDLED})
    frontier = buffer.add([B])
    stored = [
        ParkedFact(C, frozenset({B.ref})),
        ParkedFact(waits_for_other, frozenset(refs([B, other]))),
    ]
    assert buffer.release(frontier, stored) == [C.ref]
    assert refs(buffer.ready) == refs([B, C])
    assert buffer.from_store(C.ref) and not buffer.from_store(waits_for_other.ref)
    assert buffer.released == 1


def test_a_failed_fact_keeps_its_dependants_parked_on_it() -> None:
    buffer = CausalBuffer({A.ref: HANDLED}, from_store=[C.ref])
    frontier = buffer.add([B])
    frontier = buffer.release(frontier, [ParkedFact(C, frozenset({B.ref}))])
    assert frontier == [C.ref]
    assert buffer.admit(B)
    buffer.block(B.ref)  # its handler failed
    assert not buffer.admit(C)
    assert buffer.still_parked == [ParkedFact(C, frozenset({B.ref}))]
    assert buffer.parked() == []  # C is in the store already


def test_a_fact_parked_early_in_the_step_also_waits_for_a_ready_predecessor_that_failed() -> None:
    buffer = CausalBuffer({A.ref: HANDLED})
    frontier = buffer.add([B, D])  # D misses C (B counts as ready), parks on C only
    assert frontier == [B.ref]
    assert buffer.release(frontier, ()) == []
    assert [(p.fact, p.missing) for p in buffer.parked()] == [(D, frozenset({C.ref}))]
    buffer.block(B.ref)
    # without B in its wait list, D would be released by C alone
    assert [(p.fact, p.missing) for p in buffer.parked()] == [(D, frozenset({C.ref}))]
    E = fact("e", B, C)
    buffer2 = CausalBuffer({A.ref: HANDLED})
    buffer2.add([B, E])
    buffer2.block(B.ref)
    assert [(p.fact, p.missing) for p in buffer2.parked()] == [(E, frozenset(refs([B, C])))]


def test_unclaimed_facts_are_not_admitted_and_hold_back_their_dependants() -> None:
    buffer = CausalBuffer({A.ref: HANDLED})
    frontier = buffer.add([B, C])
    while frontier:
        frontier = buffer.release(frontier, ())
    buffer.block(B.ref)  # another worker holds B
    assert [buffer.admit(f) for f in buffer.ready] == [False, False]
    assert buffer.parked() == [ParkedFact(C, frozenset({B.ref}))]


class WaitList:
    """A model of the store: states, and what each parked fact still misses."""

    def __init__(self) -> None:
        self.state: dict[FactRef, FactState] = {}
        self.missing: dict[FactRef, set[FactRef]] = {}
        self.facts: dict[FactRef, Fact] = {}

    def known(self, facts: Sequence[Fact]) -> dict[FactRef, FactState]:
        wanted = {r for f in facts for r in (f.ref, *f.predecessor_refs())}
        return {r: self.state[r] for r in wanted if r in self.state}

    def waiting_on(self, frontier: Sequence[FactRef]) -> list[ParkedFact]:
        hit = set(frontier)
        return [ParkedFact(self.facts[r], frozenset(m)) for r, m in self.missing.items() if m & hit]

    def record(self, handled: Sequence[Fact], parked: Sequence[ParkedFact]) -> None:
        for p in parked:
            ref = p.fact.ref
            if self.state.get(ref) is not HANDLED:
                self.state[ref], self.facts[ref] = PARKED, p.fact
                self.missing[ref] = set(p.missing)
        for f in handled:
            self.state[f.ref] = HANDLED
            self.missing.pop(f.ref, None)
            for still in self.missing.values():
                still.discard(f.ref)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    duplicates=st.floats(0, 1.5),
    shape=st.sampled_from(["independent", "chains", "fan-in", "mixed"]),
    batch=st.integers(1, 40),
    failing=st.floats(0, 0.5),
)
def test_any_order_handles_each_fact_once_after_its_predecessors(
    size: int, seed: int, duplicates: float, shape: str, batch: int, failing: float
) -> None:
    dag = random_dag(size, seed=seed, shape=shape)  # type: ignore[arg-type]
    order = shuffled_with_duplicates(dag, duplicates=duplicates, seed=seed)
    rng = random.Random(seed)
    failed = {f.ref for f in dag if rng.random() < failing}
    doomed = set(failed)  # a failing fact and everything downstream of it
    for f in dag:  # topological order
        if any(p in doomed for p in f.predecessor_refs()):
            doomed.add(f.ref)

    store = WaitList()
    handled: list[FactRef] = []
    for start in range(0, len(order), batch):
        step = order[start : start + batch]
        buffer = CausalBuffer(store.known(step))
        frontier = buffer.add(step)
        while frontier:
            frontier = buffer.release(frontier, store.waiting_on(frontier))
        done: list[Fact] = []
        for f in buffer.ready:
            if not buffer.admit(f):
                continue
            if f.ref in failed:
                buffer.block(f.ref)
                continue
            assert all(
                store.state.get(p) is HANDLED or p in refs(done) for p in f.predecessor_refs()
            )
            done.append(f)
        parked = buffer.parked()
        # every fact of the step is accounted for exactly once
        parked_refs = set(refs(p.fact for p in parked))
        fresh_ready = [
            f for f in buffer.ready if not buffer.from_store(f.ref) and f.ref not in parked_refs
        ]
        assert buffer.duplicates + len(fresh_ready) + len(parked) == len(step)
        assert all(p.missing for p in parked)
        store.record(done, parked)
        handled.extend(refs(done))

    assert len(handled) == len(set(handled))  # none twice
    assert set(handled) == {f.ref for f in dag} - doomed  # none lost
    # what is not handled waits, and on something not handled: nothing is stuck
    # (a failing fact that first arrived early may stay parked, missing nothing)
    assert set(store.missing) - failed == doomed - failed
    for ref, waiting in store.missing.items():
        assert ref in failed or waiting
        assert not any(store.state.get(m) is HANDLED for m in waiting)
