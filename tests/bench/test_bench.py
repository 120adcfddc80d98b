"""``factbus bench`` works: tiny runs on memory://, the JSON it writes, the ratio's
baseline measured in the same run, workloads. Speed is never asserted."""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from factbus import envelope
from factbus.bench import BenchConfig, BenchResult, Latency, run_bench
from factbus.bench.publisher import (
    PublishJob,
    PublishReport,
    _set_aside,
    forget_published,
    merge_stamps,
    publish_share,
)
from factbus.bench.report import markdown, replace_section
from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.bus import Bus
from factbus.cli import main
from factbus.commands.bench import add_arguments, config_from
from factbus.errors import ConfigError, TransportError
from factbus.gc_freeze import ENV as GC_FREEZE_ENV
from factbus.transport import take_batch

TINY = {"facts": 300, "warmup": 30, "publish_batch": 25, "batch_size": 64, "timeout": 20.0}


class Phases:
    """An observer that remembers the order of the phases."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.done: dict[str, int] = {}

    def phase(self, name: str, total: int) -> None:
        self.order.append(name)

    def advance(self, name: str, done: int) -> None:
        self.done[name] = done

    def note(self, text: str) -> None:
        pass


async def test_ratio_comes_from_a_baseline_measured_in_the_same_run() -> None:
    phases = Phases()
    result = await run_bench(BenchConfig(store="memory://", **TINY), phases)
    assert phases.order == [
        "baseline",
        "warm-up",
        "peak",
        "half load",
        "backlog",
        "drain",
        "raw drain",
        "floor",
    ]
    assert phases.done["baseline"] == result.messages
    assert phases.done["peak"] == result.facts
    assert result.client == "asyncio.Queue"
    assert result.baseline_per_s is not None and result.baseline_per_s > 0
    assert result.baseline_elapsed_s is not None
    assert result.baseline_per_s == pytest.approx(result.messages / result.baseline_elapsed_s, 1e-2)
    assert result.ratio == pytest.approx(result.messages_per_s / result.baseline_per_s)
    assert result.latency_ms.count == result.facts
    assert 0 < result.latency_ms.p50 <= result.latency_ms.p95 <= result.latency_ms.p99
    assert result.half_load is not None
    assert result.half_load.latency_ms.count == result.facts
    assert result.rss_mb > 0
    assert result.drain_per_s is not None and result.baseline_drain_per_s is not None
    assert result.drain_ratio == pytest.approx(result.drain_per_s / result.baseline_drain_per_s)
    assert phases.done["drain"] == result.facts and phases.done["raw drain"] == result.messages
    assert result.pipeline["handled"] == 30 + 3 * 300  # warm-up, peak, half load, drain
    assert result.floor_per_s is not None and result.floor_per_s > 0
    assert result.floor_ratio == pytest.approx(result.drain_per_s / result.floor_per_s)
    assert phases.done["floor"] == result.messages
    # The CPU figures of the drain and the floor, and their ratio (issue 15).
    assert result.drain_cpu_us_per_msg is not None and result.drain_cpu_us_per_msg > 0
    assert result.floor_cpu_us_per_msg is not None and result.floor_cpu_us_per_msg > 0
    assert result.floor_cpu_ratio == pytest.approx(
        result.floor_cpu_us_per_msg / result.drain_cpu_us_per_msg
    )
    assert result.memory_per_fact_bytes is not None and result.memory_per_fact_bytes > 100
    # Publishers are tasks of this process on memory://: no CPU of their own.
    assert result.publisher_cpu_us_per_msg is None
    assert result.baseline_publisher_cpu_us_per_msg is None
    assert result.half_load.publisher_cpu_us_per_msg is None
    assert result.half_load.cpu_us_per_msg is not None and result.half_load.cpu_us_per_msg > 0


async def test_duplicates_and_reorder_are_absorbed_by_the_pipeline() -> None:
    result = await run_bench(
        BenchConfig(
            store="memory://",
            shape="fan-in",
            duplicates=0.3,
            reorder=True,
            publishers=3,
            baseline=False,
            half_load=False,
            drain=False,
            **TINY,
        )
    )
    assert result.messages == 300 + 90
    assert result.ratio is None and result.half_load is None and result.drain_per_s is None
    stats = result.pipeline
    assert stats["handled"] == 300 + 30  # peak + warm-up, each fact once
    assert stats["duplicates"] == 9 + 90  # warm-up: 0.3 x 30, peak: 0.3 x 300
    assert stats["parked"] > 0 and stats["waiting"] == 0
    assert result.latency_ms.count == 300


def test_cli_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    status = main(
        [
            "bench",
            "--facts",
            "200",
            "--warmup",
            "20",
            "--shape",
            "chains",
            "--store",
            f"sqlite:///{tmp_path / 'bench.db'}",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--quiet",
        ]
    )
    assert status == 0
    data = json.loads(out.read_text())
    for key in (
        "transport",
        "facts",
        "facts_per_s",
        "baseline_per_s",
        "ratio",
        "rss_mb",
        "floor_per_s",
        "floor_ratio",
        "drain_cpu_us_per_msg",
        "floor_cpu_us_per_msg",
        "floor_cpu_ratio",
        "memory_per_fact_bytes",
        "cpu_us_per_msg",
    ):
        assert data[key] is not None, key
    assert set(data["latency_ms"]) >= {"p50", "p95", "p99"}
    assert data["half_load"]["latency_ms"]["p99"] > 0
    assert data["transport"].startswith("memory://bench-")
    assert data["facts"] == 200
    assert data["store"].endswith("bench.db")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end-to-end facts/s" in capsys.readouterr().out
    again = BenchResult.from_json(data)
    assert again.ratio == pytest.approx(data["ratio"], abs=1e-3)
    assert again.floor_ratio == pytest.approx(data["floor_ratio"], abs=1e-3)
    assert again.floor_cpu_ratio == pytest.approx(data["floor_cpu_ratio"], abs=1e-3)
    assert data["floor_cpu_ratio"] == pytest.approx(
        data["floor_cpu_us_per_msg"] / data["drain_cpu_us_per_msg"], abs=1e-3
    )
    assert "| memory://" in markdown([again])


def test_memory_cannot_publish_from_processes() -> None:
    with pytest.raises(ConfigError, match="in-process"):
        import asyncio

        asyncio.run(run_bench(BenchConfig(publisher_mode="process", **TINY)))


@pytest.mark.parametrize("reorder", [False, True])
def test_workload_is_deterministic_and_complete(reorder: bool) -> None:
    spec = WorkloadSpec(200, payload=10, shape="chains", duplicates=0.5, reorder=reorder, seed=3)
    one, two = build_workload(spec), build_workload(spec)
    assert [f.ref for f in one.order] == [f.ref for f in two.order]
    assert one.messages == 300 and sorted(set(one.numbers)) == list(range(200))
    assert all(f.fields["run"] == one.run for f in one.order)
    covered = sorted(i for p in range(3) for chunk in one.chunks(7, p, 3) for i in chunk)
    assert covered == list(range(one.messages))
    if not reorder:  # causal order kept: predecessors and originals come first
        seen: set[object] = set()
        for fact in one.order:
            assert all(p in seen for p in fact.predecessor_refs())
            seen.add(fact.ref)


def test_latency_percentiles_and_stamp_merge() -> None:
    latency = Latency.of([i / 1000 for i in range(1, 101)])
    assert (latency.p50, latency.p95, latency.p99, latency.max) == (50.0, 95.0, 99.0, 100.0)
    assert Latency.of([]).count == 0
    from array import array

    a = PublishReport(0.0, 1.0, 2, array("d", [0.0, 5.0, 7.0]))
    b = PublishReport(0.0, 1.0, 2, array("d", [3.0, 4.0, 0.0]))
    assert list(merge_stamps([a, b], 3)) == [3.0, 4.0, 7.0]


def test_publisher_processes_and_raw_baseline_on_rabbitmq() -> None:
    """The broker path: publishers in processes, aio-pika as the baseline, queues removed."""
    import asyncio

    from conftest import broker_url

    url = broker_url("amqp")
    config = BenchConfig(transport=url, facts=200, warmup=0, publish_batch=50, timeout=60.0)
    result = asyncio.run(run_bench(config))
    assert result.publisher_mode == "process"
    assert result.client.startswith("aio-pika")
    assert result.ratio is not None and result.drain_ratio is not None
    assert result.pipeline["handled"] == 600  # peak, half load and drain
    assert "guest:***@" in result.transport
    # The publisher processes' CPU, and the raw producer's (its process's).
    assert result.publisher_cpu_us_per_msg is not None and result.publisher_cpu_us_per_msg > 0
    assert result.baseline_publisher_cpu_us_per_msg is not None
    assert result.baseline_publisher_cpu_us_per_msg > 0
    # The same at half load, where each message is published by a call of its own.
    half = result.half_load
    assert half is not None
    assert half.publisher_cpu_us_per_msg is not None and half.publisher_cpu_us_per_msg > 0
    assert half.cpu_us_per_msg is not None and half.cpu_us_per_msg > 0
    data = result.as_json()
    assert data["publisher_cpu_us_per_msg"] == result.publisher_cpu_us_per_msg
    assert data["half_load"]["publisher_cpu_us_per_msg"] == half.publisher_cpu_us_per_msg
    again = BenchResult.from_json(data)
    assert again.baseline_publisher_cpu_us_per_msg == result.baseline_publisher_cpu_us_per_msg
    assert again.half_load == half


def test_each_adapter_registers_its_own_baseline() -> None:
    """Baselines come from the ``factbus.baselines`` entry points, each shipped by
    its adapter package (the core imports no adapter); an unknown scheme is named."""
    from importlib.metadata import entry_points

    from factbus.bench.baseline import baseline_for

    registered = {ep.name: ep.value for ep in entry_points(group="factbus.baselines")}
    transports = {ep.name for ep in entry_points(group="factbus.transports")}
    assert set(registered) == transports
    for scheme, target in registered.items():
        module = target.partition(":")[0]
        assert module.startswith("factbus.") == (scheme == "memory"), target
    urls = {
        "memory": "memory://",
        "amqp": "amqp://127.0.0.1/",
        "kafka": "kafka://127.0.0.1:9092",
        "kombu": "kombu+redis://127.0.0.1:6379/0",
    }
    for scheme, url in urls.items():
        baseline = baseline_for(url, "unused")
        assert type(baseline).__module__ == registered[scheme].partition(":")[0]
    with pytest.raises(ConfigError, match=r"no raw-client baseline for nats://"):
        baseline_for("nats://127.0.0.1", "unused")


def test_floor_verifies_every_hash_and_memory_is_measured() -> None:
    from factbus.bench.floor import floor_pass, memory_per_fact
    from factbus.bench.workload import WorkloadSpec, build_workload

    bodies = build_workload(WorkloadSpec(50, shape="chains", duplicates=0.2, seed=7)).bodies
    assert floor_pass(bodies) == 50  # duplicates are not handled twice
    tampered = bodies[3].replace(b'"label":"fact', b'"label":"fakt', 1)
    assert tampered != bodies[3]
    with pytest.raises(ValueError, match="hash mismatch"):
        floor_pass([*bodies[:3], tampered])
    assert memory_per_fact(bodies) > 100


def test_floor_measure_runs_enough_passes_for_a_steady_figure() -> None:
    from factbus.bench.floor import floor_measure

    bodies = build_workload(WorkloadSpec(40, seed=3)).bodies
    quick = floor_measure(bodies, min_passes=3, min_seconds=0.0)
    assert quick.passes == 3
    assert quick.per_s > 0 and quick.cpu_us_per_msg > 0
    timed = floor_measure(bodies, min_passes=2, min_seconds=0.2, max_passes=10_000)
    assert timed.passes > 2  # 40 bodies take far less than 0.2 s: more passes were made
    capped = floor_measure(bodies, min_passes=2, min_seconds=60.0, max_passes=4)
    assert capped.passes == 4
    with pytest.raises(ValueError, match="needs bodies"):
        floor_measure([])


@pytest.mark.broker("amqp")
def test_packed_envelopes_on_rabbitmq_carry_many_facts_per_message() -> None:
    """``--pack``: the publishers (processes) pack 25 facts per envelope; every fact
    is handled once, in fewer deliveries than facts."""
    import asyncio

    from conftest import broker_url

    url = broker_url("amqp")
    config = BenchConfig(
        transport=url,
        facts=300,
        warmup=0,
        publish_batch=100,
        pack=25,
        shape="chains",
        half_load=False,
        baseline=False,
        timeout=60.0,
    )
    result = asyncio.run(run_bench(config))
    assert result.pack == 25
    stats = result.pipeline
    assert stats["handled"] == 600 and stats["duplicates"] == 0  # peak and drain
    assert stats["facts_received"] == 600
    assert stats["messages"] <= 600 // 25 + 2 * 6  # ~25 per envelope (chains never split)


def test_replace_section_keeps_the_other_sections(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    replace_section(results, "## Stages", "## Stages\n\nfirst\n")  # a missing file
    assert results.read_text(encoding="utf-8") == "## Stages\n\nfirst\n"
    results.write_text("# Results\n\n## Matrix\n\nm\n\n## Stages\n\nold\n\n## Sidecar\n\ns\n")
    replace_section(results, "## Stages", "## Stages\n\nnew\n")  # in place
    assert results.read_text(encoding="utf-8") == (
        "# Results\n\n## Matrix\n\nm\n\n## Stages\n\nnew\n\n## Sidecar\n\ns\n"
    )
    replace_section(results, "## Store growth", "## Store growth\n\ng")  # appended
    assert results.read_text(encoding="utf-8").endswith("## Sidecar\n\ns\n\n## Store growth\n\ng\n")


async def test_gc_freeze_is_the_commands_choice_not_the_librarys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``factbus bench --gc-freeze`` freezes start-up objects as ``factbus worker``
    does; by default the collector is left as an embedding application has it."""
    monkeypatch.delenv(GC_FREEZE_ENV, raising=False)
    gc.unfreeze()
    try:
        plain = await run_bench(BenchConfig(store="memory://", baseline=False, drain=False, **TINY))
        assert gc.get_freeze_count() == 0
        assert plain.gc_frozen is False
        frozen = await run_bench(
            BenchConfig(store="memory://", baseline=False, drain=False, gc_freeze=True, **TINY)
        )
        assert gc.get_freeze_count() > 1000  # modules, classes, functions, the bus
        assert frozen.gc_frozen is True
        assert frozen.as_json()["gc_frozen"] is True
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        assert config_from(parser.parse_args(["--facts", "10"])).gc_freeze is False
        assert config_from(parser.parse_args(["--gc-freeze"])).gc_freeze is True
    finally:
        gc.unfreeze()  # the test process's collector as it was


