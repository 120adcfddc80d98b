"""Where the pipeline's time goes, per layer, from a pyinstrument profile of a bench phase.

``factbus bench --profile X.txt`` samples the event-loop thread (pyinstrument,
wall time, every 1 ms) during the peak phase and saves the raw session next
to the report (``X.txt.session.json``). :func:`layers` walks its call tree
from the root: the first frame on a path that belongs to a layer claims its
whole subtree, so nothing is counted twice; the time of frames that belong to
no layer goes to the layer of their nearest factbus ancestor. Layers follow
DESIGN.md §3: codec (decode + verify, i.e. JSON parsing, canonical form and
hash), store, dispatcher, transport, the pipeline's own code, the Bus publish
path (publisher tasks in this process), and waiting for I/O (the event loop
idle in ``epoll``, or a blocking call such as an SQLite ``COMMIT``).

Threads other than the event loop's (librdkafka's, kombu's consumer thread)
are not sampled: compare with ``cpu_us_per_msg`` of the same run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Layer names, in report order.
DECODE = "codec: decode + verify (JSON, canonical form, SHA-512)"
STORE = "store"
DISPATCH = "dispatcher + handler"
TRANSPORT = "transport (adapter and broker client on the event loop)"
PIPELINE = "pipeline's own code (settle, dedup, causal buffer)"
CONSUME = "Bus consume loop"
PUBLISH = "Bus publish path (publisher tasks, incl. encode and transport publish)"
IDLE = "idle: event loop waiting in epoll"
OTHER = "other (event loop, bench)"
ORDER = (DECODE, STORE, DISPATCH, TRANSPORT, PIPELINE, CONSUME, PUBLISH, IDLE, OTHER)

_ADAPTERS = ("factbus_kafka/", "factbus_amqp/", "factbus_kombu/", "factbus/transport/")
# Broker client libraries: their frames (e.g. aiormq's reader task) are transport time.
_DRIVERS = (
    "/aiormq/",
    "/pamqp/",
    "/aio_pika/",
    "/kombu/",
    "/amqp/",
    "/redis/",
    "/confluent_kafka/",
)


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    seconds: float
    share: float


def _file(frame: Any) -> str:
    return str(frame.file_path or "")


def _claims(frame: Any) -> str | None:
    """The layer a frame (with its whole subtree) belongs to, if any."""
    path, name = _file(frame), frame.function
    if path.endswith("factbus/bus.py") and name == "publish":
        return PUBLISH
    if path.endswith("factbus/envelope.py") and name == "decode":
        return DECODE
    if "factbus/store/" in path or "factbus_postgres/" in path:
        return STORE
    if path.endswith("factbus/dispatcher.py") and name == "dispatch":
        return DISPATCH
    if any(fragment in path for fragment in _ADAPTERS + _DRIVERS):
        return TRANSPORT
    if name in ("poll", "select") and (path == "<built-in>" or path.endswith("selectors.py")):
        return IDLE
    return None


def _owner(frame: Any, inherited: str) -> str:
    path = _file(frame)
    if path.endswith("factbus/pipeline.py"):
        return PIPELINE
    if path.endswith("factbus/bus.py"):
        return CONSUME
    if "factbus/bench/" in path:
        return OTHER
    return inherited


def layers(session_file: str) -> tuple[float, list[Layer]]:
    """(sampled seconds, layers in :data:`ORDER`) of a saved pyinstrument session."""
    from pyinstrument.session import Session

    root = Session.load(session_file).root_frame()
    totals: dict[str, float] = defaultdict(float)
    if root is None:
        return 0.0, []
    stack: list[tuple[Any, str]] = [(root, OTHER)]
    while stack:
        frame, owner = stack.pop()
        claimed = _claims(frame)
        if claimed is not None:
            totals[claimed] += frame.time
            continue
        owner = _owner(frame, owner)
        if not frame.children:
            totals[owner] += frame.time
            continue
        totals[owner] += max(0.0, frame.time - sum(c.time for c in frame.children))
        stack.extend((child, owner) for child in frame.children)
    total = float(root.time)
    return total, [
        Layer(name, totals[name], totals[name] / total if total else 0.0)
        for name in ORDER
        if totals.get(name)
    ]


def _functions(frame: Any) -> Iterator[Any]:
    stack = [frame]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)


def hot_functions(session_file: str, limit: int = 15) -> list[tuple[str, float]]:
    """The ``limit`` functions with the most own (self) time: (file:function, seconds)."""
    from pyinstrument.session import Session

    root = Session.load(session_file).root_frame()
    if root is None:
        return []
    own: dict[str, float] = defaultdict(float)
    for frame in _functions(root):
        if frame.function == "[self]" or frame.is_synthetic:
            continue
        self_time = frame.time - sum(child.time for child in frame.children)
        for child in frame.children:
            if child.is_synthetic and child.function == "[self]":
                self_time += child.time  # pyinstrument's explicit self-time leaf
        if self_time <= 0:
            continue
        path = _file(frame)
        short = path.split("/site-packages/")[-1].split("/src/")[-1].split("/adapters/")[-1]
        own[f"{short}:{frame.function}"] += self_time
    return sorted(own.items(), key=lambda item: item[1], reverse=True)[:limit]


def markdown(session_file: str, messages: int, limit: int = 15) -> str:
    """Layers and hot functions as Markdown, with µs per message."""
    total, rows = layers(session_file)
    per = 1e6 / messages
    lines = [
        f"Sampled wall time of the event-loop thread: {total:.2f} s for {messages} "
        f"messages = {total * per:.1f} µs/message",
        "",
        "| layer | s | µs/msg | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.seconds:.2f} | {r.seconds * per:.1f} | {r.share:.0%} |" for r in rows
    ]
    lines += ["", "| function (own time) | s | µs/msg |", "|---|---:|---:|"]
    lines += [
        f"| `{name}` | {seconds:.3f} | {seconds * per:.1f} |"
        for name, seconds in hot_functions(session_file, limit)
    ]
    return "\n".join(lines)
