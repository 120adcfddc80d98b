"""RabbitMQ half-load latency and CPU per message, broker included, node against node.

The half-load p99 of the RESULTS.md ``amqp`` cell depends on three processes
sharing the machine's cores: the bench's publisher, the consuming process and
the broker. ``factbus bench`` reports the first two's CPU per message; this
study adds the broker's (its ``beam.smp``, from ``/proc/PID/stat``) and runs
the same measurement against several RabbitMQ nodes with different runtime
settings (started with ``amqp_second_node.sh``), rounds interleaved (the
order rotates every round), so a broker-side setting is judged by an A/B in
the same minutes.

Modes:

- ``cell``: the matrix cell itself, :func:`factbus.bench.run_bench` with the
  options of ``factbus bench --facts 20000 --payload 100 --publishers 1
  --publish-batch 1000 --warmup 2000`` (nothing in what is timed changes); an
  observer reads the broker's CPU time when each phase begins, so the broker's
  CPU over the peak and over the half-load phase is known.
- ``paced``: the half-load phase alone at a fixed rate (``--rate``), as the
  bench runs it (its publisher process, one call per due message; a consuming
  bus with an SQLite store; warm-up first), so the rate does not move with
  each run's peak.

For each run: half-load target and achieved msgs/s, p50 / p99 / max ms,
publish lag p99, CPU µs per message of publisher, consumer and broker over
the half load (and at peak, in ``cell`` mode), the machine's idle share over
the half load, and the load average.

Run (brokers up; the extra nodes started first)::

    .venv/bin/python benchmarks/studies/amqp_node_ab.py \\
        --node bound=amqp://guest:guest@127.0.0.1:5673/ \\
        --node unbound=amqp://guest:guest@127.0.0.1:5674/ --mode cell --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import TICK, machine_jiffies, pct

from factbus import Bus
from factbus.bench import BenchConfig, run_bench
from factbus.bench.publisher import PublisherProcesses, PublishJob, merge_stamps
from factbus.bench.result import latencies
from factbus.bench.runner import FACT_TYPES, Recorder, process_cpu
from factbus.bench.workload import WorkloadSpec


def port_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:``port`` (``ss``)."""
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",", 1)[0])
    raise SystemExit(f"nothing listens on port {port}")


def pid_times(pid: int) -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, context switches) of process
    ``pid``, every thread: a context switch is a thread going to sleep or
    being preempted, so per message it counts the broker's wake-ups."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
        except OSError:
            continue
    return int(fields[11]) / TICK, int(fields[12]) / TICK, switches


def schedulers(pid: int) -> str:
    """The CPUs each Erlang scheduler thread of ``pid`` may run on (bound or not)."""
    seen = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            if not name.endswith("_scheduler"):
                continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                cpus = next(x.split()[1] for x in f if x.startswith("Cpus_allowed_list"))
        except (OSError, StopIteration):
            continue
        seen.append(f"{name}:{cpus}")
    return " ".join(seen)


