"""Where the consuming process's middle (generation-1) collections run during a
Kafka half load, and what each moves into the oldest generation.

CPython 3.11 counts, as ``long_lived_pending``, every tracked object a
generation-1 collection moves into generation 2, and runs a full collection at
the tenth generation-1 collection once that count exceeds a quarter of the
objects the last full collection kept (benchmarks/studies/PROFILE.md §18). So
what brings the half load's full collections is what is alive at each
generation-1 collection. This study runs :func:`factbus.bench.runner.run_bench`
in its process (the matrix's Kafka cell without baseline and drain: warm-up,
peak, half load) and, at each generation-1 collection of the half-load phase,
records:

- which thread ran it (the event loop, or the subscription's consumer thread,
  whose ``consume()`` allocates librdkafka's ``Message`` objects);
- whether a pipeline step was running, and inside ``decode_each`` (the native
  verify, where the loop's young collections are triggered: §24), with the
  step's size and the previous step's;
- the subscription's buffered records and those handed over by the thread but
  not yet taken in by the loop;
- what the collection moved into generation 2 (the tail of
  ``gc.get_objects(2)`` after it), in all and how many librdkafka ``Message``
  objects among them (counted by type only).

The counting itself costs ~1-2 ms per generation-1 collection (listing
generation 2), so the phase's timing is not the bench's; the placement and
counts are what this is for.

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_middle_collections.py --runs 3
    .venv/bin/python benchmarks/studies/kafka_middle_collections.py --types  # what moved, by type
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import statistics
import threading
import time
from operator import itemgetter
from typing import Any

from factbus import pipeline as pipeline_module
from factbus.bench.runner import BenchConfig, run_bench
from factbus_kafka import subscription as kafka_subscription


class Probe:
    """The hooks (see the module docstring) and what they recorded."""

    def __init__(self) -> None:
        self.phase = "start-up"
        self.subscriptions: list[Any] = []
        self.in_step = False
        self.decoding = False
        self.step_size = 0
        self.previous_size = 0
        self.rows: list[tuple[bool, bool, bool, int, int, int, int, int, int]] = []
        """Per generation-1 collection: on the loop, in a step, decoding, step
        size, previous step's size, buffered, in the hand-off, moved, Messages."""
        self.full: list[float] = []
        self.peak_full: list[float] = []
        """Wall ms of each full collection in the peak."""
        """Wall ms of each full collection in the half load."""
        self._full_start = 0.0
        self.facts = 0
        """The half load's facts (its end: the last one handled)."""
        self._old = 0
        self.types: collections.Counter[str] = collections.Counter()
        """The half load's moved objects by type name (``--types``)."""
        self._at: tuple[bool, bool, bool, int, int, int, int] = (False,) * 3 + (0,) * 4  # type: ignore[assignment]

    def note_phase(self, name: str, total: int) -> None:
        self.phase = name

    def install(self) -> None:
        probe = self
        init = kafka_subscription.KafkaSubscription.__init__

        def traced_init(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            probe.subscriptions.append(self)

        kafka_subscription.KafkaSubscription.__init__ = traced_init  # type: ignore[method-assign]
        step = pipeline_module.Pipeline.step

        async def traced_step(self: Any, batch: Any) -> None:
            probe.in_step = probe.decoding = True
            probe.step_size = len(batch)
            try:
                await step(self, batch)
            finally:
                probe.in_step = probe.decoding = False
                probe.previous_size = len(batch)

        pipeline_module.Pipeline.step = traced_step  # type: ignore[method-assign]
        decode_each = pipeline_module.decode_each

        def traced_decode_each(*args: Any, **kwargs: Any) -> Any:
            try:
                return decode_each(*args, **kwargs)
            finally:
                probe.decoding = False

        pipeline_module.decode_each = traced_decode_each  # type: ignore[assignment]
        gc.callbacks.append(self.on_gc)

    def on_gc(self, stage: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2 and self.phase in ("peak", "half load"):
            if stage == "start":
                self._full_start = time.perf_counter()
            else:
                wall = (time.perf_counter() - self._full_start) * 1e3
                (self.full if self.phase == "half load" else self.peak_full).append(wall)
            return
        if self.phase != "half load":
            return
        if info["generation"] != 1:
            return
        if stage == "start":
            self._old = len(gc.get_objects(2))
            sub = self.subscriptions[-1] if self.subscriptions else None
            self._at = (
                threading.current_thread() is threading.main_thread(),
                self.in_step,
                self.decoding,
                self.step_size,
                self.previous_size,
                len(sub._buffer) if sub is not None else -1,
                (sub._handed - sub._arrived) if sub is not None else -1,
            )
            return
        moved = gc.get_objects(2)[self._old :]
        messages = sum(1 for o in moved if type(o).__name__ == "Message")
        self.types.update(type(o).__name__ for o in moved)
        self.rows.append((*self._at, len(moved), messages))
        moved.clear()


def records_as_tuples(with_headers: bool = False) -> None:
    """The ``--tuples`` experiment (see ``main``): patches the subscription's
    consumer and the few loop-side places that read a record. ``with_headers``:
    each tuple also carries the key and the headers, read in the consumer
    thread as an exact tuple of (name, value) pairs (what a delivery would
    need), at their cost."""
    module = kafka_subscription
    base = module.Consumer

    class TupleConsumer(base):  # type: ignore[misc,valid-type]
        def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
            if with_headers:
                return [
                    (m.value(), m.partition(), m.offset(), m.key(), tuple(m.headers() or ()))
                    if m.error() is None
                    else m
                    for m in super().consume(*args, **kwargs)
                ]
            return [
                (m.value(), m.partition(), m.offset()) if m.error() is None else m
                for m in super().consume(*args, **kwargs)
            ]

    module.Consumer = TupleConsumer  # type: ignore[misc]
    module._value_of = itemgetter(0)  # type: ignore[assignment]
    module._partition_of = itemgetter(1)  # type: ignore[assignment]

    def receive(self: Any, messages: list[Any]) -> None:
        self._arrived += len(messages)
        if self._closed:
            return
        fresh = []
        for message in messages:
            if not isinstance(message, tuple):
                self._on_message_error(message.error())
                continue
            number = message[1]
            partition = self._partitions.get(number)
            if partition is None:
                partition = self._partitions[number] = module.Partition(number, self)
            if message[2] < partition.next_offset:
                continue  # no nacks in the bench: skipped as re-read
            partition.next_offset = message[2] + 1
            fresh.append(message)
        self._deliver(fresh)

    module.KafkaSubscription._receive = receive  # type: ignore[method-assign]

    def batch_of(self: Any, items: list[Any]) -> Any:
        numbers = list(map(module._partition_of, items))
        bodies = list(map(module._value_of, items))
        runs = []
        for number, start, end in module._runs_of(numbers):
            partition = self._partitions[number]
            run = module.Run(partition, start)
            run.end = end
            run.offset = items[end - 1][2]
            run.pending = run.unhanded = end - start
            partition.unsettled.append(run)
            runs.append(run)
        return module.KafkaBatch(self, bodies, items, runs, {})

    module.KafkaSubscription._batch_of = batch_of  # type: ignore[method-assign]


class _Observer:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def phase(self, name: str, total: int) -> None:
        self.probe.note_phase(name, total)

    def advance(self, name: str, done: int) -> None:
        if name == "half load" and done >= self.probe.facts:
            self.probe.phase = "after half load"  # its last fact handled

    def note(self, text: str) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", default="kafka://127.0.0.1:9092")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--publish-batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rows", action="store_true", help="print every collection")
    parser.add_argument(
        "--types", action="store_true", help="print the 8 types most moved in the half load"
    )
    parser.add_argument(
        "--tuples",
        action="store_true",
        help="an experiment, not the adapter: the consumer thread hands records on as "
        "exact tuples (value, partition, offset) instead of librdkafka Messages, "
        "dropping their headers and keys (a rejected record's dead letter would lack "
        "them): what the half load's collections would be without a tracked object "
        "per record",
    )
    parser.add_argument(
        "--tuples-with-headers",
        action="store_true",
        help="--tuples, each tuple also carrying the record's key and its headers "
        "(read in the consumer thread: Message.headers(), ~1.4 µs a record)",
    )
    args = parser.parse_args()
    if args.tuples or args.tuples_with_headers:
        records_as_tuples(with_headers=args.tuples_with_headers)
    probe = Probe()
    probe.install()
    for _ in range(args.runs):
        probe.phase, probe.rows, probe.facts = "start-up", [], args.facts
        probe.full, probe.peak_full = [], []
        probe.types.clear()
        config = BenchConfig(
            transport=args.transport,
            facts=args.facts,
            warmup=args.warmup,
            publish_batch=args.publish_batch,
            baseline=False,
            drain=False,
        )
        result = asyncio.run(run_bench(config, _Observer(probe)))
        half = result.half_load
        assert half is not None
        rows = probe.rows
        in_decode = [r for r in rows if r[0] and r[2]]
        on_thread = [r for r in rows if not r[0]]
        moved = sum(r[7] for r in rows)
        messages = sum(r[8] for r in rows)
        sizes = [r[3] for r in in_decode]
        print(
            f"load {os.getloadavg()[0]:.1f}; half load {half.achieved_per_s:,.0f} msgs/s, "
            f"p99 {half.latency_ms.p99:.1f} ms; generation-1 collections {len(rows)}: "
            f"{len(in_decode)} in decode_each, {len(on_thread)} on the consumer thread, "
            f"{len(rows) - len(in_decode) - len(on_thread)} elsewhere on the loop; "
            f"moved {moved:,} ({moved / args.facts * 1000:.0f} per 1,000 facts), "
            f"librdkafka Messages {messages:,} ({messages / max(moved, 1):.0%}); "
            f"median step size in decode {statistics.median(sizes) if sizes else 0:.0f}; "
            f"full collections {len(probe.full)} ({', '.join(f'{w:.0f}' for w in probe.full)} ms); "
            f"peak: {result.messages_per_s:,.0f} msgs/s, consumer {result.cpu_us_per_msg} CPU "
            f"µs/msg, full collections {len(probe.peak_full)} "
            f"({', '.join(f'{w:.0f}' for w in probe.peak_full)} ms)",
            flush=True,
        )
        if args.types:
            print(
                "  moved by type:", ", ".join(f"{n} {c:,}" for n, c in probe.types.most_common(8))
            )
        if args.rows:
            print("  loop step decoding size previous buffered hand-off | moved Messages")
            for row in rows:
                print("  ", row)


if __name__ == "__main__":
    main()
