"""Benchmark results as a rich table, a Markdown table and a plot (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from factbus.bench.result import BenchResult

COLUMNS = (
    "transport",
    "publish msgs/s",
    "end-to-end facts/s",
    "baseline msgs/s",
    "ratio",
    "drain msgs/s (ratio)",
    "floor msgs/s (ratio)",
    "CPU µs/msg drain / floor (ratio)",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "p99 ms @50%",
    "CPU µs/msg (raw)",
    "RSS MB start→peak",
    "B/fact",
)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cpu_pair(r: BenchResult) -> str:
    if r.drain_cpu_us_per_msg is None or r.floor_cpu_us_per_msg is None:
        return "-"
    return (
        f"{r.drain_cpu_us_per_msg:.1f} / {r.floor_cpu_us_per_msg:.1f} ({_ratio(r.floor_cpu_ratio)})"
    )


def native_summary(results: Sequence[BenchResult]) -> str:
    """Whether the native helper verified the received envelopes in these
    runs: ``native helper: on``, ``native helper: off (why)``, mixed
    (``on in 2 runs, off in 1 (why)``) or ``not recorded`` (older results)."""
    on = [r for r in results if r.native is True]
    off = [r for r in results if r.native is False]
    unknown = len(results) - len(on) - len(off)
    reasons = "; ".join(sorted({r.native_reason for r in off if r.native_reason}))
    why = f" ({reasons})" if reasons else ""
    if not on and not off:
        return "native helper: not recorded"
    if not off and not unknown:
        return "native helper: on"
    if not on and not unknown:
        return f"native helper: off, Python receive path{why}"
    parts = [f"on in {len(on)} run(s)"] if on else []
    parts += [f"off in {len(off)}{why}"] if off else []
    parts += [f"not recorded in {unknown}"] if unknown else []
    return "native helper: " + ", ".join(parts)


def rows(results: Sequence[BenchResult]) -> list[list[str]]:
    """One row of :data:`COLUMNS` per result."""
    out = []
    for r in results:
        half = r.half_load
        out.append(
            [
                ("memory://" if r.scheme == "memory" else r.transport)
                + (" (memory store)" if r.store.startswith("memory") else "")
                + (f" (pack {r.pack})" if r.pack > 1 else "")
                + (f" (in flight {r.publish_inflight})" if r.publish_inflight > 1 else "")
                + (" (no native helper)" if r.native is False else ""),
                f"{_rate(r.publish_per_s)} ({_ratio(r.publish_ratio)})",
                _rate(r.facts_per_s),
                _rate(r.baseline_per_s),
                _ratio(r.ratio),
                f"{_rate(r.drain_per_s)} ({_ratio(r.drain_ratio)})",
                f"{_rate(r.floor_per_s)} ({_ratio(r.floor_ratio)})",
                _cpu_pair(r),
                f"{r.latency_ms.p50:.1f}",
                f"{r.latency_ms.p95:.1f}",
                f"{r.latency_ms.p99:.1f}",
                "-" if half is None else f"{half.latency_ms.p99:.1f}",
                f"{r.cpu_us_per_msg:.1f}"
                + (
                    ""
                    if r.baseline_cpu_us_per_msg is None
                    else f" ({r.baseline_cpu_us_per_msg:.1f})"
                ),
                f"{r.rss_start_mb:.0f}→{r.rss_mb:.0f}",
                "-" if r.memory_per_fact_bytes is None else f"{r.memory_per_fact_bytes:,.0f}",
            ]
        )
    return out


def table(results: Sequence[BenchResult], title: str = "factbus bench") -> Table:
    """A rich table: the figures of each result and its ratio to the baseline;
    the title says whether the native helper was in use (:func:`native_summary`)."""
    view = Table(title=f"{title} ({native_summary(results)})")
    for i, column in enumerate(COLUMNS):
        view.add_column(column, justify="left" if i == 0 else "right")
    for row in rows(results):
        view.add_row(*row)
    return view


def markdown(results: Sequence[BenchResult]) -> str:
    """The same table in Markdown."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def plot(results: Sequence[BenchResult], path: str | Path) -> None:
    """Write a PNG: throughput (factbus vs. baseline) and latency per transport."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.scheme for r in results]
    x = list(range(len(results)))
    width = 0.38
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    ours = [r.messages_per_s for r in results]
    raw = [r.baseline_per_s or 0.0 for r in results]
    left.bar([i - width / 2 for i in x], ours, width, label="factbus end to end", color="#2f6db5")
    left.bar([i + width / 2 for i in x], raw, width, label="raw client", color="#b0b0b0")
    for i, r in enumerate(results):
        if r.ratio is not None:
            top = max(ours[i], raw[i])
            left.annotate(f"{r.ratio:.2f}x", (i, top), ha="center", va="bottom", fontsize=9)
    left.set_xticks(x, labels)
    left.set_yscale("log")
    left.set_ylabel("messages / s (log)")
    left.set_title("Throughput (same run, same broker)")
    left.legend(fontsize=8)

    p50 = [r.latency_ms.p50 for r in results]
    p99 = [r.latency_ms.p99 for r in results]
    half = [r.half_load.latency_ms.p99 if r.half_load else 0.0 for r in results]
    third = width * 2 / 3
    right.bar([i - third for i in x], p50, third, label="p50 at peak", color="#7fb3e0")
    right.bar(x, p99, third, label="p99 at peak", color="#2f6db5")
    right.bar([i + third for i in x], half, third, label="p99 at 50% of peak", color="#e08a2f")
    right.set_xticks(x, labels)
    right.set_yscale("log")
    right.set_ylabel("publish -> handled, ms (log)")
    right.set_title("Latency")
    right.legend(fontsize=8)

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def replace_section(path: Path, heading: str, section: str) -> None:
    """Put ``section`` (Markdown that starts with ``heading``, a ``## `` line) into the
    file at ``path``: in place of what stands under that heading up to the next
    ``## `` heading, or at the end when the file has no such section (a missing file
    is created). Every other section is kept as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = section.rstrip("\n") + "\n"
    at = text.find(heading)
    if at < 0:
        text = f"{text.rstrip()}\n\n{section}" if text.strip() else section
    else:
        end = text.find("\n## ", at + len(heading))
        text = text[:at] + section + ("" if end < 0 else text[end:])
    path.write_text(text, encoding="utf-8")
