"""Live view of running nodes, from their Prometheus metrics.

  factbus top --metrics http://127.0.0.1:9464/metrics http://127.0.0.1:9465/metrics

Scrapes every URL each --interval seconds and shows, per node (topic, node):
facts received and handled per second, totals of handled, duplicates and
parked facts, facts waiting now, consumer lag (summed over partitions), dead
letters (envelopes rejected, by reason, plus facts whose handler failed), and
the slowest handlers (mean seconds per fact type over the last interval, or
since start on the first screen). An endpoint that does not answer is shown
with its error and tried again next round. The tables fit the terminal's
width (:data:`LAYOUTS`: less important columns give way first, numbers are
never cut).

--once scrapes twice, --interval apart, prints one table and exits: 0 when
every endpoint answered, 1 otherwise. Needs factbus[metrics] (the parser of
prometheus-client).
"""

from __future__ import annotations

import argparse
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

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

NUMBERS = ("recv/s", "handled/s", "handled", "dup", "parked", "waiting", "lag")
"""The nodes table's number columns, in order, after endpoint, topic and node."""


@dataclass(frozen=True)
class NodeRow:
    """One node's figures, formatted, whatever the screen's width."""

    url: str
    topic: str
    node: str
    numbers: dict[str, str]
    """Keyed by :data:`NUMBERS`."""
    dead: str
    """Dead letters: rejected plus failed."""
    reasons: list[tuple[str, str]]
    """(reason, count) of the dead letters; the handler's failures as ``handler``."""


@dataclass(frozen=True)
class Layout:
    """How much of the screen the tables may take: each step down
    (:data:`LAYOUTS`) drops or abbreviates something less important and
    never cuts a number."""

    endpoint: str
    """``url`` (whole), ``host`` (host:port, and the path unless /metrics) or
    ``index`` (1, 2, ... with the URLs listed under the table)."""
    reasons_inline: bool
    """Dead-letter reasons beside the count, or in a table of their own."""
    topic_column: bool
    """A topic column, or (one topic only) the topic in the title."""
    drop: tuple[str, ...] = ()
    """Number columns left out (duplicates, parked, received/s: the totals and
    rate a reader can do without before handled/s, waiting, lag)."""


LAYOUTS = (
    Layout("url", True, True),
    Layout("host", True, False),
    Layout("host", False, False),
    Layout("index", False, False),
    Layout("index", False, False, ("dup",)),
    Layout("index", False, False, ("dup", "parked")),
    Layout("index", False, False, ("dup", "parked", "recv/s")),
)
"""From the widest (every column, whole URLs; 132 columns fit one endpoint with
short names) to the narrowest (80 columns fit several endpoints)."""


def _rate(now: NodeSample, before: NodeSample | None, name: str, seconds: float) -> str:
    if before is None or seconds <= 0:
        return "-"
    delta = now.counters.get(name, 0.0) - before.counters.get(name, 0.0)
    return f"{max(delta, 0.0) / seconds:,.1f}"


