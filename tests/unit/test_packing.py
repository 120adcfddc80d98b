"""Packed envelopes (``Bus(pack=N)`` / ``FACTBUS_PACK``): up to N facts and the
size limit per envelope, chains never split, every fact handled once in causal
order; a bad fact dead-letters its whole envelope."""

from __future__ import annotations

import uuid

import pytest

from factbus import Bus, Fact
from factbus.bus import ENVELOPE_OVERHEAD, pack_chains
from factbus.config import Settings
from factbus.envelope import decode, encode
from factbus.errors import ConfigError
from factbus.testing.scenario import CausalChecker, random_dag
from factbus.transport import Message
from factbus.transport.memory import MemoryTransport


def ns() -> str:
    return f"memory://pack-{uuid.uuid4().hex[:8]}"


def test_pack_chains_respects_count_size_and_chains() -> None:
    facts = [Fact("P", {"i": i, "pad": "x" * 50}) for i in range(10)]
    chains = [[f] for f in facts]
    assert [len(e) for e in pack_chains(chains, 4, 1 << 20)] == [4, 4, 2]
    assert [len(e) for e in pack_chains(chains, 1, 1 << 20)] == [1] * 10
    one = len(facts[0].wire_bytes()) + 1
    by_size = pack_chains(chains, 100, ENVELOPE_OVERHEAD + 3 * one)
    assert [len(e) for e in by_size] == [3, 3, 3, 1]
    assert all(len(encode(e)) <= ENVELOPE_OVERHEAD + 3 * one for e in by_size)
    long_chain = [facts[0], facts[1], facts[2]]
    packed = pack_chains([[facts[5]], long_chain, [facts[6]]], 2, 1 << 20)
    assert packed == [[facts[5]], long_chain, [facts[6]]]  # a chain is never split
    assert [f for e in packed for f in e] == [facts[5], *long_chain, facts[6]]


def test_pack_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTBUS_PACK", "64")
    assert Settings.load().pack == 64
    with pytest.raises(ConfigError, match="pack"):
        Settings.load(pack=0)


async def test_packed_publish_is_handled_once_in_causal_order() -> None:
    url = ns()
    dag = random_dag(300, seed=4, shape="mixed")
    checker = CausalChecker.of(dag)
    receiver = Bus(url, "memory://", node="r")
    for fact_type in {f.type for f in dag}:
        receiver.handler(fact_type)(lambda fact: checker.record("r", fact))
    async with receiver, Bus(url, "memory://", node="p", consume=False, pack=50) as publisher:
        for start in range(0, len(dag), 120):
            await publisher.publish(*dag[start : start + 120], ancestors=False)
        await receiver.drain()
    report = checker.report(["r"])
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 0, 0)
    stats = receiver.stats
    assert stats.handled == 300 and stats.duplicates == 0
    assert stats.messages == 3 + 3 + 2  # 120 → 50+50+20, twice; 60 → 50+10
    assert stats.facts_received == 300


async def test_a_bad_fact_dead_letters_its_whole_envelope() -> None:
    url = ns()
    facts = [Fact("P", {"i": i}) for i in range(5)]
    body = encode(facts).replace(b'"i":3', b'"i":33')
    seen: list[int] = []
    bus = Bus(url, "memory://", node="r")
    bus.handler("P")(lambda f: seen.append(f.fields["i"]))
    async with bus:
        await MemoryTransport(url).publish("facts", [Message(body, facts[-1].hash)])
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
    assert seen == []  # none of the envelope's facts, good or bad, was handled
    assert len(letters) == 1 and letters[0].body == body  # kept whole, nothing lost
    assert letters[0].reason.startswith("hash-mismatch") and "facts[3]" in letters[0].reason
    assert [f.ref for f in decode(body.replace(b'"i":33', b'"i":3'))] == [f.ref for f in facts]