def test_a_paced_publisher_process_sets_its_workloads_aside_from_the_collector() -> None:
    """While a publisher process publishes a paced job, what was alive at its start
    (the workloads) is frozen, so a full collection in the phase does not walk it
    (PROFILE.md §20); a workload forgotten meanwhile is still freed, and afterwards
    the collector is as before. Unpaced jobs freeze nothing."""
    gc.unfreeze()
    try:
        spec = WorkloadSpec(facts=2_000, seed=7)
        workloads = {spec: build_workload(spec)}
        with _set_aside(paced=False):
            assert gc.get_freeze_count() == 0
        tracked = len(gc.get_objects())
        with _set_aside(paced=True):
            assert gc.get_freeze_count() >= tracked  # the workload too
            assert len(gc.get_objects()) < 100  # a full collection walks none of it
            before = gc.get_freeze_count()
            forget_published(workloads, spec)
            assert before - gc.get_freeze_count() >= 2 * 2_000  # a Fact and a FactRef per fact
        assert gc.get_freeze_count() == 0
        assert len(gc.get_objects()) > 1_000  # back in the collector's walks
    finally:
        gc.unfreeze()  # the test process's collector as it was


async def test_publish_inflight_publishes_every_fact_once_and_all_are_handled() -> None:
    """``--publish-inflight 4``: publish calls overlap (warm-up, peak, drain backlog),
    every fact is published exactly once and the consumer handles every one."""
    phases = Phases()
    result = await run_bench(
        BenchConfig(
            store="memory://",
            publish_inflight=4,
            baseline=False,
            half_load=False,
            **{**TINY, "publish_batch": 10},  # 30 calls per publisher: more than 4 at once
        ),
        phases,
    )
    assert result.publish_inflight == 4
    assert result.as_json()["publish_inflight"] == 4
    assert result.messages == 300  # one message per fact, none twice
    assert phases.done["peak"] == 300 and phases.done["drain"] == 300
    stats = result.pipeline
    assert stats["duplicates"] == 0  # no fact reached the consumer twice
    assert stats["handled"] == 30 + 300 + 300  # warm-up, peak, drain: each fact once
    assert result.latency_ms.count == 300  # every fact stamped by its call and handled
    assert BenchResult.from_json(result.as_json()).publish_inflight == 4
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from(parser.parse_args([])).publish_inflight == 1
    assert config_from(parser.parse_args(["--publish-inflight", "4"])).publish_inflight == 4


