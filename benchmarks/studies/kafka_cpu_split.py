"""Where the CPU goes in a ``factbus bench`` run, per process and per phase.

Runs ``factbus bench`` in this process (``run_bench``, the same code as the
command) with an observer that, at every phase boundary, reads the CPU time
(user + system, every thread) of:

- **consumer**: this process (the consuming bus, or the raw consumer in the
  baseline phase); split into its event-loop thread, librdkafka's threads
  (``rdk:*``) and other threads (the subscription's consumer thread, the
  producer poller);
- **publishers**: the bench's publisher processes (children of this one);
- **broker**: the Kafka broker's JVM (the process whose command line holds
  ``kafka.Kafka``), found with psutil; shared with other users of the broker,
  so its figure is an upper bound of what this run cost it.

Each figure is divided by the phase's messages: CPU µs per message per
process, for the raw client's phase (``baseline``: raw producer in a publisher
process, raw consumer here) and for factbus's ``peak``, ``half load`` and
``drain`` (factbus) phases. Run several times (``--runs``): the table shows
each run.

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_cpu_split.py --runs 3 \\
        --transport kafka://127.0.0.1:9092 --facts 50000 --publish-batch 1000 --warmup 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from _common import TICK, thread_schedstats

from factbus.bench.runner import BenchConfig, run_bench


def _broker() -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any("kafka.Kafka" in part for part in cmdline):
            return process
    return None


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


KINDS = ("loop", "rdkafka", "kafka", "executor", "other")
"""Thread kinds of the consuming process: the event loop; librdkafka's own
threads (``rdk:*``); the Kafka adapter's Python threads (``factbus-kafka-*``:
the subscription's consumer thread, the producer poller); the default
executor (``asyncio_*``: the SQLite store's WAL checkpoints, ``to_thread``);
the rest (the raw baseline's consumer runs in the executor too)."""


def _kind(tid: int, comm: str, main: int) -> str:
    if tid == main:
        return "loop"
    if comm.startswith("rdk:"):
        return "rdkafka"
    name = next((t.name for t in threading.enumerate() if t.native_id == tid), "")
    if name.startswith("factbus-kafka"):
        return "kafka"
    if name.startswith("asyncio_"):
        return "executor"
    return "other"


_SEEN: dict[int, tuple[str, float]] = {}
"""CPU seconds last read of every thread of this process (threads that ended keep theirs)."""


def _threads() -> dict[str, float]:
    """This process's CPU seconds by thread kind (from /proc/self/task), threads
    that ended since included (with their last reading)."""
    main = threading.main_thread().native_id
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
                raw = stat.read()
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        number = int(tid)
        kind = _SEEN[number][0] if number in _SEEN else _kind(number, name, main)
        _SEEN[number] = (kind, seconds)
    split = dict.fromkeys(KINDS, 0.0)
    for kind, seconds in _SEEN.values():
        split[kind] += seconds
    return split


def _sample_threads(stop: threading.Event) -> None:
    """Read the threads every 20 ms, so a thread that ends between two phase
    marks (the raw consumer's librdkafka threads) still counts, to within 20 ms."""
    while not stop.wait(0.02):
        _threads()


def _loop_schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the event-loop
    thread (/proc/self/task/<tid>/schedstat)."""
    main = threading.main_thread().native_id
    _, ran, waited = thread_schedstats().get(main, ("", 0, 0))
    return ran / 1e9, waited / 1e9


@dataclass
class Snapshot:
    at: float
    consumer: float
    threads: dict[str, float]
    publishers: float
    broker: float
    loop_sched: tuple[float, float] = (0.0, 0.0)


@dataclass
class CpuObserver:
    """Snapshots CPU times whenever a phase begins (see the module docstring)."""

    broker: psutil.Process | None
    marks: list[tuple[str, int, Snapshot]] = field(default_factory=list)
    _exited: dict[int, float] = field(default_factory=dict)
    _children: dict[int, psutil.Process] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        me = psutil.Process()
        publishers = 0.0
        for child in me.children(recursive=True):
            self._children.setdefault(child.pid, child)
        for pid, child in list(self._children.items()):
            seconds = _cpu(child)
            if seconds or pid not in self._exited:
                self._exited[pid] = max(seconds, self._exited.get(pid, 0.0))
            publishers += self._exited[pid]
        return Snapshot(
            time.perf_counter(),
            time.process_time(),
            _threads(),
            publishers,
            _cpu(self.broker) if self.broker else 0.0,
            _loop_schedstat(),
        )

    def phase(self, name: str, total: int) -> None:
        self.marks.append((name, total, self.snapshot()))

    def advance(self, name: str, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def split(self, messages: int) -> dict[str, dict[str, float]]:
        """CPU µs per message of each process over each phase."""
        out: dict[str, dict[str, float]] = {}
        for (name, total, a), (_, _, b) in zip(self.marks, self.marks[1:], strict=False):
            count = messages if name in ("baseline", "peak", "half load", "drain") else total
            if not count:
                continue
            per = 1e6 / count
            row = {
                "seconds": round(b.at - a.at, 3),
                "consumer": round((b.consumer - a.consumer) * per, 2),
                "publishers": round((b.publishers - a.publishers) * per, 2),
                "broker": round((b.broker - a.broker) * per, 2),
            }
            for kind in a.threads:
                row[f"consumer.{kind}"] = round((b.threads[kind] - a.threads[kind]) * per, 2)
            row["total"] = round(row["consumer"] + row["publishers"] + row["broker"], 2)
            wall = b.at - a.at
            if wall > 0:
                ran = b.loop_sched[0] - a.loop_sched[0]
                waited = b.loop_sched[1] - a.loop_sched[1]
                row["loop_busy_share"] = round(ran / wall, 3)
                row["loop_runnable_share"] = round(waited / wall, 3)
                row["loop_idle_share"] = round(max(wall - ran - waited, 0.0) / wall, 3)
            out[name] = row
        return out


async def one(config: BenchConfig) -> dict[str, Any]:
    observer = CpuObserver(_broker())
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_threads, args=(stop,), daemon=True)
    sampler.start()
    try:
        result = await run_bench(config, observer)
        observer.phase("end", 0)
    finally:
        stop.set()
        sampler.join()
    data = result.as_json()
    return {
        "split": observer.split(result.messages),
        "messages_per_s": data["messages_per_s"],
        "baseline_per_s": data["baseline_per_s"],
        "ratio": data["ratio"],
        "publish_ratio": data["publish_ratio"],
        "cpu_us_per_msg": data["cpu_us_per_msg"],
        "baseline_cpu_us_per_msg": data["baseline_cpu_us_per_msg"],
        "publisher_cpu_us_per_msg": data.get("publisher_cpu_us_per_msg"),
        "baseline_publisher_cpu_us_per_msg": data.get("baseline_publisher_cpu_us_per_msg"),
        "half_load_p99_ms": data["half_load"]["latency_ms"]["p99"] if data["half_load"] else None,
        "load_avg": data["machine"]["load_avg"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", default="kafka://127.0.0.1:9092")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--publish-batch", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    config = BenchConfig(
        transport=args.transport,
        facts=args.facts,
        publish_batch=args.publish_batch,
        warmup=args.warmup,
    )
    runs = []
    for n in range(args.runs):
        run = asyncio.run(one(config))
        runs.append(run)
        print(
            f"run {n + 1}: ratio {run['ratio']} (factbus {run['messages_per_s']:,.0f}, raw "
            f"{run['baseline_per_s']:,.0f} msgs/s), publish ratio {run['publish_ratio']}, "
            f"half-load p99 {run['half_load_p99_ms']} ms, load {run['load_avg']}"
        )
        print(
            f"  {'phase':<10} {'s':>6} {'consumer':>9} {'(loop':>7} {'rdk':>6} {'kafka':>6} "
            f"{'exec':>6} {'other)':>7} "
            f"{'publisher':>9} {'broker':>7} {'total':>7}   CPU µs/msg;"
            "  event loop: on CPU / waiting for a CPU / idle (share of the phase)"
        )
        for phase, row in run["split"].items():
            if phase not in ("baseline", "peak", "half load", "drain"):
                continue
            print(
                f"  {phase:<10} {row['seconds']:>6.2f} {row['consumer']:>9.2f} "
                f"{row['consumer.loop']:>7.2f} {row['consumer.rdkafka']:>6.2f} "
                f"{row['consumer.kafka']:>6.2f} {row['consumer.executor']:>6.2f} "
                f"{row['consumer.other']:>7.2f} {row['publishers']:>9.2f} "
                f"{row['broker']:>7.2f} {row['total']:>7.2f}   "
                f"{row['loop_busy_share']:.2f} / {row['loop_runnable_share']:.2f} / "
                f"{row['loop_idle_share']:.2f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(runs, out, indent=1)


if __name__ == "__main__":
    main()
