"""The public surface: ``factbus.__all__``, thread handlers and the middleware
chain, ``Bus.consumer`` and ``Bus.rename``."""

from __future__ import annotations

import ast
import asyncio
import importlib
import threading
import time
import uuid
from pathlib import Path

import pytest

import factbus
from factbus import Bus, Fact
from factbus.dispatcher import Next

PUBLIC_API = {
    "Bus",
    "Capabilities",
    "CodecLimits",
    "ConfigError",
    "Delivery",
    "EnvelopeError",
    "Fact",
    "FactRef",
    "FactbusError",
    "FatalTransportError",
    "HandlerFailed",
    "HashMismatch",
    "InvalidFact",
    "InvalidValue",
    "MalformedEnvelope",
    "Message",
    "Middleware",
    "MissingDriver",
    "OversizedEnvelope",
    "PipelineStats",
    "PredecessorCycle",
    "PublishError",
    "StoreOwnedError",
    "RetryPolicy",
    "Settings",
    "Store",
    "TooDeep",
    "Transport",
    "TransportError",
    "UnknownVersion",
    "__version__",
    "configure_logging",
    "decode",
    "encode",
    "open_store",
    "open_transport",
    "topological",
}
"""The documented API (README). A name added to or dropped from ``factbus`` must
be added or dropped here too, on purpose."""


def test_all_is_exactly_the_public_api() -> None:
    assert set(factbus.__all__) == PUBLIC_API
    assert len(factbus.__all__) == len(set(factbus.__all__))
    fresh = importlib.reload(factbus)
    for name in factbus.__all__:
        assert getattr(fresh, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from factbus import *", namespace)  # what a star import really gives
    assert set(namespace) - {"__builtins__"} == PUBLIC_API


def test_every_public_name_is_imported_in_init() -> None:
    """Nothing public is defined or imported in ``factbus/__init__.py`` but left
    out of ``__all__`` (a name a user could start relying on by accident)."""
    tree = ast.parse(Path(factbus.__file__).read_text())
    bound = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    bound |= {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    public = {name for name in bound if not name.startswith("_") or name == "__version__"}
    assert public - {"annotations"} == PUBLIC_API


async def test_thread_handler_runs_in_another_thread_through_the_middleware() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    events: list[str] = []
    handler_threads: list[int] = []
    loop_thread = threading.get_ident()

    class Record:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, fact: Fact, call_next: Next) -> None:
            events.append(f"{self.name}>{fact.type}")
            await call_next(fact)
            events.append(f"{self.name}<{fact.type}")

    bus = Bus(url, "memory://", node="r", middleware=[Record("outer"), Record("inner")])

    @bus.handler("Work", thread=True)
    def work(fact: Fact) -> None:
        handler_threads.append(threading.get_ident())
        time.sleep(0.01)  # blocking is fine: not on the event loop
        events.append("handler")

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(Fact("Work", {"n": 1}))
        await bus.drain()
    assert handler_threads and handler_threads[0] != loop_thread
    assert events == ["outer>Work", "inner>Work", "handler", "inner<Work", "outer<Work"]


async def test_middleware_can_fail_an_attempt_and_retries_go_through_it() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    attempts: list[int] = []

    async def flaky(fact: Fact, call_next: Next) -> None:
        attempts.append(threading.get_ident())
        if len(attempts) == 1:
            raise RuntimeError("first attempt refused by middleware")
        await call_next(fact)

    bus = Bus(url, "memory://", node="r", middleware=[flaky], retry_backoff=0.001)
    ran: list[int] = []

    @bus.handler("Work", thread=True)
    def work(fact: Fact) -> None:
        ran.append(threading.get_ident())

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(Fact("Work", {"n": 2}))
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
    assert len(attempts) == 2
    assert len(ran) == 1 and ran[0] != threading.get_ident()
    assert letters == []


async def test_a_blocking_thread_handler_is_timed_out() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    bus = Bus(url, "memory://", node="r", handler_timeout=0.05, retry_attempts=1)

    @bus.handler("Slow", thread=True)
    def slow(fact: Fact) -> None:
        time.sleep(0.5)

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(Fact("Slow", {}))
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
    assert len(letters) == 1 and "TimeoutError" in letters[0].reason


def test_thread_is_refused_for_async_handlers() -> None:
    bus = Bus("memory://x", "memory://", node="n")

    async def handler(fact: Fact) -> None: ...

    with pytest.raises(ValueError, match="thread=True is for sync handlers"):
        bus.handler("T", thread=True)(handler)


async def test_consumer_and_rename() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    bus = Bus(url, "memory://", node="first")
    assert bus.consumer is None
    bus.rename("second")
    assert bus.settings.node_name == "second"
    assert bus.settings.subscription_group == "second"
    async with bus:
        consumer = bus.consumer
        assert isinstance(consumer, asyncio.Task) and not consumer.done()
        with pytest.raises(RuntimeError, match="cannot rename a started bus"):
            bus.rename("third")
    assert consumer.done()
    assert bus.consumer is None
    publish_only = Bus(url, "memory://", node="p", consume=False)
    async with publish_only:
        assert publish_only.consumer is None