@pytest.mark.parametrize("shape", ["chains", "fan-in"])
def test_publish_inflight_is_refused_where_publish_order_is_causal(shape: str) -> None:
    """Overlapping calls could put a fact on the broker before its predecessors:
    refused for ordered shapes, allowed once the order is shuffled anyway."""
    with pytest.raises(ConfigError, match=f"--shape {shape} needs --publish-inflight 1"):
        BenchConfig(shape=shape, publish_inflight=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        BenchConfig(publish_inflight=0)
    assert BenchConfig(shape=shape, reorder=True, publish_inflight=2).publish_inflight == 2  # type: ignore[arg-type]


def _tiny_cli_args(json_path: Path) -> list[str]:
    return [
        "bench",
        "--facts",
        "100",
        "--warmup",
        "10",
        "--store",
        "memory://",
        "--no-half-load",
        "--no-drain",
        "--no-baseline",
        "--quiet",
        "--json",
        str(json_path),
    ]


def test_json_and_table_say_whether_the_native_helper_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert main(_tiny_cli_args(out)) == 0
    data = json.loads(out.read_text())
    assert data["native"] is envelope.NATIVE
    assert data["native_reason"] == envelope.NATIVE_REASON
    assert (data["native_reason"] == "") is envelope.NATIVE
    title = " ".join(capsys.readouterr().out.split())
    assert ("native helper: on" if envelope.NATIVE else "native helper: off") in title
    assert BenchResult.from_json(data).native is envelope.NATIVE


def test_a_bench_on_the_python_receive_path_says_so_and_why(tmp_path: Path) -> None:
    """FACTBUS_NATIVE=0 stands for any fallback: the run must not look native."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "factbus", *_tiny_cli_args(out)],
        env={**os.environ, "FACTBUS_NATIVE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["native"] is False
    assert "FACTBUS_NATIVE=0" in data["native_reason"]
    shown = " ".join(done.stdout.split())
    assert "native helper: off, Python receive path (turned off (FACTBUS_NATIVE=0))" in shown
    assert "(no native helper)" in markdown([BenchResult.from_json(data)])


async def test_a_paced_job_publishes_each_message_once_and_fails_with_a_failed_call() -> None:
    """A paced job (the half load's publisher) looks at the calls completed since its
    last call rather than at every call in flight (PROFILE.md §25): every message is
    still published once and stamped, and a call that fails fails the job."""
    spec = WorkloadSpec(facts=400, seed=11)
    workload = build_workload(spec)
    job = PublishJob(spec=spec, publish_batch=25, rate=40_000.0)
    bus = Bus("memory://", "memory://", topic="paced-once", node="paced-pub", consume=False)
    await bus.start()
    try:
        received = await bus.transport.subscribe("paced-once", "paced-reader")
        report = await publish_share(bus, workload, job, 0, 1)
        assert report.messages == workload.messages
        assert all(report.stamps[n] > 0 for n in range(spec.facts))
        bodies: list[bytes] = []
        while batch := await take_batch(received, 1000, timeout=0.2):
            bodies += batch.bodies
            await batch.ack()
        assert sorted(bodies) == sorted(workload.bodies)  # each message once
    finally:
        await bus.aclose()

    failing = Bus("memory://", "memory://", topic="paced-fails", node="paced-pub2", consume=False)
    await failing.start()
    try:
        publish = failing.publish
        calls = 0

        async def publish_then_fail(*facts: Any, **options: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 5:  # a later call fails while others are in flight or done
                await failing.transport.aclose()
            return await publish(*facts, **options)

        failing.publish = publish_then_fail  # type: ignore[method-assign]
        with pytest.raises(TransportError, match="closed"):
            await publish_share(failing, workload, PublishJob(spec, 25, rate=40_000.0), 0, 1)
    finally:
        await failing.aclose()


def _bench_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``factbus bench ARGS`` run as a user runs it (a process of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "factbus", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _closed_port() -> int:
    """A local TCP port nobody listens on (bound, then closed again)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("scheme", "cause"),
    [
        ("amqp://guest:guest@127.0.0.1:{port}/", "Connect call failed"),
        ("kafka://127.0.0.1:{port}?request_timeout=2", "Broker transport failure"),
    ],
)
def test_an_unreachable_broker_is_one_line_naming_it_and_the_cause(scheme: str, cause: str) -> None:
    """``factbus bench`` against a closed local port: exit 2 at once, before the run
    makes anything, with one line naming the broker and why (no traceback, no run,
    no clean-up of what could not have been made)."""
    port = _closed_port()
    url = scheme.format(port=port)
    done = _bench_cli("--transport", url, "--facts", "10")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("factbus bench: "), done.stderr
    assert f"127.0.0.1:{port}" in last and cause in last and "nothing was run" in last, last
    assert "guest:guest" not in done.stderr  # the password is redacted
    for noise in ("Traceback", "run bench-", "NOT removed", "publisher"):
        assert noise not in done.stderr, done.stderr


def test_a_store_that_cannot_be_opened_is_one_line_naming_it_and_the_cause() -> None:
    """``--store`` naming a PostgreSQL server on a closed local port: exit 2 before
    the run, one line with the (redacted) URL and the driver's reason."""
    port = _closed_port()
    store = f"postgresql://bench:secret@127.0.0.1:{port}/bench"
    done = _bench_cli("--store", store, "--facts", "10")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"factbus bench: cannot open the store postgresql://bench:***@127.0.0.1:{port}/bench: "
    ), lines
    assert "refused" in lines[0].lower() or "connect call failed" in lines[0].lower(), lines


def test_an_unknown_scheme_is_one_line() -> None:
    done = _bench_cli("--transport", "nats://127.0.0.1:1", timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("factbus bench: no transport for nats:// (known: amqp://"), lines
