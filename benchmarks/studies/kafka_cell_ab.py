"""The matrix's Kafka cell, A/B: variants run interleaved, round by round, with
the half-load phase's CPU per message of the three processes that share the
machine (publisher, consuming process, the broker's JVM).

Each variant is ``name:key=value,...`` with keys ``url`` (the transport, default
``kafka://127.0.0.1:9092``), ``path`` (a tree whose ``src`` and ``adapters`` go
first on ``PYTHONPATH``: another version of factbus), ``broker`` (the broker
JVM's pid, default: the first process running ``kafka.Kafka``), ``rate`` (pace
the half load at this many msgs/s instead of half of the run's peak), ``gclog``
(the broker's GC log, written with ``-Xlog:gc:file=LOG:uptime``: its pauses
inside the half-load phase are counted). Each run
is the cell's command (``factbus bench --transport URL --facts 50000 --payload
100 --publishers 1 --publish-batch 1000 --warmup 2000 --quiet --json F``), run
through a wrapper that reads the broker's CPU time (``/proc/PID/stat``) at the
half-load phase's start and end; the bench's own JSON gives the rest.

On the shared broker its CPU counts every session's traffic; on a private
broker (``kafka_side_broker.sh``) it is the run's own.

    python benchmarks/studies/kafka_cell_ab.py --rounds 4 \
        --variant g1:url=kafka://127.0.0.1:9094 --variant par:url=kafka://127.0.0.1:9096
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

WRAPPER = r"""
import json, os, sys, time
from factbus.bench import runner

TICK = os.sysconf("SC_CLK_TCK")
PID = os.environ["AB_BROKER_PID"]
RATE = float(os.environ.get("AB_RATE") or 0)
OUT = os.environ["AB_OUT"]


def broker_cpu():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def broker_uptime():
    # Seconds since the broker's process started: its GC log's `uptime`
    # decoration, give or take the JVM's own start-up.
    with open(f"/proc/{PID}/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / TICK
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


original = runner._Run._phase


async def phase(self, bus, recorder, name, spec, *, rate=None, profile=None):
    if name != "half load":
        return await original(self, bus, recorder, name, spec, rate=rate, profile=profile)
    if RATE:
        rate = RATE
    before, wall, up = broker_cpu(), time.perf_counter(), broker_uptime()
    measured = await original(self, bus, recorder, name, spec, rate=rate, profile=profile)
    with open(OUT, "w") as f:
        json.dump(
            {
                "broker_cpu_s": broker_cpu() - before,
                "wall_s": time.perf_counter() - wall,
                "messages": measured.messages,
                "uptime": [up, broker_uptime()],
            },
            f,
        )
    return measured


runner._Run._phase = phase
from factbus.cli import main

sys.argv = ["factbus", *sys.argv[1:]]
sys.exit(main())
"""


def broker_pid() -> str:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"kafka.Kafka" in cmd and b"kafka-side" not in cmd:
                return pid
    raise SystemExit("no kafka.Kafka process")


PAUSE = re.compile(r"^\[(\d+\.\d+)s\].*Pause.* (\d+\.\d+)ms$")


def gc_pauses(log: str | None, start: float, end: float) -> list[float]:
    """The broker's stop-the-world pauses (ms) logged in [start, end] (its
    uptime, seconds): needs ``-Xlog:gc:file=LOG:uptime`` on the broker."""
    if not log:
        return []
    pauses = []
    for line in Path(log).read_text().splitlines():
        match = PAUSE.match(line)
        if match and start <= float(match[1]) <= end:
            pauses.append(float(match[2]))
    return pauses


def parse(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    options = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, options


def run(name: str, options: dict[str, str], facts: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cell-ab-") as tmp:
        out, side = Path(tmp) / "bench.json", Path(tmp) / "side.json"
        env = dict(os.environ)
        env["AB_BROKER_PID"] = options.get("broker") or broker_pid()
        env["AB_RATE"] = options.get("rate", "")
        env["AB_OUT"] = str(side)
        if "path" in options:
            tree = Path(options["path"])
            env["PYTHONPATH"] = f"{tree / 'src'}:{tree / 'adapters'}"
        command = [
            sys.executable,
            "-c",
            WRAPPER,
            "bench",
            "--transport",
            options.get("url", "kafka://127.0.0.1:9092"),
            "--facts",
            str(facts),
            "--payload",
            "100",
            "--publishers",
            "1",
            "--publish-batch",
            "1000",
            "--warmup",
            "2000",
            "--quiet",
            "--json",
            str(out),
            *extra,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return {}
        bench = json.loads(out.read_text())
        broker = json.loads(side.read_text())
    half = bench["half_load"]
    pauses = gc_pauses(options.get("gclog"), *broker["uptime"])
    return {
        "gc_n": len(pauses),
        "gc_max": max(pauses, default=0.0),
        "gc_sum": sum(pauses),
        "p99": half["latency_ms"]["p99"],
        "p50": half["latency_ms"]["p50"],
        "rate": half["achieved_per_s"],
        "lag": half["publish_lag_p99_ms"],
        "pub": half["publisher_cpu_us_per_msg"],
        "cons": half["cpu_us_per_msg"],
        "broker": broker["broker_cpu_s"] / broker["messages"] * 1e6,
        "peak": bench["messages_per_s"],
        "ratio": bench.get("ratio"),
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--facts", type=int, default=50000)
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("extra", nargs="*", help="more bench arguments (after --)")
    args = parser.parse_args()
    variants = [parse(v) for v in args.variant]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for name, options in order:
            figures = run(name, options, args.facts, args.extra)
            if figures:
                runs[name].append(figures)
                print(
                    f"{time.strftime('%H:%M:%S')} {name:>10} p99 {figures['p99']:7.1f} "
                    f"p50 {figures['p50']:6.1f} at {figures['rate']:8.0f}/s "
                    f"lag {figures['lag']:6.1f} "
                    f"CPU µs/msg pub {figures['pub']:5.1f} cons {figures['cons']:5.1f} "
                    f"broker {figures['broker']:5.1f} peak {figures['peak']:8.0f} "
                    f"broker GC {figures['gc_n']} pauses max {figures['gc_max']:.0f} ms "
                    f"load {figures['load']:.1f}",
                    flush=True,
                )
    print()
    keys = ("p99", "p50", "rate", "lag", "pub", "cons", "broker", "peak", "gc_n", "gc_max")
    print(f"{'median':>10} " + " ".join(f"{k:>8}" for k in keys) + "   p99 ≤ 50")
    for name, figures in runs.items():
        if not figures:
            continue
        med = [statistics.median(f[k] for f in figures) for k in keys]
        under = sum(f["p99"] <= 50 for f in figures)
        print(
            f"{name:>10} "
            + " ".join(f"{m:8.1f}" for m in med)
            + f"   {under} of {len(figures)}; p99s "
            + " / ".join(f"{f['p99']:.0f}" for f in figures)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
