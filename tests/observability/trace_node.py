"""One process of the cross-process tracing test (run by test_tracing.py).

    python trace_node.py publish URL TOPIC HASH_OUT
    python trace_node.py consume URL TOPIC COUNT

Each process installs the OpenTelemetry SDK with an in-memory exporter, runs a
bus with tracing on, and prints its finished spans as one JSON line on stdout
(``SPANS {...}``). ``publish`` starts a trace (span ``checkout``) and publishes
one fact inside it; ``consume`` prints ``READY`` once subscribed, then handles
COUNT facts of type ``Trace.Order`` and reports.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from factbus import Bus, Fact


def _spans(exporter: InMemorySpanExporter) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for span in exporter.get_finished_spans():
        context = span.get_span_context()
        assert context is not None
        out.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "parent_remote": bool(span.parent and span.parent.is_remote),
                "links": [
                    {
                        "trace_id": f"{ln.context.trace_id:032x}",
                        "span_id": f"{ln.context.span_id:016x}",
                    }
                    for ln in span.links
                ],
                "attributes": dict(span.attributes or {}),
                "status": span.status.status_code.name,
            }
        )
    return out


async def main(role: str, url: str, topic: str, arg: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if role == "publish":
        bus = Bus(url, "memory://", topic=topic, node="trace-publisher", consume=False)
        async with bus:
            with trace.get_tracer("shop").start_as_current_span("checkout"):
                order = Fact("Trace.Order", {"number": int(arg)})
                await bus.publish(order)
        print("HASH " + order.hash, flush=True)
    else:
        # The topic in the node's name: a Kafka group of this test's alone, removed
        # with the topic after it (tests/conftest.py).
        bus = Bus(url, "memory://", topic=topic, node=f"trace-consumer-{topic}")
        done = asyncio.Event()
        seen: list[Fact] = []

        @bus.handler("Trace.Order")
        def handle(fact: Fact) -> None:
            seen.append(fact)
            if len(seen) >= int(arg):
                done.set()

        async with bus:
            print("READY", flush=True)
            await asyncio.wait_for(done.wait(), 60)
    provider.force_flush()
    print("SPANS " + orjson.dumps(_spans(exporter)).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
