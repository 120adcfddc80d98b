"""Tracked objects that survive into the collector's oldest generation, per ``factbus bench`` phase.

CPython 3.11 runs a full (generation-2) collection when a generation-1
collection comes due for the tenth time since the last full one *and* the
objects moved into generation 2 since then (``long_lived_pending``) exceed a
quarter of those generation 2 held after it (``long_lived_total``). A
generation-1 collection moves every tracked object still alive in the young
generations into generation 2: what drives full collections is the tracked
objects (tuples, lists, dicts, instances, futures...) alive at those moments,
not the transient ones freed before. This study counts them.

It runs :func:`factbus.bench.runner.run_bench` in this process, as ``factbus
bench`` does (the baseline, warm-up, peak, half load and drain phases, with the
matrix's arguments), with a ``gc.callbacks`` hook that, per phase (from the
phase's announcement to its last fact handled; "after X" is the time between
phases, e.g. building the next workload):

- counts collections by generation, and each full collection's wall and
  thread-CPU time and the objects it walked;
- counts **survivors**: at each generation-1 collection, the objects it moved
  into generation 2 (what it adds to ``long_lived_pending``), printed per 1,000
  facts of the phase, with our estimate of ``long_lived_pending`` against a
  quarter of ``long_lived_total`` when the phase ended;
- with ``--types``, what the survivors are: they are the tail of
  ``gc.get_objects(2)`` right after the collection (merged there in order),
  by type (a tuple's length, a dict's first keys, a coroutine's or
  function's name; no object's contents are read beyond that, since an
  object may be half-built when a collection runs);
- with ``--owners N``, who holds them: for N survivors spread over each
  generation-1 collection's, the types of their referrers
  (``gc.get_referrers``; slow: for finding owners, not for timing).

On ``memory://`` the publishers are tasks of this process, so their side
(and the bench's workloads, built up front) is counted too; on a broker the
publishers are processes of their own and what is counted is the consuming
process alone.

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/gc_survivors.py --transport kafka://127.0.0.1:9092
    .venv/bin/python benchmarks/studies/gc_survivors.py \\
        --transport amqp://guest:guest@127.0.0.1:5672/ --facts 20000
    .venv/bin/python benchmarks/studies/gc_survivors.py --facts 50000 --types --owners 4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from factbus.bench.runner import BenchConfig, run_bench


@dataclass
class PhaseGC:
    """What the collector did during one phase."""

    name: str
    facts: int = 0
    by_generation: list[int] = field(default_factory=lambda: [0, 0, 0])
    survivors: int = 0
    full: list[tuple[float, float, int]] = field(default_factory=list)
    """Each full collection: wall ms, thread-CPU ms, tracked objects walked."""
    pending_end: int = 0
    threshold_end: int = 0
    types: collections.Counter[str] = field(default_factory=collections.Counter)
    owners: collections.Counter[str] = field(default_factory=collections.Counter)


class Probe:
    """The ``gc.callbacks`` hook and the bench observer (see the module docstring)."""

    def __init__(self, types: bool, owners: int) -> None:
        self.want_types = types or owners > 0
        self.owners = owners
        self.phases: dict[str, PhaseGC] = {}
        self.current = self._phase("start-up")
        self.totals: dict[str, int] = {}
        self._old = 0
        self._walked = 0
        self._wall = 0.0
        self._cpu = 0.0
        self.pending = 0
        """Our count of ``long_lived_pending``: survivors since the last full collection."""
        self.long_lived = 0
        """``long_lived_total`` as of the last full collection (0: none seen yet)."""

    def _phase(self, name: str) -> PhaseGC:
        if name not in self.phases:
            self.phases[name] = PhaseGC(name)
        return self.phases[name]

    # -- bench observer --------------------------------------------------------

    def phase(self, name: str, total: int) -> None:
        self._close()
        self.current = self._phase(name)
        self.current.facts = total
        self.totals[name] = total

    def advance(self, name: str, done: int) -> None:
        if name == self.current.name and done >= self.totals.get(name, 1 << 62):
            self._close()
            self.current = self._phase(f"after {name}")

    def note(self, text: str) -> None:
        pass

    def _close(self) -> None:
        self.current.pending_end = self.pending
        self.current.threshold_end = self.long_lived // 4

    # -- gc.callbacks ----------------------------------------------------------

    def on_gc(self, stage: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if stage == "start":
            if generation == 1:
                self._old = len(gc.get_objects(2))
            elif generation == 2:
                self._walked = sum(len(gc.get_objects(g)) for g in range(3))
            self._wall, self._cpu = time.perf_counter(), time.thread_time()
            return
        wall, cpu = time.perf_counter() - self._wall, time.thread_time() - self._cpu
        phase = self.current
        phase.by_generation[generation] += 1
        if generation == 2:
            phase.full.append((wall * 1e3, cpu * 1e3, self._walked))
            self.pending = 0
            self.long_lived = len(gc.get_objects(2))
        elif generation == 1:
            # What generation 2 gained. Not the young objects less those freed:
            # exact tuples of untracked items (and a dict's) are untracked during
            # the collection, neither freed nor moved.
            survived = max(len(gc.get_objects(2)) - self._old, 0)
            phase.survivors += survived
            self.pending += survived
            if survived and self.want_types:
                self._classify(phase, survived)

    def _classify(self, phase: PhaseGC, survived: int) -> None:
        objects = gc.get_objects(2)[-survived:]
        count = phase.types
        for obj in objects:
            count[describe(obj)] += 1
        if self.owners:
            step = max(len(objects) // self.owners, 1)
            sample = objects[::step][: self.owners]
            ignore = {id(objects), id(sample)}
            for obj in sample:
                held = describe(obj)
                for ref in gc.get_referrers(obj):
                    if id(ref) in ignore or ref.__class__.__name__ == "frame":
                        continue
                    phase.owners[f"{held} <- {describe(ref)}"] += 1
        objects.clear()


def describe(obj: Any) -> str:
    """A short description of a tracked object's kind, reading as little of it as
    possible (it may be half-built: a collection can run while a C function
    fills a tuple or list)."""
    kind = type(obj)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    try:
        if kind is tuple:
            return f"tuple[{len(obj)}]"
        if kind is dict:
            return "dict{" + ",".join(str(k)[:24] for k in list(obj)[:5]) + "}"
        if kind is list:
            return "list"
        if kind.__name__ in ("function", "builtin_function_or_method", "method"):
            return f"{name}:{getattr(obj, '__qualname__', '?')}"
        if kind.__name__ == "coroutine":
            return f"coroutine:{obj.cr_code.co_qualname}"
        if kind.__name__ == "cell":
            return "cell"
    except Exception:  # a description only
        pass
    return name


class _Observer:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def phase(self, name: str, total: int) -> None:
        self.probe.phase(name, total)

    def advance(self, name: str, done: int) -> None:
        self.probe.advance(name, done)

    def note(self, text: str) -> None:
        pass


PHASES = ("baseline", "warm-up", "peak", "half load", "drain")


def report(probe: Probe, result: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Print the run's table (and the types and owners asked for); return it as JSON."""
    half = result.half_load
    print(
        f"\n{args.transport or 'memory://'} store {args.store or 'sqlite (default)'}: "
        f"load average {os.getloadavg()[0]:.1f}; half load "
        + (
            f"{half.achieved_per_s:,.0f} msgs/s, p99 {half.latency_ms.p99:.1f} ms"
            if half
            else "not run"
        )
        + f"; {result.memory_per_fact_bytes:,.0f} B/fact"
    )
    print(
        f"  {'phase':<20} {'facts':>7} {'gen0':>5} {'gen1':>5} {'gen2':>4} "
        f"{'survivors':>9} {'/1k facts':>9}  pending/threshold at end  full collections "
        "(wall ms / CPU ms / objects)"
    )
    rows: dict[str, Any] = {}
    for phase in probe.phases.values():
        if not any(phase.by_generation) and phase.name not in PHASES:
            continue
        facts = probe.totals.get(phase.name, 0)
        per_k = phase.survivors / facts * 1e3 if facts else None
        full = " ".join(f"{w:.0f}/{c:.0f}/{n}" for w, c, n in phase.full) or "-"
        print(
            f"  {phase.name:<20} {facts or '':>7} {phase.by_generation[0]:>5} "
            f"{phase.by_generation[1]:>5} {phase.by_generation[2]:>4} {phase.survivors:>9} "
            f"{'' if per_k is None else f'{per_k:.0f}':>9}  "
            f"{phase.pending_end:>8} / {phase.threshold_end:<8}       {full}"
        )
        rows[phase.name] = {
            "facts": facts,
            "collections": phase.by_generation,
            "survivors": phase.survivors,
            "survivors_per_1000_facts": None if per_k is None else round(per_k, 1),
            "full": [[round(w, 1), round(c, 1), n] for w, c, n in phase.full],
        }
        if args.types and phase.name in PHASES:
            for kind, count in phase.types.most_common(args.types):
                print(f"      {count:>8}  {kind}")
        if args.owners and phase.name in PHASES:
            for pair, count in phase.owners.most_common(args.types or 15):
                print(f"      owner {count:>5}  {pair}")
    return {
        "transport": args.transport or "memory://",
        "load_avg": os.getloadavg()[0],
        "half_load_p99_ms": half.latency_ms.p99 if half else None,
        "half_load_per_s": half.achieved_per_s if half else None,
        "memory_per_fact_bytes": result.memory_per_fact_bytes,
        "phases": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", default="", help="default: memory://")
    parser.add_argument("--store", default="", help="default: SQLite, as the bench")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--publish-batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-drain", action="store_true")
    parser.add_argument(
        "--types", type=int, nargs="?", const=20, default=0, help="show the N commonest kinds"
    )
    parser.add_argument(
        "--owners", type=int, default=0, help="referrers of N survivors per collection"
    )
    parser.add_argument("--json", default="", help="append each run's figures to this file")
    args = parser.parse_args()
    for _ in range(args.runs):
        probe = Probe(bool(args.types), args.owners)
        config = BenchConfig(
            transport=args.transport,
            store=args.store,
            facts=args.facts,
            warmup=args.warmup,
            publish_batch=args.publish_batch,
            baseline=not args.no_baseline,
            drain=not args.no_drain,
        )
        gc.collect()  # as if a full collection had just run: pending 0
        probe.long_lived = len(gc.get_objects(2))
        gc.callbacks.append(probe.on_gc)
        try:
            result = asyncio.run(run_bench(config, _Observer(probe)))
        finally:
            gc.callbacks.remove(probe.on_gc)
        figures = report(probe, result, args)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as out:
                out.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