class BrokerObserver:
    """Reads the broker's CPU time, the machine's jiffies and the clock when a phase begins."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.marks: list[tuple[str, float, tuple[float, float, int], tuple[float, float]]] = []

    def phase(self, name: str, total: int) -> None:
        self.marks.append((name, time.perf_counter(), pid_times(self.pid), machine_jiffies()))

    def advance(self, name: str, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def between(self, first: str, after: str) -> tuple[float, tuple[float, float, int], float]:
        """(seconds, broker (user s, system s, switches), machine idle share) from
        phase ``first`` to the next phase after it (``after`` only documents which)."""
        names = [m[0] for m in self.marks]
        i = names.index(first)
        a, b = self.marks[i], self.marks[i + 1]
        assert b[0] == after, (b[0], after)
        total = b[3][0] - a[3][0]
        idle = (b[3][1] - a[3][1]) / total if total else 0.0
        times = (b[2][0] - a[2][0], b[2][1] - a[2][1], b[2][2] - a[2][2])
        return b[1] - a[1], times, idle


async def cell(label: str, url: str, pid: int, facts: int) -> dict[str, Any]:
    observer = BrokerObserver(pid)
    config = BenchConfig(
        transport=url, facts=facts, payload=100, publishers=1, publish_batch=1000, warmup=2000
    )
    result = await run_bench(config, observer)
    half = result.half_load
    assert half is not None
    _, half_broker, idle = observer.between("half load", "backlog")
    _, peak_broker, _ = observer.between("peak", "half load")
    return {
        "node": label,
        "mode": "cell",
        "peak_per_s": round(result.messages_per_s),
        "target_per_s": round(half.target_per_s),
        "achieved_per_s": round(half.achieved_per_s),
        "p50": round(half.latency_ms.p50, 1),
        "p99": round(half.latency_ms.p99, 1),
        "max": round(half.latency_ms.max, 1),
        "lag_p99": round(half.publish_lag_p99_ms, 1),
        "publisher_us": half.publisher_cpu_us_per_msg,
        "consumer_us": half.cpu_us_per_msg,
        **broker_fields("", half_broker, result.messages),
        "idle": round(idle, 2),
        "peak_publisher_us": result.publisher_cpu_us_per_msg,
        "peak_consumer_us": result.cpu_us_per_msg,
        **broker_fields("peak_", peak_broker, result.messages),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


async def paced(
    label: str, url: str, pid: int, messages: int, rate: float, store_dir: Path, seed: int
) -> dict[str, Any]:
    topic = f"study-nodeab-{uuid.uuid4().hex[:8]}"
    publishers = PublisherProcesses(1, url, topic)
    await publishers.start()
    recorder = Recorder()
    bus = Bus(url, f"sqlite:///{store_dir}/{topic}.db", topic=topic, node=f"{topic}-consumer")
    for fact_type in FACT_TYPES:
        bus.handler(fact_type)(recorder)
    try:
        warm = WorkloadSpec(2000, payload=100, seed=seed + 1000)
        spec = WorkloadSpec(messages, payload=100, seed=seed)
        warm_summary = await publishers.prepare(warm)
        summary = await publishers.prepare(spec)
        await bus.start()
        phase = recorder.begin(warm_summary.run, warm.facts)
        await publishers.publish(PublishJob(warm, 1000, start_at=time.perf_counter() + 0.05))
        async with asyncio.timeout(120):
            await phase.done.wait()
        phase = recorder.begin(summary.run, spec.facts)
        cpu, before, jiffies = process_cpu(), pid_times(pid), machine_jiffies()
        start = time.perf_counter()
        job = PublishJob(spec, 1000, rate=rate, start_at=start + 0.05)
        reports = await publishers.publish(job)
        async with asyncio.timeout(300):
            await phase.done.wait()
        elapsed = time.perf_counter() - start
        cpu, after = process_cpu() - cpu, pid_times(pid)
        broker = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
        now = machine_jiffies()
        idle = (now[1] - jiffies[1]) / max(now[0] - jiffies[0], 1)
    finally:
        await bus.aclose()
        await publishers.aclose()
        from factbus.bench.cleanup import Made, remove_made

        await remove_made(Made(url, topic, [f"{topic}-consumer"]))
    stamps = merge_stamps(reports, spec.facts)
    values = [v * 1e3 for v in latencies(stamps, phase.handled_at)]
    sent = sum(r.messages for r in reports)
    return {
        "node": label,
        "mode": "paced",
        "target_per_s": round(rate),
        "achieved_per_s": round(sent / elapsed),
        "p50": round(pct(values, 0.5), 1),
        "p99": round(pct(values, 0.99), 1),
        "max": round(max(values), 1),
        "lag_p99": round(max(r.lag_p99_ms for r in reports), 1),
        "publisher_us": round(sum(r.cpu_s for r in reports) / sent * 1e6, 1),
        "consumer_us": round(cpu / sent * 1e6, 1),
        **broker_fields("", broker, sent),
        "idle": round(idle, 2),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def broker_fields(prefix: str, times: tuple[float, float, int], messages: int) -> dict[str, float]:
    """The broker's CPU µs per message (all, user, system) and context switches per message."""
    user, system, switches = times
    return {
        f"{prefix}broker_us": round((user + system) / messages * 1e6, 1),
        f"{prefix}broker_user_us": round(user / messages * 1e6, 1),
        f"{prefix}broker_sys_us": round(system / messages * 1e6, 1),
        f"{prefix}broker_switches": round(switches / messages, 2),
    }


def summary(results: list[dict[str, Any]]) -> None:
    keys = (
        "p50",
        "p99",
        "publisher_us",
        "consumer_us",
        "broker_us",
        "broker_sys_us",
        "broker_switches",
        "peak_broker_us",
        "achieved_per_s",
        "idle",
    )
    for label in dict.fromkeys(r["node"] for r in results):
        mine = [r for r in results if r["node"] == label]
        parts = []
        for key in keys:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                parts.append(
                    f"{key} {statistics.median(values):g} [{min(values):g}-{max(values):g}]"
                )
        print(f"{label} ({len(mine)} runs): " + ", ".join(parts), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--node", action="append", required=True, help="LABEL=amqp://...:PORT/ (repeatable)"
    )
    parser.add_argument("--mode", choices=("cell", "paced"), default="cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--facts", type=int, default=20_000, help="cell: facts per phase")
    parser.add_argument("--messages", type=int, default=20_000, help="paced: messages")
    parser.add_argument("--rate", type=float, default=2200.0, help="paced: msgs/s")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    nodes = []
    for item in args.node:
        label, url = item.split("=", 1)
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        pid = port_pid(port)
        print(f"{label}: {url} beam pid {pid}, schedulers {schedulers(pid)}", flush=True)
        nodes.append((label, url, pid))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="factbus-nodeab-") as tmp:
        for round_ in range(args.rounds):
            order = nodes[round_ % len(nodes) :] + nodes[: round_ % len(nodes)]
            for label, url, pid in order:
                if args.mode == "cell":
                    result = await cell(label, url, pid, args.facts)
                else:
                    result = await paced(
                        label, url, pid, args.messages, args.rate, Path(tmp), round_ + 10
                    )
                result["round"] = round_
                results.append(result)
                print(json.dumps(result), flush=True)
    summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main())
