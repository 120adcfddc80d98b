"""Handling facts leaves nothing behind for the cyclic garbage collector.

Full (generation-2) collections come when enough tracked objects survived into
the oldest generation since the last one (PROFILE.md, "Survivors");
each walks every tracked object alive, tens of ms in a consumer. So a bus that
handled N facts must hold about as many tracked objects as before: no per-fact
record, cached tuple, future or cursor kept past its step. Counted, not timed.
"""

from __future__ import annotations

import gc
import uuid
from pathlib import Path

import pytest

from factbus import Bus, Fact
from factbus.envelope import decode, encode

ROUND = 500
ROUNDS = 4
BOUND = 60
"""Tracked objects a bus may hold more after ``ROUNDS * ROUND`` facts than after
one round (its caches of strings add none; a per-fact leak adds ≥ 2,000)."""


def _facts(round_: int) -> list[Fact]:
    return [Fact("Gc.Survivor", {"round": round_, "n": n, "text": "x" * 100}) for n in range(ROUND)]


async def _handle_rounds(store: str) -> int:
    """Tracked objects alive after ``ROUNDS`` rounds minus after the first (each
    round: ``ROUND`` new facts published in calls of 50 and handled)."""
    url = f"memory://gc-{uuid.uuid4().hex[:8]}"
    handled: list[int] = [0]
    bus = Bus(url, store, node="consumer")

    @bus.handler("Gc.Survivor")
    def count(fact: Fact) -> None:
        handled[0] += fact.fields["n"] >= 0

    before = 0
    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        for round_ in range(ROUNDS):
            facts = _facts(round_)
            for at in range(0, ROUND, 50):
                await publisher.publish(*facts[at : at + 50], ancestors=False)
            await bus.drain()
            del facts
            if round_ == 0:  # caches, prepared statements and imports are warm now
                gc.collect()
                before = len(gc.get_objects())
        gc.collect()
        after = len(gc.get_objects())
    assert handled[0] == ROUNDS * ROUND
    return after - before


async def test_a_bus_with_the_sqlite_store_keeps_no_tracked_object_per_fact(
    tmp_path: Path,
) -> None:
    grew = await _handle_rounds(f"sqlite:///{tmp_path / 'gc.db'}")
    assert grew < BOUND, f"{grew} more tracked objects after {(ROUNDS - 1) * ROUND} facts"


async def test_a_bus_with_the_memory_store_keeps_no_tracked_object_per_fact() -> None:
    grew = await _handle_rounds("memory://")
    assert grew < BOUND, f"{grew} more tracked objects after {(ROUNDS - 1) * ROUND} facts"


FIELD_READS = 1_500
READ_BOUND = 50
"""Tracked objects reading every fact's fields may add: a view kept per fact
adds ``FIELD_READS``."""


def _tracked_growth_reading_fields(facts: list[Fact]) -> int:
    gc.collect()
    before = len(gc.get_objects())
    total = 0
    for fact in facts:
        fields = fact.fields
        total += fields["n"] + len(fields["text"])
    del fields
    gc.collect()
    after = len(gc.get_objects())
    assert total == sum(range(len(facts))) + 100 * len(facts)
    return after - before


def test_reading_fields_keeps_no_tracked_object_per_fact() -> None:
    """Facts built here and facts decoded from an envelope (the native helper's
    when built, else Python's): reading ``fields`` of each of 1,500 facts kept
    alive leaves no tracked view behind (the view is made on each read)."""
    built = [Fact("Gc.Fields", {"n": n, "text": "x" * 100}) for n in range(FIELD_READS)]
    received = [decode(encode([fact]))[0] for fact in built]
    assert [fact.ref for fact in received] == [fact.ref for fact in built]
    for facts in (built, received):
        grew = _tracked_growth_reading_fields(facts)
        assert grew < READ_BOUND, f"{grew} more tracked objects after reading {len(facts)} facts"
    # Still read-only, nested values too.
    nested = decode(encode([Fact("Gc.Fields", {"n": 1, "inner": {"a": [1, 2]}})]))[0]
    with pytest.raises(TypeError):
        nested.fields["n"] = 2  # type: ignore[index]
    assert nested.fields["inner"]["a"] == (1, 2)
    with pytest.raises(TypeError):
        nested.fields["inner"]["a"] = ()  # type: ignore[index]


ENVELOPES = 12


async def test_a_step_keeps_no_list_per_envelope_while_it_settles() -> None:
    """The decoded per-envelope lists are freed before the step's settle, not at
    its end: objects kept to a step's end are freed when the collector's young
    count is mostly 0, and such frees go uncounted, so each kept one brings young
    collections nearer (PROFILE.md §24: on a Kafka drain, 512 lists per step
    kept to its end raised young collections from ~450 to ~520 per 100,000)."""
    url = f"memory://gc-{uuid.uuid4().hex[:8]}"
    envelope_lists: list[int] = []
    bus = Bus(url, "memory://", node="consumer", batch_size=64)

    @bus.handler("Gc.Envelope")
    def look(fact: Fact) -> None:
        # A list of this fact alone that refers to it: its envelope's decoded list
        # (the step's own lists hold all its facts, ENVELOPES of them).
        envelope_lists.append(
            sum(1 for r in gc.get_referrers(fact) if type(r) is list and len(r) == 1)
        )

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        facts = [Fact("Gc.Envelope", {"n": n}) for n in range(ENVELOPES)]
        await publisher.publish(*facts, ancestors=False)  # one envelope per fact
        await bus.drain()
    assert len(envelope_lists) == ENVELOPES
    assert envelope_lists == [0] * ENVELOPES, envelope_lists
