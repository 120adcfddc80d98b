"""What a benchmark publishes: a fact graph, its publish order and its envelope bodies.

A :class:`WorkloadSpec` is small and picklable, and :func:`build_workload` is
deterministic: a publisher process rebuilds exactly the workload of its parent
from the spec alone. Facts come from :func:`factbus.testing.scenario.random_dag`
(every fact has fields ``n``, its index, and ``run``, shared by the whole
graph), so a handler can tell which fact of which workload it got without a
look-up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, get_args

from factbus.envelope import encode
from factbus.fact import Fact
from factbus.testing.scenario import random_dag, shuffled_with_duplicates

Shape = Literal["independent", "chains", "fan-in"]
SHAPES: tuple[str, ...] = get_args(Shape)

# A duplicate (without --reorder) is published within this many positions after
# its original: it arrives late, but never before the original.
_DUPLICATE_SPREAD = 200


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """The parameters of a workload; equal specs build equal workloads."""

    facts: int
    payload: int = 100
    shape: Shape = "independent"
    duplicates: float = 0.0
    """Extra copies, as a share of ``facts`` (0.2: one message in six is a duplicate)."""
    reorder: bool = False
    """Shuffle the publish order (successors may come before their predecessors)."""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.facts < 1:
            raise ValueError("a workload needs at least one fact")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {self.shape!r}")
        if self.duplicates < 0:
            raise ValueError("duplicates must not be negative")


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """What the consuming side needs to know of a workload built elsewhere."""

    run: str
    facts: int
    messages: int
    body_bytes: int
    """Average envelope body size."""


@dataclass(slots=True)
class Workload:
    """Facts in publish order (duplicates included) and what the bench needs of them."""

    spec: WorkloadSpec
    run: str
    """The ``run`` field every fact of this workload carries."""
    order: list[Fact]
    """Publish order: one fact per message, duplicates included."""
    numbers: list[int]
    """``fields["n"]`` of each message's fact (0 <= n < spec.facts)."""
    _bodies: list[bytes] | None = field(default=None, repr=False)

    @property
    def messages(self) -> int:
        return len(self.order)

    @property
    def unique(self) -> int:
        return self.spec.facts

    @property
    def bodies(self) -> list[bytes]:
        """Each message's envelope body, exactly as ``Bus.publish(fact, ancestors=False)``
        encodes it: what the baseline moves."""
        if self._bodies is None:
            self._bodies = [encode([fact]) for fact in self.order]
        return self._bodies

    @property
    def keys(self) -> list[str]:
        """Each message's id and key (the head fact's hash), as the Bus sets them."""
        return [fact.hash for fact in self.order]

    def payload_bytes(self) -> int:
        """Total size of the envelope bodies."""
        return sum(len(body) for body in self.bodies)

    def summary(self) -> WorkloadSummary:
        bodies = self.bodies
        return WorkloadSummary(
            self.run, self.unique, len(bodies), sum(len(b) for b in bodies) // len(bodies)
        )

    def chunks(self, size: int, publisher: int = 0, publishers: int = 1) -> list[range]:
        """The index ranges (``size`` messages each) that ``publisher`` of
        ``publishers`` publishes: chunks are dealt round-robin, so concurrent
        publishers together keep roughly the publish order."""
        starts = range(publisher * size, len(self.order), size * publishers)
        return [range(start, min(start + size, len(self.order))) for start in starts]


def build_workload(spec: WorkloadSpec) -> Workload:
    """The workload ``spec`` describes (deterministic; takes ~10 µs per fact)."""
    facts = random_dag(spec.facts, seed=spec.seed, shape=spec.shape, payload=spec.payload)
    if spec.reorder:
        order = shuffled_with_duplicates(facts, duplicates=spec.duplicates, seed=spec.seed)
    else:
        order = _with_late_duplicates(facts, spec.duplicates, spec.seed)
    # Read through to_wire(), not Fact.fields: its read-only view is made on first
    # access and kept, a tracked object per fact for the collector to walk in the
    # bench's own process (PROFILE.md, "Survivors").
    run = facts[0].to_wire()["fields"]["run"]
    return Workload(spec, run, order, [fact.to_wire()["fields"]["n"] for fact in order])


def _with_late_duplicates(facts: list[Fact], duplicates: float, seed: int) -> list[Fact]:
    """Causal order kept; each duplicate a little after its original."""
    if duplicates <= 0:
        return list(facts)
    rng = random.Random(seed)
    keyed = [(float(i), fact) for i, fact in enumerate(facts)]
    for _ in range(int(len(facts) * duplicates)):
        i = rng.randrange(len(facts))
        keyed.append((i + 0.5 + rng.random() * _DUPLICATE_SPREAD, facts[i]))
    keyed.sort(key=lambda pair: pair[0])
    return [fact for _, fact in keyed]
