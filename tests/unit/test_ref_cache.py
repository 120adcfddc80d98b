"""RefCache: the bounded FIFO of handled/published identities the pipeline and
the bus consult before the store."""

from __future__ import annotations

import gc

from factbus.fact import FactRef
from factbus.pipeline import RefCache


def _ref(i: int, fact_type: str = "T") -> FactRef:
    return FactRef(fact_type, f"{i:088d}")


def test_knows_what_was_added_and_nothing_else() -> None:
    cache = RefCache(10)
    cache.add_all([_ref(1), _ref(2)])
    assert _ref(1) in cache and _ref(2) in cache
    assert _ref(3) not in cache
    assert cache.known({_ref(1), _ref(3)}) == {_ref(1)}


def test_same_hash_under_another_type_is_another_identity() -> None:
    # The type is not hashed: facts of two types with the same fields and
    # predecessors have the same hash and must not be taken for each other.
    cache = RefCache(10)
    cache.add_all([_ref(1, "A")])
    assert _ref(1, "B") not in cache
    assert cache.known({_ref(1, "B")}) == set()
    cache.add_all([_ref(1, "B")])
    assert _ref(1, "A") in cache and _ref(1, "B") in cache
    assert cache.known({_ref(1, "A"), _ref(1, "B"), _ref(1, "C")}) == {
        _ref(1, "A"),
        _ref(1, "B"),
    }


def test_drops_the_oldest_beyond_capacity() -> None:
    cache = RefCache(3)
    cache.add_all([_ref(i) for i in range(5)])
    assert cache.known({_ref(i) for i in range(5)}) == {_ref(2), _ref(3), _ref(4)}


def test_the_side_table_of_other_types_is_bounded_too() -> None:
    cache = RefCache(2)
    cache.add_all([_ref(0, "A"), _ref(1, "A")])
    cache.add_all([_ref(0, "B"), _ref(1, "B")])
    cache.add_all([_ref(0, "C")])
    assert cache.known({_ref(0, "B"), _ref(1, "B"), _ref(0, "C")}) == {_ref(1, "B"), _ref(0, "C")}
    assert _ref(0, "A") in cache and _ref(1, "A") in cache


def test_adds_nothing_for_the_cyclic_collector_to_walk() -> None:
    cache = RefCache(1000)
    before = len(gc.get_objects())
    cache.add_all([_ref(i) for i in range(1000)])
    gc.collect()
    assert len(gc.get_objects()) - before < 10
