"""The Grafana dashboard and ``factbus top`` read what factbus exports.

Every metric a dashboard query names must be a sample that a running bus
actually exports (scraped over HTTP after a small workload that touches every
metric), and ``factbus top --once`` must show that bus's numbers.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from obs_support import scrape, scrape_until, value

from factbus import Bus, Fact, Message
from factbus.metrics import EXPORTED, Metrics, MetricsServer
from factbus.testing.brokers import unique

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "factbus.json"
METRIC = re.compile(r"\bfactbus_[a-z0-9_]+")


def _queries(node: object) -> list[str]:
    """Every PromQL string in the dashboard: panel targets and template queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "definition") and isinstance(item, str):
                found.append(item)
            elif key == "query" and isinstance(item, str | dict):
                found.extend(_queries({"expr": item}) if isinstance(item, str) else _queries(item))
            else:
                found.extend(_queries(item))
    elif isinstance(node, list):
        for item in node:
            found.extend(_queries(item))
    return found


@pytest.fixture
async def busy_node() -> AsyncIterator[tuple[MetricsServer, str]]:
    """A memory bus that handled, parked, released, rejected and failed facts."""
    topic = unique("obs")
    metrics = Metrics(lag_interval=0.1)
    server = metrics.serve(0)
    bus = Bus(
        f"memory://{topic}",
        "memory://",
        topic=topic,
        node="dash-node",
        metrics=metrics,
        retry_attempts=1,
    )
    bus.handler("Dash.Root")(lambda fact: None)
    bus.handler("Dash.Child")(lambda fact: None)

    @bus.handler("Dash.Boom")
    def boom(fact: Fact) -> None:
        raise ValueError("no")

    root = Fact("Dash.Root", {"i": 1})
    try:
        async with bus:
            await bus.publish(Fact("Dash.Child", {"i": 1}, {"root": root}), ancestors=False)
            await bus.drain()
            await bus.publish(root, root, Fact("Dash.Boom", {"i": 1}), ancestors=False)
            await bus.transport.publish(topic, [Message(b"[]", "bad")])
            await bus.drain()
            await scrape_until(
                server.url,
                lambda s: (
                    value(s, "factbus_facts_handled_total") == 2
                    and value(s, "factbus_facts_rejected_total") == 1
                    and any(n == "factbus_consumer_lag" for n, _ in s)
                ),
            )
            yield server, topic
    finally:
        server.close()


async def test_every_metric_the_dashboard_queries_is_exported(
    busy_node: tuple[MetricsServer, str],
) -> None:
    server, _ = busy_node
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(dashboard)
    assert len(queries) >= 10
    queried = {name for query in queries for name in METRIC.findall(query)}
    assert queried, "the dashboard queries no factbus metric"
    exported = {name for name, _ in await scrape(server.url)}
    assert queried <= EXPORTED, sorted(queried - EXPORTED)
    assert queried <= exported, sorted(queried - exported)
    # And the names are all there.
    for name in (
        "factbus_facts_handled_total",
        "factbus_facts_duplicates_total",
        "factbus_facts_parked_total",
        "factbus_facts_rejected_total",
        "factbus_facts_failed_total",
        "factbus_facts_waiting",
        "factbus_handler_duration_seconds_count",
        "factbus_end_to_end_latency_seconds_count",
        "factbus_consumer_lag",
    ):
        assert name in exported, name


async def test_top_once_shows_the_node(busy_node: tuple[MetricsServer, str]) -> None:
    server, topic = busy_node
    dead = "http://127.0.0.1:9/metrics"  # discard port: nothing listens
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "factbus",
            "top",
            "--metrics",
            server.url,
            dead,
            "--once",
            "--interval",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    )
    out = result.stdout
    assert result.returncode == 1, result.stderr  # one endpoint did not answer
    (row,) = [line for line in out.splitlines() if server.url in line and topic in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    # handled, dup, parked, waiting, lag, dead letters
    assert cells[5:10] == ["2", "1", "1", "0", "0"], cells
    assert cells[10] == "2 (malformed 1, handler 1)", cells
    assert "ConnectionRefusedError" in out or "Connection refused" in out
    assert "Dash.Root" in out and "Dash.Boom" in out  # slowest handlers


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split("[│┃]", line)]


@pytest.mark.parametrize("width", [80, 132])
async def test_top_fits_the_terminal_and_cuts_no_number(
    busy_node: tuple[MetricsServer, str], width: int
) -> None:
    """At 80 and 132 columns: no line wider, nothing cut with an ellipsis, every
    figure shown whole (less important columns give way first: whole URLs,
    reasons beside the count, duplicates, parked; see top.LAYOUTS)."""
    server, topic = busy_node
    dead = "http://127.0.0.1:9/metrics"
    argv = [sys.executable, "-m", "factbus", "top", "--metrics", server.url, dead, "--once"]
    result = await asyncio.to_thread(
        subprocess.run,
        [*argv, "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": str(width), "PATH": "/usr/bin:/bin"},
    )
    out = result.stdout
    assert result.returncode == 1, result.stderr
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= width, out
    lines = out.splitlines()
    header = _cells(next(line for line in lines if "handled/s" in line))
    row = next(_cells(line) for line in lines if "dash-node" in line and "│" in line)
    shown = dict(zip(header, row, strict=True))
    assert shown["node"] == "dash-node"
    for column, figure in {"handled": "2", "waiting": "0", "lag": "0"}.items():
        assert shown[column] == figure, shown
    assert shown.get("dead letters", shown.get("dead", "")).split()[0] == "2", shown
    if width >= 132:  # one endpoint live, one not: every number column has room
        assert (shown["dup"], shown["parked"]) == ("1", "1"), shown
        assert "recv/s" in shown
    assert topic in out
    # The reasons: beside the count, or one row each in their own table.
    flat = " ".join(out.split())
    inline = "(malformed 1, handler 1)" in flat
    by_reason = {
        cells[-2]: cells[-1]
        for cells in (_cells(line) for line in lines)
        if len(cells) >= 3 and cells[-2] in ("malformed", "handler")
    }
    assert inline or by_reason == {"malformed": "1", "handler": "1"}, out
    assert dead in out and ("ConnectionRefusedError" in flat or "Connection refused" in flat)
    assert "Dash.Root" in out and "Dash.Boom" in out


def test_top_refuses_a_bad_interval() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "factbus", "top", "--metrics", "http://x", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--interval must be positive" in result.stderr
