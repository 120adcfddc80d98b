"""Plain sync handlers are called by the pipeline directly (no coroutine per fact),
with exactly dispatch()'s contract: retries, later handlers, current_transaction()."""

from __future__ import annotations

import uuid

from factbus import Bus, Fact
from factbus.dispatcher import current_transaction


async def test_plain_handlers_retry_go_on_and_see_the_transaction() -> None:
    url = f"memory://plain-{uuid.uuid4().hex[:8]}"
    calls: list[str] = []
    failures = {"flaky": 1}
    seen_tx: list[object] = []

    bus = Bus(url, "memory://", node="r", retry_attempts=3, retry_backoff=0.001)

    @bus.handler("P")
    def first(fact: Fact) -> None:
        calls.append(f"first {fact.fields['i']}")
        seen_tx.append(current_transaction())

    @bus.handler("P")
    def flaky(fact: Fact) -> None:
        calls.append(f"flaky {fact.fields['i']}")
        if fact.fields["i"] == 1 and failures["flaky"]:
            failures["flaky"] -= 1
            raise RuntimeError("once")

    @bus.handler("P")
    def last(fact: Fact) -> None:
        calls.append(f"last {fact.fields['i']}")

    assert bus.dispatcher.plain_handlers("P") == [first, flaky, last]
    facts = [Fact("P", {"i": i}) for i in range(3)]
    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(*facts)
        await bus.drain()
    assert calls == [
        "first 0", "flaky 0", "last 0",
        "first 1", "flaky 1", "flaky 1", "last 1",  # retried, then the next handler
        "first 2", "flaky 2", "last 2",
    ]  # fmt: skip
    assert len(seen_tx) == 3 and all(tx is not None for tx in seen_tx)
    assert bus.stats.handled == 3 and bus.stats.failed == 0


async def test_a_transactional_or_async_handler_takes_the_dispatch_path() -> None:
    bus = Bus(f"memory://plain-{uuid.uuid4().hex[:8]}", "memory://", node="r")

    @bus.handler("P")
    def plain(fact: Fact) -> None:
        pass

    assert bus.dispatcher.plain_handlers("P") == [plain]

    @bus.handler("P")
    async def later(fact: Fact) -> None:
        pass

    assert bus.dispatcher.plain_handlers("P") is None  # registering clears the cache
    assert bus.dispatcher.plain_handlers("Q") == []
