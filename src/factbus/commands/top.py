"""Live view of running nodes, from their Prometheus metrics.

  factbus top --metrics http://127.0.0.1:9464/metrics http://127.0.0.1:9465/metrics

Scrapes every URL each --interval seconds and shows, per node (topic, node):
facts received and handled per second, totals of handled, duplicates and
parked facts, facts waiting now, consumer lag (summed over partitions), dead
letters (envelopes rejected, by reason, plus facts whose handler failed), and
the slowest handlers (mean seconds per fact type over the last interval, or
since start on the first screen). An endpoint that does not answer is shown
with its error and tried again next round.

--once scrapes twice, --interval apart, prints one table and exits: 0 when
every endpoint answered, 1 otherwise. Needs factbus[metrics] (the parser of
prometheus-client).
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from factbus.errors import ConfigError

SCRAPE_TIMEOUT = 5.0
SLOWEST = 5  # handlers listed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--metrics",
        nargs="+",
        required=True,
        metavar="URL",
        help="metrics endpoints (factbus worker --metrics-port, the sidecar's /metrics)",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between scrapes (default 2)"
    )
    parser.add_argument("--once", action="store_true", help="print one screen and exit")


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ConfigError("--interval must be positive")
    try:
        import prometheus_client.parser  # noqa: F401
    except ImportError:
        raise ConfigError(
            "prometheus-client is not installed: pip install 'factbus[metrics]'"
        ) from None
    console = Console()
    previous = scrape_all(args.metrics)
    if args.once:
        time.sleep(args.interval)
        current = scrape_all(args.metrics)
        console.print(render(previous, current))
        return 0 if all(s.error is None for s in current) else 1
    with Live(render(None, previous), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            current = scrape_all(args.metrics)
            live.update(render(previous, current), refresh=True)
            previous = current


# -- scraping ---------------------------------------------------------------------

NodeKey = tuple[str, str]  # (topic, node)


@dataclass
class NodeSample:
    """What one scrape says about one node."""

    counters: dict[str, float] = field(default_factory=dict)
    """``handled``, ``received``, ``duplicates``, ``parked``, ``failed``, ``rejected``."""
    rejected_by_reason: dict[str, float] = field(default_factory=dict)
    waiting: float = 0.0
    lag: float | None = None
    handler_sum: dict[str, float] = field(default_factory=dict)
    handler_count: dict[str, float] = field(default_factory=dict)


@dataclass
class Scrape:
    """One endpoint at one instant."""

    url: str
    at: float
    nodes: dict[NodeKey, NodeSample] = field(default_factory=dict)
    error: str | None = None


_COUNTER_NAMES = {
    "factbus_facts_handled": "handled",
    "factbus_facts_received": "received",
    "factbus_facts_duplicates": "duplicates",
    "factbus_facts_parked": "parked",
    "factbus_facts_failed": "failed",
}


def parse(url: str, text: str, at: float) -> Scrape:
    """Read the factbus metrics out of one Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    nodes: dict[NodeKey, NodeSample] = defaultdict(NodeSample)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "topic" not in labels or "node" not in labels:
                continue
            node = nodes[(labels["topic"], labels["node"])]
            name, value = sample.name, float(sample.value)
            base = name.removesuffix("_total")
            if name.endswith("_total") and base in _COUNTER_NAMES:
                node.counters[_COUNTER_NAMES[base]] = value
            elif name == "factbus_facts_rejected_total":
                reason = labels.get("reason", "")
                node.rejected_by_reason[reason] = value
                node.counters["rejected"] = node.counters.get("rejected", 0.0) + value
            elif name == "factbus_facts_waiting":
                node.waiting = value
            elif name == "factbus_consumer_lag":
                node.lag = (node.lag or 0.0) + value
            elif name == "factbus_handler_duration_seconds_sum":
                node.handler_sum[labels.get("fact_type", "")] = value
            elif name == "factbus_handler_duration_seconds_count":
                node.handler_count[labels.get("fact_type", "")] = value
    return Scrape(url, at, dict(nodes))


def scrape(url: str) -> Scrape:
    at = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            text = response.read().decode("utf-8")
    except Exception as error:
        return Scrape(url, at, error=f"{type(error).__name__}: {error}")
    try:
        return parse(url, text, at)
    except Exception as error:
        return Scrape(url, at, error=f"not Prometheus text: {error}")


def scrape_all(urls: Sequence[str]) -> list[Scrape]:
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        return list(pool.map(scrape, urls))


# -- rendering ----------------------------------------------------------------------


def _rate(now: NodeSample, before: NodeSample | None, name: str, seconds: float) -> str:
    if before is None or seconds <= 0:
        return "-"
    delta = now.counters.get(name, 0.0) - before.counters.get(name, 0.0)
    return f"{max(delta, 0.0) / seconds:,.1f}"


def render(previous: Sequence[Scrape] | None, current: Sequence[Scrape]) -> Group:
    """The nodes table and the slowest-handlers table."""
    nodes = Table(title="factbus nodes", title_justify="left")
    for column in (
        "endpoint",
        "topic",
        "node",
        "recv/s",
        "handled/s",
        "handled",
        "dup",
        "parked",
        "waiting",
        "lag",
        "dead letters",
    ):
        left = column in ("endpoint", "topic", "node", "dead letters")
        nodes.add_column(column, justify="left" if left else "right")
    before = {s.url: s for s in previous or ()}
    slow: list[tuple[float, str, str, str, float]] = []
    for current_scrape in current:
        if current_scrape.error is not None:
            nodes.add_row(current_scrape.url, "", "", *[""] * 7, f"[red]{current_scrape.error}")
            continue
        earlier = before.get(current_scrape.url)
        seconds = current_scrape.at - earlier.at if earlier and earlier.error is None else 0.0
        for (topic, node), sample in sorted(current_scrape.nodes.items()):
            old = earlier.nodes.get((topic, node)) if earlier else None
            c = sample.counters
            dead = int(c.get("rejected", 0) + c.get("failed", 0))
            reasons = ", ".join(
                f"{reason} {int(n)}" for reason, n in sorted(sample.rejected_by_reason.items()) if n
            )
            if c.get("failed"):
                reasons = ", ".join(filter(None, [reasons, f"handler {int(c['failed'])}"]))
            nodes.add_row(
                current_scrape.url,
                topic,
                node,
                _rate(sample, old, "received", seconds),
                _rate(sample, old, "handled", seconds),
                f"{int(c.get('handled', 0)):,}",
                f"{int(c.get('duplicates', 0)):,}",
                f"{int(c.get('parked', 0)):,}",
                f"{int(sample.waiting):,}",
                "-" if sample.lag is None else f"{int(sample.lag):,}",
                f"{dead:,}" + (f" ({reasons})" if reasons else ""),
            )
            for fact_type, count in sample.handler_count.items():
                total = sample.handler_sum.get(fact_type, 0.0)
                if old is not None and old.handler_count.get(fact_type, 0) < count:
                    count -= old.handler_count.get(fact_type, 0.0)
                    total -= old.handler_sum.get(fact_type, 0.0)
                if count > 0:
                    slow.append((total / count, topic, node, fact_type, count))
    handlers = Table(title="slowest handlers (mean per fact)", title_justify="left")
    for column in ("fact type", "node", "topic", "mean ms", "facts"):
        right = column in ("mean ms", "facts")
        handlers.add_column(column, justify="right" if right else "left")
    for mean, topic, node, fact_type, count in sorted(slow, reverse=True)[:SLOWEST]:
        handlers.add_row(fact_type, node, topic, f"{mean * 1000:,.3f}", f"{int(count):,}")
    return Group(nodes, handlers)
