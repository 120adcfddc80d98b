"""benchmarks/run_matrix.py's generated text: the issue-15 floor verdict is judged
on the CPU ratio with the wall-clock one beside it, and "Where we stand" states
only the figures of the runs it is given (real bench runs on memory://)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from factbus.bench import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parents[2]
TINY = {"facts": 300, "warmup": 30, "publish_batch": 25, "batch_size": 64, "timeout": 20.0}


def _run_matrix() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "run_matrix_under_test", ROOT / "benchmarks" / "run_matrix.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_floor_verdict_and_standing_come_from_the_runs_figures() -> None:
    matrix = _run_matrix()
    memory = await run_bench(BenchConfig(store="memory://", half_load=False, **TINY))
    sqlite = await run_bench(BenchConfig(half_load=False, **TINY))
    assert memory.floor_cpu_ratio is not None and sqlite.drain_cpu_us_per_msg is not None

    measured, verdict = matrix._floor_figures(memory, 0.5)
    assert measured.startswith(f"CPU: floor {memory.floor_cpu_us_per_msg:.2f} / drain")
    assert f"= {memory.floor_cpu_ratio:.2f}" in measured
    assert f"wall: {memory.drain_per_s:,.0f} / {memory.floor_per_s:,.0f}" in measured
    assert verdict is (memory.floor_cpu_ratio >= 0.5)
    # Judged on the CPU ratio even where the wall-clock one says otherwise.
    assert matrix._floor_figures(memory, memory.floor_cpu_ratio + 0.01)[1] is False
    assert matrix._floor_figures(memory, memory.floor_cpu_ratio - 0.01)[1] is True
    # A run without CPU figures (older JSON) is judged on wall clock, and says so.
    wall_only = dataclasses.replace(memory, drain_cpu_us_per_msg=None)
    assert "wall clock only" in str(matrix._floor_figures(wall_only, 0.5)[1])

    # End to end against the raw client: the rate ratio, met at the bound or above.
    assert sqlite.ratio is not None
    assert matrix._raw_figures(sqlite, sqlite.ratio) == (f"{sqlite.ratio:.2f}", True)
    assert matrix._raw_figures(sqlite, sqlite.ratio + 0.01)[1] is False
    assert matrix._raw_figures(None, 0.5) == ("-", None)
    verdicts = "\n".join(matrix.issue15_md({"kafka": sqlite}))
    assert f"| ≥ 0.5 of raw confluent-kafka | {sqlite.ratio:.2f} |" in verdicts
    assert "| RabbitMQ, end to end | ≥ 0.8 of raw aio-pika | - |" in verdicts

    lines = matrix.standing({"memory": sqlite, "memory+memory-store": memory})
    text = "\n".join(lines)
    assert f"{sqlite.cpu_us_per_msg:.1f} CPU µs per message" in text
    assert f"{memory.drain_cpu_us_per_msg:.1f} CPU µs per message" in text
    store = sqlite.drain_cpu_us_per_msg - (memory.drain_cpu_us_per_msg or 0)
    assert f"{store:+.1f} µs per message for durability" in text
    for stale in ("layout", "twice the floor", "bottleneck"):
        assert stale not in text


@pytest.mark.parametrize("share", [0.2, 0.95])
def test_standing_says_cpu_bound_only_when_the_process_was_busy(share: float) -> None:
    matrix = _run_matrix()
    from factbus.bench import BenchResult, Latency

    result = BenchResult(
        transport="memory://x",
        store="memory://",
        client="asyncio.Queue",
        facts=1000,
        messages=1000,
        payload=100,
        body_bytes=350,
        shape="independent",
        duplicates=0.0,
        reorder=False,
        publishers=1,
        publisher_mode="task",
        batch_size=512,
        publish_batch=100,
        warmup=0,
        publish_per_s=1.0,
        facts_per_s=10_000.0,
        messages_per_s=10_000.0,
        elapsed_s=0.1,
        baseline_per_s=None,
        baseline_publish_per_s=None,
        baseline_elapsed_s=None,
        drain_per_s=None,
        baseline_drain_per_s=None,
        cpu_us_per_msg=share * 100,
        baseline_cpu_us_per_msg=None,
        latency_ms=Latency.of([]),
        half_load=None,
        rss_mb=1.0,
        rss_start_mb=1.0,
    )
    assert matrix.busy(result) == pytest.approx(share)
    (line, *_rest) = matrix.standing({"memory": result})
    assert ("CPU-bound" in line) is (share >= 0.8)
    assert f"{share:.0%} of a core" in line


async def test_results_md_says_whether_the_native_helper_ran_in_each_run() -> None:
    matrix = _run_matrix()
    from factbus import envelope

    run = await run_bench(BenchConfig(store="memory://", half_load=False, drain=False, **TINY))
    assert run.native is envelope.NATIVE
    on = dataclasses.replace(run, native=True, native_reason="")
    off = dataclasses.replace(run, native=False, native_reason="not installed (make native)")
    old = dataclasses.replace(run, native=None, native_reason="")

    assert matrix.native_md({"memory": [on, on], "kafka": [on]}).startswith(
        "Receive path — native helper: on (all 3 runs;"
    )
    mixed = matrix.native_md({"memory": [on, on], "kafka": [off]})
    assert "on in 2 run(s), off in 1 (not installed (make native))" in mixed
    assert "not on in: kafka" in mixed
    assert "off, Python receive path" in matrix.native_md({"memory": [off]})
    assert "not recorded" in matrix.native_md({"memory": [old]})

    text = matrix.results_md(
        [matrix.Cell("memory", "memory://", 300, "any", None, None)],
        {"memory": off},
        {"memory": [off]},
        {},
        1,
    )
    assert "Receive path — native helper: off" in text
