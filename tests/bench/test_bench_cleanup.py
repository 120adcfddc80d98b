"""``factbus bench`` removes what it made on the broker when it ends (also after a
failure or a cancellation), touches nothing else, and ``keep`` keeps it all.

Checked through the broker itself, by name (:func:`factbus.testing.sweep.present`
lists topics, consumer groups, queues, exchanges and Redis keys): each run is
named with :func:`unique`, so objects of concurrent runs never count, and the
conftest's sweep removes whatever a failing test leaves. Workloads are tiny
(200 facts): a run costs a few seconds per broker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from factbus.bench import BenchConfig, run_bench
from factbus.bench.cleanup import Made, remove_made
from factbus.testing import names
from factbus.testing.brokers import broker_url, unique
from factbus.testing.sweep import containing, present
from factbus.transport import open_transport

KINDS = [pytest.param(kind, marks=pytest.mark.broker(kind)) for kind in ("kafka", "amqp")]
KINDS += [
    pytest.param("redis", marks=pytest.mark.broker("redis")),
    pytest.param("kombu_amqp", marks=pytest.mark.broker("amqp")),
]

SMALL: dict[str, Any] = {
    "facts": 200,
    "warmup": 0,
    "publish_batch": 50,
    "half_load": False,
    "timeout": 60.0,
}


def left(kind: str, url: str, name: str) -> list[str]:
    """What the broker holds whose name contains ``name``."""
    return present({kind: {url}}, containing([name]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_leaves_nothing_it_made(kind: str) -> None:
    """Baseline, peak and both drains (every destination the bench makes), publishers
    in processes as ``factbus bench`` runs them: nothing named by the run is left."""
    url = broker_url(kind)
    name = unique("bench")
    result = asyncio.run(run_bench(BenchConfig(transport=url, name=name, **SMALL)))
    assert result.pipeline["handled"] == 400  # peak and drain: the run did run
    assert left(kind, url, name) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_keep_keeps_what_the_run_made_and_remove_made_takes_only_that(kind: str) -> None:
    """With ``keep`` the run's topic, node group and raw destinations are all still
    there (so the test above could fail); :func:`remove_made` then removes every one
    of them and nothing else: a neighbour whose name starts with the run's stays."""
    url = broker_url(kind)
    name = unique("bench")
    config = BenchConfig(transport=url, name=name, keep=True, publisher_mode="task", **SMALL)
    await run_bench(config)
    kept = left(kind, url, name)
    for made_name in (name, f"{name}-raw", f"{name}-raw-drain"):
        assert any(made_name in line for line in kept), (made_name, kept)
    neighbour = f"{name}-raw-drain-neighbour"
    transport = open_transport(url)
    await transport.connect()
    try:
        await (await transport.subscribe(neighbour, f"{neighbour}-group")).aclose()
    finally:
        await transport.aclose()
    made = Made(url, name, [f"{name}-consumer"], [f"{name}-raw", f"{name}-raw-drain"])
    assert await remove_made(made) == []
    remaining = left(kind, url, name)
    assert remaining, "the neighbour was removed too"
    assert all(neighbour in line for line in remaining), remaining


class _CancelAt:
    """An observer that cancels ``task`` when phase ``at`` begins."""

    def __init__(self, at: str) -> None:
        self.at = at
        self.task: asyncio.Task[Any] | None = None
        self.reached = False

    def phase(self, name: str, total: int) -> None:
        if name == self.at and self.task is not None:
            self.reached = True
            asyncio.get_running_loop().call_later(0.2, self.task.cancel)

    def advance(self, name: str, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@pytest.mark.broker("kafka")
async def test_a_cancelled_run_still_removes_what_it_made() -> None:
    """Cancelled in the middle of the peak (what Ctrl-C does to ``factbus bench``),
    with the consumer's group joined and the raw baseline's topic and group made:
    nothing named by the run is left once the cancellation has gone through."""
    url = broker_url("kafka")
    name = unique("bench")
    observer = _CancelAt("peak")
    config = BenchConfig(transport=url, name=name, **{**SMALL, "facts": 20_000})
    task = asyncio.ensure_future(run_bench(config, observer))
    observer.task = task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observer.reached
    assert left("kafka", url, name) == []


@pytest.mark.broker("amqp")
def test_a_failed_run_still_removes_what_it_made() -> None:
    """The peak timing out fails the run (its error is what the caller gets), with
    the node's queue bound and messages in it: what the run made is removed all the
    same. (No raw baseline: it would time out first, and tear its own queue down.)"""
    url = broker_url("amqp")
    name = unique("bench")
    config = BenchConfig(
        transport=url, name=name, baseline=False, **{**SMALL, "facts": 20_000, "timeout": 0.5}
    )
    with pytest.raises(TimeoutError):
        asyncio.run(run_bench(config))
    assert left("amqp", url, name) == []


async def test_a_memory_run_forgets_its_namespace() -> None:
    """memory:// holds a run's queues in the process: they go with the run."""
    from factbus.transport.memory import MemoryTransport

    before = set(MemoryTransport._namespaces)
    await run_bench(BenchConfig(store="memory://", **{**SMALL, "facts": 100}))
    assert set(MemoryTransport._namespaces) <= before


@pytest.mark.broker("kafka")
def test_ctrl_c_on_the_command_removes_what_the_run_made() -> None:
    """``factbus bench`` interrupted by SIGINT (Ctrl-C: sent to its process group,
    publisher processes included) mid-run exits 130 having removed what it made.
    The run's name is read from its first progress line."""
    url = broker_url("kafka")
    command = [sys.executable, "-m", "factbus", "bench", "--transport", url]
    command += ["--facts", "50000", "--warmup", "0", "--no-half-load", "--timeout", "60"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    name, rest = "", ""
    with subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        assert process.stderr is not None
        try:
            for line in process.stderr:
                found = re.search(r"run (bench-[0-9a-f]{8}): ", line)
                if found:
                    name = found.group(1)
                    names.record(name)  # the suite's sweep removes it if this test fails
                if "facts as" in line:  # workloads built: the baseline phase begins
                    break
            assert name, "no run name on stderr"
            time.sleep(1.5)  # the raw baseline's topic made, its group joined
            assert process.poll() is None, "the run ended before it was interrupted"
            os.killpg(process.pid, signal.SIGINT)
            rest = process.stderr.read()
            assert process.wait(timeout=120) == 130, rest
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert "interrupted" in rest
    assert f"removed what the run made on the broker ({name}*)" in rest
    assert left("kafka", url, name) == []
