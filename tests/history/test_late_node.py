"""A node that starts after the facts were published converges: same handled set,
same digest as a node that was there from the start, each fact once, in causal
order; on Kafka (a new consumer group reads the topic) and on RabbitMQ with
``history=stream`` (a new node reads the stream from the first offset). On the
stream, a restarted node resumes exactly at the position its store kept.

Size: ``FACTBUS_LATE_FACTS`` facts (default 10,000), published shuffled with 30 %
duplicates, each in an envelope of its own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from conftest import broker_url
from factbus import Bus
from factbus.testing.brokers import unique, with_options
from factbus.testing.scenario import CausalChecker, random_dag, shuffled_with_duplicates

FACTS = int(os.environ.get("FACTBUS_LATE_FACTS", "10000"))


def url_of(name: str) -> str:
    if name == "kafka":
        return f"{broker_url('kafka')}?session_timeout=6&heartbeat_interval=0.5"
    return with_options(broker_url("amqp"), "history=stream")


@pytest.fixture
def topic() -> str:
    return unique("late")


def node(url: str, store: Path, topic: str, name: str, checker: CausalChecker) -> Bus:
    bus = Bus(url, f"sqlite:///{store}", topic=topic, node=name, batch_size=512)
    for fact_type in ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn"):
        bus.handler(fact_type)(lambda fact, _n=name: checker.record(_n, fact))
    return bus


async def wait_complete(checker: CausalChecker, name: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not checker.complete(name):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "transport",
    [
        pytest.param("kafka", marks=pytest.mark.broker("kafka")),
        pytest.param("amqp-stream", marks=pytest.mark.broker("amqp")),
    ],
)
@pytest.mark.timeout(600)
async def test_late_node_converges(transport: str, topic: str, tmp_path: Path) -> None:
    url = url_of(transport)
    dag = random_dag(FACTS, seed=13)
    order = shuffled_with_duplicates(dag, duplicates=0.3, seed=13)
    checker = CausalChecker.of(dag)
    early = node(url, tmp_path / "early.db", topic, f"early-{topic}", checker)
    async with early, Bus(url, "memory://", topic=topic, node=f"pub-{topic}", consume=False) as pub:
        for start in range(0, len(order), 500):
            await pub.publish(*order[start : start + 500], ancestors=False)
        await wait_complete(checker, f"early-{topic}", 300)
        late_name = f"late-{topic}"
        late = node(url, tmp_path / "late.db", topic, late_name, checker)
        async with late:
            await wait_complete(checker, late_name, 300)
            await late.drain(timeout=60)
    report = checker.report([f"early-{topic}", late_name])
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.out_of_order == 0
    assert report.converged, report.digests

    if transport == "amqp-stream":
        # The late node restarts: it resumes at the position its store kept and
        # receives nothing again (no redelivery storm).
        again = node(url, tmp_path / "late.db", topic, late_name, checker)
        async with again:
            await asyncio.sleep(1.0)
            await again.drain(timeout=30)
            assert again.stats.messages == 0
