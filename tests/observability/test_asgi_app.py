"""``factbus.metrics.asgi_app``: the registry served by a real ASGI server
(uvicorn on 127.0.0.1, ephemeral port), scraped with httpx."""

from __future__ import annotations

import asyncio

import uvicorn
from obs_support import scrape_until, value

from factbus import Bus, Fact
from factbus.metrics import Metrics, asgi_app
from factbus.testing.brokers import unique


async def test_asgi_app_serves_the_registry() -> None:
    topic = unique("obs-asgi")
    metrics = Metrics()
    config = uvicorn.Config(
        asgi_app(metrics), host="127.0.0.1", port=0, log_level="error", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1500):  # up to 30 s
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        bus = Bus(f"memory://{topic}", "memory://", topic=topic, node="asgi", metrics=metrics)
        bus.handler("Asgi.Fact")(lambda fact: None)
        async with bus:
            await bus.publish(*[Fact("Asgi.Fact", {"i": i}) for i in range(3)])
            samples = await scrape_until(
                f"http://127.0.0.1:{port}/metrics",
                lambda s: value(s, "factbus_facts_handled_total", node="asgi") == 3,
            )
        assert value(samples, "factbus_handler_duration_seconds_count", node="asgi") == 3
        # The bucket bounds dashboards rely on: 50 µs, then 1-2.5-5 per decade to 10 s.
        bounds = sorted(
            (float(le), le)
            for (name, labels), _ in samples.items()
            if name == "factbus_handler_duration_seconds_bucket" and ("node", "asgi") in labels
            for key, le in labels
            if key == "le"
        )
        assert [le for _, le in bounds] == [
            *("5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005"),
            *("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0"),
            "+Inf",
        ]
    finally:
        server.should_exit = True
        await serving
