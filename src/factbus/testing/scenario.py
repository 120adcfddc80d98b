"""Fact graphs, delivery orders and a checker: the scenario the guarantee is tested on.

``random_dag`` builds a causal graph of facts; ``shuffled_with_duplicates``
turns it into a hostile delivery order; :class:`CausalChecker` classifies what
each node handled (once, lost, duplicated, out of causal order); and
:func:`run_convergence` runs the whole thing over a real transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from factbus.fact import Fact, FactRef

Shape = Literal["independent", "chains", "fan-in", "mixed"]


def random_dag(
    count: int, *, seed: int = 0, shape: Shape = "mixed", payload: int = 0
) -> list[Fact]:
    """``count`` facts in topological order.

    ``independent``: no predecessors. ``chains``: each fact follows the one
    before it in one of a few chains. ``fan-in``: facts name up to five earlier
    facts. ``mixed``: a bit of everything. ``payload`` adds that many bytes of
    text to each fact.
    """
    rng = random.Random(seed)
    facts: list[Fact] = []
    pad = "x" * payload
    chain_heads: list[Fact] = []
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    for i in range(count):
        fields = {"n": i, "run": run, "label": f"fact {i}", "weight": round(rng.random() * 100, 3)}
        if pad:
            fields["pad"] = pad
        preds: dict[str, Fact | list[Fact]] = {}
        kind = (
            shape if shape != "mixed" else rng.choice(["independent", "chains", "fan-in", "fan-in"])
        )
        if facts and kind == "chains":
            lane = i % 8
            if lane < len(chain_heads):
                preds["prior"] = chain_heads[lane]
        elif facts and kind == "fan-in":
            picks = rng.sample(facts[-200:], k=min(len(facts[-200:]), rng.randint(1, 5)))
            preds["parents"] = picks
        fact = Fact(f"Scenario.{kind.title().replace('-', '')}", fields, preds)
        if kind == "chains":
            lane = i % 8
            if lane < len(chain_heads):
                chain_heads[lane] = fact
            else:
                chain_heads.append(fact)
        facts.append(fact)
    return facts


def shuffled_with_duplicates(
    facts: Sequence[Fact], *, duplicates: float = 0.3, seed: int = 0
) -> list[Fact]:
    """The facts in a random order, with about ``duplicates`` x len extra copies."""
    rng = random.Random(seed)
    out = list(facts) + [rng.choice(facts) for _ in range(int(len(facts) * duplicates))]
    rng.shuffle(out)
    return out


@dataclass
class CausalChecker:
    """Records what each node handled and classifies it against the expected facts."""

    expected: dict[FactRef, Fact]
    handled: dict[str, list[FactRef]] = field(default_factory=lambda: defaultdict(list))
    out_of_order: Counter[str] = field(default_factory=Counter)
    done: dict[str, set[FactRef]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, facts: Sequence[Fact]) -> CausalChecker:
        return cls({f.ref: f for f in facts})

    def record(self, node: str, fact: Fact) -> None:
        """Call from a handler: checks every predecessor was handled before."""
        done = self.done[node]
        if any(p not in done for p in fact.predecessor_refs()):
            self.out_of_order[node] += 1
        done.add(fact.ref)
        self.handled[node].append(fact.ref)

    def complete(self, node: str) -> bool:
        return len(self.done[node]) >= len(self.expected)

    def report(self, nodes: Sequence[str]) -> ConvergenceReport:
        lost = duplicated = out_of_order = 0
        digests: dict[str, str] = {}
        for node in nodes:
            counts = Counter(self.handled.get(node, []))
            lost += sum(1 for ref in self.expected if counts[ref] == 0)
            duplicated += sum(n - 1 for n in counts.values() if n > 1)
            out_of_order += self.out_of_order[node]
            digests[node] = state_digest(counts)
        return ConvergenceReport(
            nodes=list(nodes),
            facts=len(self.expected),
            lost=lost,
            duplicated=duplicated,
            out_of_order=out_of_order,
            digests=digests,
        )


def state_digest(refs: Counter[FactRef] | set[FactRef]) -> str:
    """An order-independent digest of a set of identities (equal sets, equal digests)."""
    h = hashlib.sha256()
    for ref in sorted(set(refs)):
        h.update(f"{ref.type}\x00{ref.hash}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class ConvergenceReport:
    nodes: list[str]
    facts: int
    lost: int
    duplicated: int
    out_of_order: int
    digests: dict[str, str]

    @property
    def converged(self) -> bool:
        return len(set(self.digests.values())) == 1 and self.lost == 0


async def run_convergence(
    url: str,
    *,
    nodes: int = 3,
    facts: int = 300,
    store_dir: str | Path,
    timeout: float = 60.0,
    seed: int = 7,
    duplicates: float = 0.3,
) -> ConvergenceReport:
    """Publish a shuffled, duplicated DAG over ``url`` to ``nodes`` fan-out nodes,
    each with its own SQLite store, and report what each handled."""
    from factbus.bus import Bus
    from factbus.testing.brokers import unique

    dag = random_dag(facts, seed=seed)
    checker = CausalChecker.of(dag)
    topic = unique("scenario")
    names = [f"node-{i}-{topic}" for i in range(nodes)]
    buses = []
    for name in names:
        bus = Bus(url, f"sqlite:///{Path(store_dir) / name}.db", topic=topic, node=name)
        for fact_type in {f.type for f in dag}:
            bus.handler(fact_type)(lambda fact, _n=name: checker.record(_n, fact))
        buses.append(bus)
    publisher = Bus(url, "memory://", topic=topic, node=f"publisher-{topic}", consume=False)
    try:
        for bus in buses:
            await bus.start()
        await publisher.start()
        order = shuffled_with_duplicates(dag, duplicates=duplicates, seed=seed)
        for start in range(0, len(order), 100):
            await publisher.publish(*order[start : start + 100], ancestors=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(checker.complete(n) for n in names) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for bus in buses:
            await bus.drain(timeout=timeout)
    finally:
        await publisher.aclose()
        for bus in buses:
            await bus.aclose()
    return checker.report(names)