def host(url: str) -> str:
    """``host:port`` of a metrics URL, with its path unless it is ``/metrics``."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        return url
    path = parts.path if parts.path not in ("", "/", "/metrics") else ""
    return parts.netloc + path + (f"?{parts.query}" if parts.query else "")


class Screen:
    """The nodes table, the dead letters by reason (when not beside the counts),
    the endpoints that did not answer and the slowest-handlers table, laid out
    for the width rich renders it at (:data:`LAYOUTS`: the first that fits)."""

    def __init__(
        self,
        urls: list[str],
        rows: list[NodeRow],
        errors: dict[str, str],
        slow: list[tuple[float, str, str, str, float]],
    ) -> None:
        self.urls = urls
        self.rows = rows
        self.errors = errors
        self.slow = sorted(slow, reverse=True)[:SLOWEST]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        topics = {row.topic for row in self.rows}
        for layout in LAYOUTS:
            if not layout.topic_column and len(topics) > 1:
                layout = replace(layout, topic_column=True)
            parts = self.parts(layout)
            if self.fits(console, options, parts):
                break
        yield from parts

    @staticmethod
    def fits(console: Console, options: ConsoleOptions, parts: list[RenderableType]) -> bool:
        wide = options.update_width(10_000)
        return all(
            Measurement.get(console, wide, part).maximum <= options.max_width
            for part in parts
            if isinstance(part, Table)
        )

    def _endpoint(self, layout: Layout, url: str) -> str:
        if layout.endpoint == "index":
            return str(self.urls.index(url) + 1)
        return host(url) if layout.endpoint == "host" else url

    def parts(self, layout: Layout) -> list[RenderableType]:
        topics = sorted({row.topic for row in self.rows})
        title = "factbus nodes"
        if not layout.topic_column and topics:
            title += f", topic {topics[0]}"
        nodes = Table(title=title, title_justify="left", show_edge=False)
        numbers = [n for n in NUMBERS if n not in layout.drop]
        nodes.add_column("#" if layout.endpoint == "index" else "endpoint", no_wrap=True)
        if layout.topic_column:
            nodes.add_column("topic", overflow="fold")
        nodes.add_column("node", overflow="fold")
        for column in numbers:
            nodes.add_column(column, justify="right", no_wrap=True)
        nodes.add_column("dead letters" if layout.reasons_inline else "dead", no_wrap=True)
        for url in self.urls:
            endpoint = self._endpoint(layout, url)
            if url in self.errors:
                blank = [""] * (len(numbers) + (2 if layout.topic_column else 1))
                nodes.add_row(endpoint, *blank, "[red]no answer")
                continue
            for row in self.rows:
                if row.url != url:
                    continue
                dead = row.dead
                if layout.reasons_inline and row.reasons:
                    dead += " (" + ", ".join(f"{r} {n}" for r, n in row.reasons) + ")"
                nodes.add_row(
                    endpoint,
                    *([row.topic] if layout.topic_column else []),
                    row.node,
                    *(row.numbers[n] for n in numbers),
                    dead,
                )
        parts: list[RenderableType] = [nodes]
        if layout.endpoint == "index":
            parts.append(Text("\n".join(f"{i} {u}" for i, u in enumerate(self.urls, 1))))
        reasons = [row for row in self.rows if row.reasons]
        if not layout.reasons_inline and reasons:
            table = Table(title="dead letters by reason", title_justify="left", show_edge=False)
            table.add_column("#" if layout.endpoint == "index" else "endpoint", no_wrap=True)
            if layout.topic_column:
                table.add_column("topic", overflow="fold")
            for column in ("node", "reason"):
                table.add_column(column, overflow="fold")
            table.add_column("facts", justify="right", no_wrap=True)
            for row in reasons:
                for reason, facts in row.reasons:
                    table.add_row(
                        self._endpoint(layout, row.url),
                        *([row.topic] if layout.topic_column else []),
                        row.node,
                        reason,
                        facts,
                    )
            parts.append(table)
        for url, error in self.errors.items():
            parts.append(Text.assemble(("no answer ", "red"), f"{url}: {error}"))
        handlers = Table(
            title="slowest handlers (mean per fact)", title_justify="left", show_edge=False
        )
        handlers.add_column("fact type", overflow="fold")
        handlers.add_column("node", overflow="fold")
        if layout.topic_column:
            handlers.add_column("topic", overflow="fold")
        for column in ("mean ms", "facts"):
            handlers.add_column(column, justify="right", no_wrap=True)
        for mean, topic, node, fact_type, count in self.slow:
            handlers.add_row(
                fact_type,
                node,
                *([topic] if layout.topic_column else []),
                f"{mean * 1000:,.3f}",
                f"{int(count):,}",
            )
        parts.append(handlers)
        return parts


def render(previous: Sequence[Scrape] | None, current: Sequence[Scrape]) -> Screen:
    """The nodes table and the slowest-handlers table, fitted to the width
    they are rendered at (:class:`Screen`)."""
    before = {s.url: s for s in previous or ()}
    rows: list[NodeRow] = []
    errors: dict[str, str] = {}
    slow: list[tuple[float, str, str, str, float]] = []
    for current_scrape in current:
        if current_scrape.error is not None:
            errors[current_scrape.url] = current_scrape.error
            continue
        earlier = before.get(current_scrape.url)
        seconds = current_scrape.at - earlier.at if earlier and earlier.error is None else 0.0
        for (topic, node), sample in sorted(current_scrape.nodes.items()):
            old = earlier.nodes.get((topic, node)) if earlier else None
            c = sample.counters
            dead = int(c.get("rejected", 0) + c.get("failed", 0))
            reasons = [
                (reason, f"{int(n):,}")
                for reason, n in sorted(sample.rejected_by_reason.items())
                if n
            ]
            if c.get("failed"):
                reasons.append(("handler", f"{int(c['failed']):,}"))
            numbers = {
                "recv/s": _rate(sample, old, "received", seconds),
                "handled/s": _rate(sample, old, "handled", seconds),
                "handled": f"{int(c.get('handled', 0)):,}",
                "dup": f"{int(c.get('duplicates', 0)):,}",
                "parked": f"{int(c.get('parked', 0)):,}",
                "waiting": f"{int(sample.waiting):,}",
                "lag": "-" if sample.lag is None else f"{int(sample.lag):,}",
            }
            rows.append(NodeRow(current_scrape.url, topic, node, numbers, f"{dead:,}", reasons))
            for fact_type, count in sample.handler_count.items():
                total = sample.handler_sum.get(fact_type, 0.0)
                if old is not None and old.handler_count.get(fact_type, 0) < count:
                    count -= old.handler_count.get(fact_type, 0.0)
                    total -= old.handler_sum.get(fact_type, 0.0)
                if count > 0:
                    slow.append((total / count, topic, node, fact_type, count))
    return Screen([s.url for s in current], rows, errors, slow)
