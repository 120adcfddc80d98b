"""Run the benchmark matrix and rewrite RESULTS.md, results.json and throughput.png.

    eval "$(bash scripts/brokers.sh env)"
    .venv/bin/python benchmarks/run_matrix.py  # memory (2 stores), amqp, kafka, kombu+redis
    .venv/bin/python benchmarks/run_matrix.py --only memory --repeat 3

Each cell is one ``factbus bench`` process (the exact commands are written to
RESULTS.md), so every transport starts from a clean interpreter. The machine
is shared and noisy: every figure is also a ratio to the raw-client baseline
measured in the same process, a moment earlier, on the same broker. With
``--repeat K`` each cell runs K times and the table shows the run with the
median ratio (results.json keeps them all).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from factbus.bench.report import markdown, native_summary, plot
from factbus.bench.result import BenchResult, machine
from factbus.urls import redact

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Cell:
    name: str
    url: str
    facts: int
    target: str
    """The issue's target for this transport, as text."""
    min_facts_per_s: float | None
    min_ratio: float | None
    extra: tuple[str, ...] = ()


def cells() -> list[Cell]:
    env = os.environ.get
    return [
        Cell(
            "memory",
            "memory://",
            50_000,
            "≥150,000 facts/s end to end and ≥0.5 of the raw hand-off",
            150_000,
            0.5,
        ),
        Cell(
            "memory+memory-store",
            "memory://",
            50_000,
            "issue 15: drain ≥0.5 of the hand-written floor (memory store)",
            None,
            None,
            ("--store", "memory://"),
        ),
        Cell(
            "amqp",
            env("FACTBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            20_000,
            "≥20,000 facts/s with confirms and ≥0.8 of raw aio-pika",
            20_000,
            0.8,
        ),
        Cell(
            "amqp+pack100",
            env("FACTBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            20_000,
            "issue 15: ≥5x the facts/s of amqp (one fact per message) with --pack 100",
            None,
            None,
            ("--pack", "100"),
        ),
        Cell(
            "kafka",
            env("FACTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
            50_000,
            "≥100,000 facts/s consumed end to end and ≥0.8 of raw confluent-kafka",
            100_000,
            0.8,
        ),
        Cell(
            "kafka+inflight4",
            env("FACTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
            50_000,
            "issue 15 (beside the kafka cell): the publisher keeps 4 publish calls in flight "
            "(the raw producer, as always, confirms only at its final flush)",
            None,
            None,
            ("--publish-inflight", "4"),
        ),
        Cell(
            "kombu+redis",
            env("FACTBUS_TEST_REDIS_URL", "kombu+redis://127.0.0.1:6379/0"),
            10_000,
            "no target in the issue (reported for comparison with raw kombu)",
            None,
            None,
        ),
    ]


COMMON = ("--payload", "100", "--publishers", "1", "--publish-batch", "1000", "--warmup", "2000")


def command(cell: Cell, json_path: str, facts: int) -> list[str]:
    transport = [] if cell.url == "memory://" else ["--transport", cell.url]
    return [
        "factbus",
        "bench",
        *transport,
        "--facts",
        str(facts),
        *COMMON,
        *cell.extra,
        "--quiet",
        "--json",
        json_path,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="*",
        help=(
            "cells to run (memory memory+memory-store amqp amqp+pack100 kafka kafka+inflight4 "
            "kombu+redis)"
        ),
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every cell's facts")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite RESULTS.md and the plot from results.json",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in cells() if not args.only or c.name in args.only]
    runs: dict[str, list[BenchResult]] = {}
    commands: dict[str, str] = {}
    if args.render:
        saved = json.loads((out / "results.json").read_text())
        runs = {name: [BenchResult.from_json(d) for d in data] for name, data in saved.items()}
        for cell in chosen:
            if cell.name in runs:
                argv = command(cell, "", runs[cell.name][0].facts)
                commands[cell.name] = " ".join(shlex.quote(a) for a in argv[:-2])
        write(out, chosen, runs, commands, max(len(r) for r in runs.values()))
        return
    exe = str(Path(sys.executable).with_name("factbus"))
    for cell in chosen:
        facts = max(1000, int(cell.facts * args.scale))
        for attempt in range(args.repeat):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
                json_path = handle.name
            argv = command(cell, json_path, facts)
            shown = " ".join(shlex.quote(a) for a in argv[:-2])  # without the temp JSON path
            commands[cell.name] = shown
            print(f"[{cell.name} {attempt + 1}/{args.repeat}] {redact_cmd(shown)}", flush=True)
            started = time.monotonic()
            done = subprocess.run([exe, *argv[1:]], cwd=ROOT, check=False)
            if done.returncode != 0:
                print(f"  failed with status {done.returncode}", flush=True)
                continue
            data = json.loads(Path(json_path).read_text())
            os.unlink(json_path)
            result = BenchResult.from_json(data)
            runs.setdefault(cell.name, []).append(result)
            print(
                f"  {result.facts_per_s:,.0f} facts/s, ratio {result.ratio or 0:.2f}x, "
                f"p99 {result.latency_ms.p99:.0f} ms ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    if not runs:
        sys.exit("no cell ran")
    write(out, chosen, runs, commands, args.repeat)


def write(
    out: Path,
    chosen: list[Cell],
    runs: dict[str, list[BenchResult]],
    commands: dict[str, str],
    repeat: int,
) -> None:
    """results.json, throughput.png and RESULTS.md from the runs."""
    chosen_runs = {name: _median(results) for name, results in runs.items()}
    ordered = [chosen_runs[c.name] for c in chosen if c.name in chosen_runs]
    (out / "results.json").write_text(
        json.dumps(
            {name: [r.as_json() for r in results] for name, results in runs.items()}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    plot(ordered, out / "throughput.png")
    (out / "RESULTS.md").write_text(
        results_md(chosen, chosen_runs, runs, commands, repeat) + _kept_sections(out),
        encoding="utf-8",
    )
    print(f"wrote {out / 'RESULTS.md'}, results.json, throughput.png")


KEPT_SECTIONS = (
    "## Metrics overhead",
    "## Sidecar",
    "## Catch-up rate",
    "## Store growth",
    "## Stages",
)
"""Sections of RESULTS.md that other scripts write (studies/metrics_overhead.py,
studies/catchup_rate.py, ``factbus bench --sidecar`` results, store_growth.py,
stages.py);
a rewrite of the matrix keeps them, at the end."""


def _kept_sections(out: Path) -> str:
    path = out / "RESULTS.md"
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    kept = ""
    for heading in KEPT_SECTIONS:
        at = text.find(heading)
        if at >= 0:
            rest = text[at:]
            end = rest.find("\n## ", len(heading))
            kept += "\n" + (rest if end < 0 else rest[: end + 1])
    return kept


def redact_cmd(text: str) -> str:
    return " ".join(redact(part) if "://" in part else part for part in text.split(" "))


def _median(results: list[BenchResult]) -> BenchResult:
    ranked = sorted(results, key=lambda r: r.ratio or r.messages_per_s)
    return ranked[(len(ranked) - 1) // 2]


def _verdict(cell: Cell, result: BenchResult) -> str:
    checks = []
    if cell.min_facts_per_s is not None:
        ok = result.facts_per_s >= cell.min_facts_per_s
        checks.append(
            f"{'met' if ok else 'NOT met'}: {result.facts_per_s:,.0f} of "
            f"{cell.min_facts_per_s:,.0f} facts/s"
        )
    if cell.min_ratio is not None and result.ratio is not None:
        ok = result.ratio >= cell.min_ratio
        checks.append(
            f"{'met' if ok else 'NOT met'}: ratio {result.ratio:.2f} of {cell.min_ratio:.1f}"
        )
    return "; ".join(checks) or "-"


ISSUE15_LATENCY_MS = 50.0


def issue15_md(picked: dict[str, BenchResult]) -> list[str]:
    """The targets of issue 15, each a ratio or figure of the picked runs."""

    def verdict(ok: bool | str | None) -> str:
        if isinstance(ok, str):
            return ok
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    lines = [
        "",
        "## Issue 15 targets (same-run ratios)",
        "",
        "*floor*: the hand-written receive loop of `factbus.bench.floor` (orjson.loads, one "
        "orjson.dumps of the canonical form, SHA-512, base64, a set, a predecessor check, a "
        "handler call; in-process, no store) over the drain's bodies, right after the drain, "
        "the median of at least 5 passes and 1 s. The drain targets are judged on "
        "`floor_cpu_ratio` = floor CPU µs/msg ÷ drain CPU µs/msg (CPU time of the consuming "
        "process, every thread, over the drain window): drain and floor run seconds apart, and "
        "on a shared machine their wall-clock rates move with the CPU share each got "
        "(`floor_ratio` = drain msgs/s ÷ floor msgs/s moved 0.34-1.14 between runs minutes "
        "apart), their CPU time per message far less; the wall-clock ratio is shown beside it. "
        "*B/fact*: tracemalloc bytes a received fact keeps (decoded, wire bytes computed).",
        "",
        "| what | target | measured | verdict |",
        "|---|---|---|---|",
    ]

    def row(what: str, target: str, measured: str, ok: bool | str | None) -> None:
        lines.append(f"| {what} | {target} | {measured} | {verdict(ok)} |")

    for name, label, bound in (
        ("memory+memory-store", "memory://, memory store, drain", 0.5),
        ("memory", "memory://, SQLite store, drain", 0.33),
    ):
        r = picked.get(name)
        row(label, f"≥ {bound} of the floor", *_floor_figures(r, bound))
    row(
        "Kafka, SQLite store, end to end",
        "≥ 0.5 of raw confluent-kafka",
        *_raw_figures(picked.get("kafka"), 0.5),
    )
    if "kafka+inflight4" in picked:
        row(
            "Kafka, as above, 4 publish calls in flight (`--publish-inflight 4`)",
            "≥ 0.5 of raw confluent-kafka",
            *_raw_figures(picked["kafka+inflight4"], 0.5),
        )
    row("RabbitMQ, end to end", "≥ 0.8 of raw aio-pika", *_raw_figures(picked.get("amqp"), 0.8))
    packed, plain = picked.get("amqp+pack100"), picked.get("amqp")
    gain = packed.facts_per_s / plain.facts_per_s if packed and plain else None
    row(
        "RabbitMQ with packed envelopes (`--pack 100`)",
        "≥ 5x the facts/s of one fact per message",
        "-"
        if gain is None or packed is None or plain is None
        else f"{packed.facts_per_s:,.0f} / {plain.facts_per_s:,.0f} facts/s = {gain:.1f}x",
        None if gain is None else gain >= 5,
    )
    sizes = [r.memory_per_fact_bytes for r in picked.values() if r.memory_per_fact_bytes]
    row(
        "memory per received fact, 100 B payload",
        "≤ 1,200 B",
        "-" if not sizes else f"{max(sizes):,.0f} B",
        None if not sizes else max(sizes) <= 1200,
    )
    for name in ("memory", "kafka", "amqp"):
        r = picked.get(name)
        half = r.half_load if r else None
        row(
            f"latency p99 at half of peak, {name}",
            f"≤ {ISSUE15_LATENCY_MS:.0f} ms",
            "-" if half is None else f"{half.latency_ms.p99:.1f} ms",
            None if half is None else half.latency_ms.p99 <= ISSUE15_LATENCY_MS,
        )
    cpu = ", ".join(
        f"{name} {r.cpu_us_per_msg:.1f} ({r.baseline_cpu_us_per_msg or 0:.1f})"
        for name, r in picked.items()
    )
    row(
        "consumer CPU µs per message (raw)",
        "reported for every transport, brought down",
        cpu or "-",
        "reported (Kafka 55.5 µs when the issue was filed)",
    )
    row(
        "store cost as it grows (SQLite)",
        "1,000,000th fact ≤ 1.5x the 10,000th",
        "see Store growth below (benchmarks/store_growth.py)",
        "see Store growth (the store keeps an append-only fact log since schema 2)",
    )
    return lines


def _raw_figures(r: BenchResult | None, bound: float) -> tuple[str, bool | None]:
    """(measured, verdict) of an end-to-end target against the raw client: the
    ratio of the run's rate to the baseline's, met at ``bound`` or above."""
    if r is None or r.ratio is None:
        return "-", None
    return f"{r.ratio:.2f}", r.ratio >= bound


def _floor_figures(r: BenchResult | None, bound: float) -> tuple[str, bool | str | None]:
    """(measured, verdict) of a drain-against-floor target: judged on the CPU
    ratio, the wall-clock ratio shown beside it (judged on it only when a run
    has no CPU figures, and then said so)."""
    if r is None:
        return "-", None
    wall = (
        None
        if r.floor_ratio is None
        else f"wall: {r.drain_per_s or 0:,.0f} / {r.floor_per_s or 0:,.0f} msgs/s "
        f"= {r.floor_ratio:.2f}"
    )
    cpu = r.floor_cpu_ratio
    if cpu is None:
        if r.floor_ratio is None:
            return "-", None
        met = "met" if r.floor_ratio >= bound else "NOT met"
        return wall or "-", f"{met} (wall clock only: no CPU figures in this run)"
    measured = (
        f"CPU: floor {r.floor_cpu_us_per_msg or 0:.2f} / drain "
        f"{r.drain_cpu_us_per_msg or 0:.2f} µs/msg = {cpu:.2f}"
        + ("" if wall is None else f" ({wall})")
    )
    return measured, cpu >= bound


def busy(r: BenchResult) -> float:
    """Share of one core the consuming process used at peak (CPU µs/msg × msgs/s)."""
    return r.cpu_us_per_msg * r.messages_per_s / 1e6


def standing(picked: dict[str, BenchResult]) -> list[str]:
    """ "Where we stand": one line per picked run, stating only what it measured
    (CPU per message against the raw consumer's, how busy the consuming process
    was, the drain's CPU against the floor's), so it cannot go stale."""
    lines = []
    for name, r in picked.items():
        share = busy(r)
        text = (
            f"- **{name}**: {r.messages_per_s:,.0f} msgs/s end to end at "
            f"{r.cpu_us_per_msg:.1f} CPU µs per message (raw consumer "
            f"{'-' if r.baseline_cpu_us_per_msg is None else f'{r.baseline_cpu_us_per_msg:.1f}'}"
            f"), so the consuming process used {share:.0%} of a core at peak"
            + (" (its publisher tasks included)" if r.publisher_mode == "task" else "")
            + (
                ": it was CPU-bound."
                if share >= 0.8
                else ": it waited ("
                + ("for" if r.scheme == "memory" else "for the broker,")
                + " the publishers or the machine) the rest of the time."
            )
        )
        if r.drain_cpu_us_per_msg is not None and r.floor_cpu_us_per_msg is not None:
            text += (
                f" Draining, it spent {r.drain_cpu_us_per_msg:.1f} CPU µs per message "
                f"against the floor's {r.floor_cpu_us_per_msg:.1f} "
                f"({r.drain_cpu_us_per_msg - r.floor_cpu_us_per_msg:+.1f} µs; "
                f"floor_cpu_ratio {r.floor_cpu_ratio or 0:.2f}, wall-clock floor_ratio "
                f"{r.floor_ratio or 0:.2f})."
            )
        if r.drain_ratio is not None:
            text += f" Drain against the raw consumer: {r.drain_ratio:.2f}x."
        lines.append(text)
    sqlite, memory = picked.get("memory"), picked.get("memory+memory-store")
    if (
        sqlite is not None
        and memory is not None
        and sqlite.drain_cpu_us_per_msg is not None
        and memory.drain_cpu_us_per_msg is not None
    ):
        lines.append(
            f"- **store**: the memory:// drain spent {sqlite.drain_cpu_us_per_msg:.1f} CPU µs "
            f"per message with the SQLite store and {memory.drain_cpu_us_per_msg:.1f} with the "
            f"memory store: {sqlite.drain_cpu_us_per_msg - memory.drain_cpu_us_per_msg:+.1f} "
            "µs per message for durability in this run."
        )
    if lines:
        lines.append("- The split per receive stage is in Stages below (benchmarks/stages.py).")
    return lines


def native_md(runs: dict[str, list[BenchResult]]) -> str:
    """One line: whether the native helper (`make native`) verified the received
    envelopes in every run of the matrix, and which runs it did not (and why)."""
    every = [r for results in runs.values() for r in results]
    line = f"Receive path — {native_summary(every)} (all {len(every)} runs"
    off = sorted({name for name, results in runs.items() for r in results if r.native is not True})
    if off and len(off) < len(runs):
        line += "; not on in: " + ", ".join(off)
    return line + "; `factbus_native`, built by `make native`)."


def results_md(
    chosen: list[Cell],
    picked: dict[str, BenchResult],
    runs: dict[str, list[BenchResult]],
    commands: dict[str, str],
    repeat: int,
) -> str:
    any_result = next(iter(picked.values()))
    box = any_result.machine or machine()
    loads = {name: r.machine.get("load_avg") for name, r in picked.items()}
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_matrix.py` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; do not edit by hand.",
        "",
        "`factbus bench` measures facts published → received → verified (hash recomputed) "
        "→ deduplicated → causally ordered → handled by a trivial handler, with one consuming "
        "process and its SQLite store, against the raw client moving the same envelope bodies "
        "over the same broker in the same run (one producer, one consumer, same message count). "
        "**ratio** = factbus end-to-end messages/s ÷ raw end-to-end messages/s.",
        "",
        "![throughput and latency](throughput.png)",
        "",
        "(`throughput.png` and `results.json` are written next to this file by the run;"
        " generated output, not kept in git.)",
        "",
        markdown([picked[c.name] for c in chosen if c.name in picked]),
        "",
        native_md(runs),
        "",
        "publish msgs/s: all publishers together, broker-confirmed, in parentheses the ratio to "
        "the raw producer. p50/p95/p99: publish call → handler, per fact, at peak (includes the "
        "backlog the peak builds); p99 @50%: the same with publishing paced at half of the peak's "
        "end-to-end rate, message by message: each is published as soon as it is due, in a call "
        "with whatever else is due (one or a few messages, with `--pack N` N; calls do not wait "
        "for each other's confirms), and stamped when its call is made. CPU µs/msg: CPU time of "
        "the consuming process (all threads) per message during the peak, in parentheses the "
        "same for the raw consumer — far less sensitive to "
        "the machine's load than the rates. CPU µs/msg drain / floor: the consuming process's "
        "CPU time per message while it drained the backlog, and the hand-written floor's over "
        "the same bodies; in parentheses `floor_cpu_ratio` (floor ÷ drain: the share of the "
        "drain's CPU the floor's work would take).",
        "",
        "## Against the targets (one consumer process, 2 cores)",
        "",
        "| transport | target | verdict | raw client |",
        "|---|---|---|---|",
    ]
    for cell in chosen:
        if cell.name not in picked:
            lines.append(f"| {cell.name} | {cell.target} | did not run | |")
            continue
        result = picked[cell.name]
        lines.append(
            f"| {cell.name} | {cell.target} | {_verdict(cell, result)} | {result.client} |"
        )
    lines += issue15_md(picked)
    lines += ["", "Where we stand (this run's figures):", ""]
    lines += standing({c.name: picked[c.name] for c in chosen if c.name in picked})
    lines += [
        "",
        "## Details per run",
        "",
        "| transport | run | facts/s | msgs/s | raw msgs/s | ratio | publish ratio | "
        "half-load target msgs/s (achieved) | p99 @50% ms | drain msgs/s (raw) | "
        "CPU µs/msg (raw) | drain / floor CPU µs/msg | RSS start→peak MB | redeliveries | "
        "load avg at end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in chosen:
        for i, r in enumerate(runs.get(cell.name, []), 1):
            half = r.half_load
            lines.append(
                f"| {cell.name} | {i} | {r.facts_per_s:,.0f} | {r.messages_per_s:,.0f} | "
                f"{(r.baseline_per_s or 0):,.0f} | {(r.ratio or 0):.2f} | "
                f"{(r.publish_ratio or 0):.2f} | "
                + (
                    f"{half.target_per_s:,.0f} ({half.achieved_per_s:,.0f}) | "
                    f"{half.latency_ms.p99:.1f} | "
                    if half
                    else "- | - | "
                )
                + f"{r.drain_per_s or 0:,.0f} ({r.baseline_drain_per_s or 0:,.0f}) | "
                f"{r.cpu_us_per_msg:.1f} ({r.baseline_cpu_us_per_msg or 0:.1f}) | "
                + (
                    "- | "
                    if r.drain_cpu_us_per_msg is None or r.floor_cpu_us_per_msg is None
                    else f"{r.drain_cpu_us_per_msg:.1f} / {r.floor_cpu_us_per_msg:.1f} | "
                )
                + f"{r.rss_start_mb:.0f}→{r.rss_mb:.0f} | {r.pipeline.get('duplicates', 0)} | "
                f"{r.machine.get('load_avg')} |"
            )
    lines += [
        "",
        "## Commands",
        "",
        "Brokers: `bash scripts/brokers.sh start` (RabbitMQ, Kafka, Redis natively on "
        'loopback), then `eval "$(bash scripts/brokers.sh env)"`. Each cell ran as:',
        "",
        "```sh",
        *(f".venv/bin/{redact_cmd(commands[c.name])}" for c in chosen if c.name in commands),
        "```",
        "",
        f"(`--repeat {repeat}`: each command ran {repeat} time(s); the table shows the run with "
        "the median ratio.) Whole matrix: `.venv/bin/python benchmarks/run_matrix.py` "
        "(`make bench`).",
        "",
        "Workload: `--shape independent`, 100 bytes of payload per fact (an envelope of "
        f"~{any_result.body_bytes} bytes), no duplicates, causal publish order; one publisher "
        "(a separate process for brokers, a task of the consuming process for memory://), "
        "1,000 facts per publish call (so that publishing outruns the consumer: the targets are "
        "about consuming), batch size 512, SQLite store (WAL, synchronous=NORMAL) in a "
        "temporary directory; 2,000 warm-up facts first. *drain*: a new bus (same node and "
        "store) drains a backlog published while no consumer ran; the raw consumer drains the "
        "same bodies; both are timed from the moment the consumer is subscribed (Kafka: has "
        "its partition assignment) to the last message handled (factbus: the last step's "
        'commit), every message counted (docs/decisions.md, "Drain measurement"). '
        "*redeliveries*: duplicates the consuming buses saw although none were "
        "published (the broker redelivered, e.g. after a rebalance): non-zero means the run was "
        "disturbed.",
        "",
        "## Machine",
        "",
        f"- CPU: {box.get('cpu')}, {box.get('cores')} cores; memory {box.get('memory_gb')} GB",
        f"- Python {box.get('python')} on {box.get('platform')}",
        "- Brokers on the same machine (loopback): RabbitMQ (Debian package), Apache Kafka "
        "(KRaft, JDK 17), Redis (AOF, appendfsync everysec); see docs/brokers.md.",
        f"- Load average at the end of each picked run: {loads}. The machine is shared with "
        "other work (builds, test suites, the brokers themselves), so absolute rates move "
        "from run to run by a factor of two or more; ratios and CPU µs/msg are the figures "
        "to compare.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
