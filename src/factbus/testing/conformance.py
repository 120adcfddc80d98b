"""The transport conformance suite: every adapter, the memory one included, passes it.

Use it from pytest by subclassing :class:`TransportConformance` and naming the
broker URL (and, if you can, a command that restarts the broker)::

    class TestMyBroker(TransportConformance):
        url = "mybroker://127.0.0.1:1234"
        restart_command = ("bash", "scripts/brokers.sh", "restart", "mybroker")

Tests that a transport's declared :class:`~factbus.transport.Capabilities` rule
out are skipped with the reason; nothing else is. Each test uses fresh topic
and group names, so the suite can run against a broker that has other data.
Requires pytest with an asyncio plugin (pytest-asyncio in auto mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from factbus.errors import TransportError
from factbus.testing.brokers import unique
from factbus.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    DeliveryBatch,
    LogReader,
    Message,
    Subscription,
    Transport,
    delivery_position,
    open_transport,
    take_batch,
)


@dataclass
class ConformanceContext:
    """What each conformance test gets: fresh names, transports, and timings."""

    url: str
    restart_command: Sequence[str] | None = None
    timeout: float = 30.0
    """Seconds a test waits for expected messages before it fails."""
    _transports: list[Transport] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """Every name :meth:`name` made, in order: what an adapter's tests delete on the
    broker once a test ends (leftover topics and queues slow a broker down)."""

    async def transport(self, url: str | None = None) -> Transport:
        """A new, connected transport for ``url`` (else :attr:`url`: e.g. the same
        broker with other options); closed when the test ends."""
        transport = open_transport(url or self.url)
        await transport.connect()
        self._transports.append(transport)
        return transport

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities a transport for ``url`` declares (an adapter may
        set them per instance, e.g. per kombu transport)."""
        caps: Capabilities = open_transport(self.url).capabilities
        return caps

    def name(self, prefix: str) -> str:
        """A fresh topic, group or queue name, ``conf-PREFIX-<random>``, remembered
        in :attr:`names`."""
        made = unique(f"conf-{prefix}")
        self.names.append(made)
        return made

    async def restart_broker(self) -> None:
        if not self.restart_command:
            pytest.skip("no restart command given for this broker")
        proc = await asyncio.create_subprocess_exec(*self.restart_command)
        if await proc.wait() != 0:
            raise RuntimeError(f"{' '.join(self.restart_command)} failed")

    async def aclose(self) -> None:
        for transport in reversed(self._transports):
            with contextlib.suppress(Exception):
                await transport.aclose()


def messages(count: int, prefix: str = "m", headers: dict[str, str] | None = None) -> list[Message]:
    """``count`` distinct messages with bodies ``prefix-0``, ``prefix-1``, ..."""
    return [
        Message(f"{prefix}-{i}".encode(), f"{prefix}-{i}", None, dict(headers or {}))
        for i in range(count)
    ]


async def collect(
    subscription: Subscription,
    expected: int,
    timeout: float,
    *,
    ack: bool = True,
) -> list[Delivery]:
    """Receive until ``expected`` deliveries arrived (or ``timeout``); ack each."""
    received: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(received) < expected:
        left = deadline - loop.time()
        if left <= 0:
            break
        batch = await subscription.next_batch(expected - len(received), timeout=min(left, 1.0))
        for delivery in batch:
            if ack:
                await delivery.ack()
            received.append(delivery)
    return received


async def settle_quietly(subscription: Subscription, quiet: float) -> list[Delivery]:
    """Receive and ack whatever else arrives until ``quiet`` seconds pass with nothing."""
    extra: list[Delivery] = []
    while True:
        batch = await subscription.next_batch(1000, timeout=quiet)
        if not batch:
            return extra
        for delivery in batch:
            await delivery.ack()
        extra.extend(batch)


async def take_all(subscription: Subscription, expected: int, timeout: float) -> DeliveryBatch:
    """``take_batch`` until ``expected`` records are in one batch (or ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    batch = await take_batch(subscription, expected, timeout=timeout)
    while len(batch) < expected and (left := deadline - loop.time()) > 0:
        batch.extend(await take_batch(subscription, expected - len(batch), min(left, 1.0)))
    return batch


async def settle_quietly_for(
    subscription: Subscription, wanted: set[bytes], timeout: float, quiet: float = 1.0
) -> list[Delivery]:
    """Receive and ack until every body of ``wanted`` arrived (or ``timeout``), then
    whatever else comes until ``quiet`` seconds pass with nothing."""
    received = await collect(subscription, 1, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not wanted <= set(bodies(received)) and loop.time() < deadline:
        received += await collect(subscription, 1, deadline - loop.time())
    return received + await settle_quietly(subscription, quiet)


def bodies(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


async def dead_letters(
    transport: Transport, topic: str, at_least: int = 1, pause: float = 0.1
) -> list[DeadLetter]:
    """Up to 10 of ``topic``'s dead letters, read again ``pause`` seconds apart
    (50 reads at most) until there are ``at_least``; else what the last read gave
    (the caller's assertion then says what is missing)."""
    letters: list[DeadLetter] = []
    for _ in range(50):
        letters = await transport.read_dead_letters(topic, 10)
        if len(letters) >= at_least:
            break
        await asyncio.sleep(pause)
    return letters


class TransportConformance:
    """Subclass it, set ``url`` (and optionally ``restart_command``); pytest runs the suite."""

    url: ClassVar[str] = "memory://"
    restart_command: ClassVar[Sequence[str] | None] = None
    timeout: ClassVar[float] = 30.0

    @pytest.fixture
    async def ctx(self) -> AsyncIterator[ConformanceContext]:
        context = ConformanceContext(self.url, self.restart_command, self.timeout)
        try:
            yield context
        finally:
            await context.aclose()

    @staticmethod
    def need(ctx: ConformanceContext, flag: str) -> None:
        if not getattr(ctx.capabilities, flag):
            pytest.skip(f"transport does not declare {flag}")

    # -- basics ---------------------------------------------------------------

    async def test_publish_subscribe_keeps_body_and_headers(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        sent = messages(20, headers={"x-trace": "abc", "x-unicode": "été"})
        await transport.publish(topic, sent)
        received = await collect(subscription, 20, ctx.timeout)
        assert sorted(bodies(received)) == sorted(m.body for m in sent)
        for delivery in received:
            assert delivery.headers.get("x-trace") == "abc"
            assert delivery.headers.get("x-unicode") == "été"

    async def test_messages_of_one_call_keep_their_own_headers(
        self, ctx: ConformanceContext
    ) -> None:
        """One call whose messages share a headers mapping (as ``Bus.publish``
        makes them) for some and carry their own for others: each arrives with
        exactly its own."""
        transport = await ctx.transport()
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        shared = {"x-call": "shared"}
        sent = [
            Message(b"a", "id-a", None, shared),
            Message(b"b", "id-b", None, shared),
            Message(b"c", "id-c", None, {"x-call": "own", "x-extra": "c"}),
            Message(b"d", "id-d", None, shared),
            Message(b"e", "id-e", None, {}),
        ]
        await transport.publish(topic, sent)
        received = {d.body: d for d in await collect(subscription, len(sent), ctx.timeout)}
        assert set(received) == {m.body for m in sent}
        for message in sent:
            headers = received[message.body].headers
            for name, value in message.headers.items():
                assert headers.get(name) == value
            if message.body != b"c":
                assert "x-extra" not in headers
            if message.body == b"e":
                assert "x-call" not in headers

    async def test_binary_bodies_arrive_byte_for_byte(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        payloads = [bytes(range(256)), b"", b"\x00" * 1000, random.randbytes(200_000)]
        await transport.publish(topic, [Message(p, f"id-{i}") for i, p in enumerate(payloads)])
        received = await collect(subscription, len(payloads), ctx.timeout)
        assert sorted(bodies(received)) == sorted(payloads)

    async def test_order_within_one_publish_call(self, ctx: ConformanceContext) -> None:
        self.need(ctx, "ordered")
        transport = await ctx.transport()
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        sent = messages(500)
        await transport.publish(topic, sent)
        received = await collect(subscription, 500, ctx.timeout)
        assert bodies(received) == [m.body for m in sent]

    async def test_many_concurrent_publishers_and_subscribers(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group = ctx.name("t"), ctx.name("g")
        consumer = await ctx.transport()
        subscriptions = [await consumer.subscribe(topic, group) for _ in range(3)]
        publishers = [await ctx.transport() for _ in range(4)]
        per_publisher = 250

        async def publish(index: int, transport: Transport) -> None:
            batch = messages(per_publisher, prefix=f"p{index}")
            for start in range(0, per_publisher, 50):
                await transport.publish(topic, batch[start : start + 50])

        received: list[bytes] = []
        expected = len(publishers) * per_publisher
        done = asyncio.Event()

        async def consume(subscription: Subscription) -> None:
            while not done.is_set():
                for delivery in await subscription.next_batch(100, timeout=0.2):
                    await delivery.ack()
                    received.append(delivery.body)
                if len(set(received)) >= expected:
                    done.set()

        consumers = [asyncio.create_task(consume(s)) for s in subscriptions]
        await asyncio.gather(*(publish(i, t) for i, t in enumerate(publishers)))
        try:
            await asyncio.wait_for(done.wait(), ctx.timeout)
        finally:
            done.set()
            await asyncio.gather(*consumers)
        want = {m.body for i in range(len(publishers)) for m in messages(per_publisher, f"p{i}")}
        assert set(received) == want

    async def test_many_topics_are_isolated(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        topics = [ctx.name(f"t{i}") for i in range(8)]
        group = ctx.name("g")
        subscriptions = [await transport.subscribe(topic, group) for topic in topics]
        await asyncio.gather(
            *(transport.publish(topic, messages(30, prefix=topic)) for topic in topics)
        )
        for topic, subscription in zip(topics, subscriptions, strict=True):
            received = await collect(subscription, 30, ctx.timeout)
            assert sorted(bodies(received)) == sorted(m.body for m in messages(30, prefix=topic))
            assert await settle_quietly(subscription, 0.5) == []

    # -- acknowledgement --------------------------------------------------------

    async def test_nack_requeue_redelivers(self, ctx: ConformanceContext) -> None:
        self.need(ctx, "redelivers_nacked")
        transport = await ctx.transport()
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, messages(5))
        first = await collect(subscription, 5, ctx.timeout, ack=False)
        assert len(first) == 5
        nacked = first[2]
        for delivery in first:
            if delivery is nacked:
                await delivery.nack(requeue=True)
            else:
                await delivery.ack()
        again = await collect(subscription, 1, ctx.timeout)
        assert bodies(again) == [nacked.body]
        assert await settle_quietly(subscription, 0.5) == []

    async def test_nothing_lost_when_subscribers_close_and_reopen(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group = ctx.name("t"), ctx.name("g")
        publisher = await ctx.transport()
        consumer = await ctx.transport()
        subscription = await consumer.subscribe(topic, group)
        sent = messages(300)
        await publisher.publish(topic, sent)
        seen: set[bytes] = set()
        # Take some, ack only half of those, and close mid-stream.
        first = await collect(subscription, 100, ctx.timeout, ack=False)
        for i, delivery in enumerate(first):
            if i % 2 == 0:
                await delivery.ack()
                seen.add(delivery.body)
        await subscription.aclose()
        reopened = await (await ctx.transport()).subscribe(topic, group)
        while len(seen) < len(sent):
            batch = await collect(reopened, len(sent) - len(seen), ctx.timeout)
            if not batch:
                break
            seen.update(bodies(batch))
        assert seen == {m.body for m in sent}

    async def test_a_batch_acks_what_it_did_not_hand_out_and_nack_gives_back_the_rest(
        self, ctx: ConformanceContext
    ) -> None:
        """``take_batch``: the batch's ack settles every record but the one handed
        out with ``delivery(i)`` (its taker's); that one, unsettled, comes again
        after a close, the acked ones before it do not. A nacked batch gives back
        its unsettled records, handed out or not, and not an acked one."""
        topic, group = ctx.name("t"), ctx.name("g")
        transport = await ctx.transport()
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, messages(6, headers={"x-n": "1"}))
        batch = await take_all(subscription, 6, ctx.timeout)
        assert sorted(batch.bodies) == [f"m-{i}".encode() for i in range(6)]
        index = batch.bodies.index(b"m-2")
        held = batch.delivery(index)
        assert batch.delivery(index) is held
        assert held.body == b"m-2"
        assert held.headers["x-n"] == "1"
        await batch.ack()
        with pytest.raises(TransportError, match="already acked or nacked"):
            await batch.ack()
        await subscription.aclose()
        reopened = await (await ctx.transport()).subscribe(topic, group)
        back = set(bodies(await settle_quietly_for(reopened, {b"m-2"}, ctx.timeout)))
        assert b"m-2" in back
        # Acked before the held one: never again (a log broker commits up to it).
        assert not back & {b"m-0", b"m-1"}
        await reopened.aclose()

        if not ctx.capabilities.redelivers_nacked:
            return
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, messages(4))
        batch = await take_all(subscription, 4, ctx.timeout)
        acked = batch.bodies.index(b"m-0")
        await batch.delivery(acked).ack()
        batch.delivery(batch.bodies.index(b"m-1"))  # handed out, left unsettled
        await batch.nack(requeue=True)
        with pytest.raises(TransportError, match="already acked or nacked"):
            await batch.ack()
        again = await take_all(subscription, 3, ctx.timeout)
        assert sorted(again.bodies) == [b"m-1", b"m-2", b"m-3"]
        await again.ack()
        assert await settle_quietly(subscription, 0.5) == []

    async def test_close_is_idempotent_and_concurrent(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        subscription = await transport.subscribe(ctx.name("t"), ctx.name("g"))
        waiting = asyncio.create_task(subscription.next_batch(10, timeout=ctx.timeout))
        await asyncio.sleep(0.1)
        await asyncio.gather(subscription.aclose(), subscription.aclose())
        assert await asyncio.wait_for(waiting, 10) == []
        await asyncio.gather(transport.aclose(), transport.aclose())

    async def test_publisher_close_flushes_everything(self, ctx: ConformanceContext) -> None:
        topic, group = ctx.name("t"), ctx.name("g")
        consumer = await ctx.transport()
        subscription = await consumer.subscribe(topic, group)
        publisher = open_transport(ctx.url)
        await publisher.connect()
        sent = messages(1000)
        await asyncio.gather(
            *(publisher.publish(topic, sent[i : i + 100]) for i in range(0, 1000, 100))
        )
        await publisher.aclose()
        received = await collect(subscription, 1000, ctx.timeout)
        assert {d.body for d in received} == {m.body for m in sent}

    # -- groups -----------------------------------------------------------------

    async def test_fan_out_every_group_gets_everything(self, ctx: ConformanceContext) -> None:
        self.need(ctx, "consumer_groups")
        transport = await ctx.transport()
        topic = ctx.name("t")
        subscriptions = [await transport.subscribe(topic, ctx.name(f"g{i}")) for i in range(3)]
        sent = messages(100)
        await transport.publish(topic, sent)
        for subscription in subscriptions:
            received = await collect(subscription, 100, ctx.timeout)
            assert sorted(bodies(received)) == sorted(m.body for m in sent)

    async def test_shared_group_splits_the_work(self, ctx: ConformanceContext) -> None:
        self.need(ctx, "consumer_groups")
        topic, group = ctx.name("t"), ctx.name("g")
        members = [await (await ctx.transport()).subscribe(topic, group) for _ in range(2)]
        publisher = await ctx.transport()
        sent = messages(400)
        counts: Counter[bytes] = Counter()
        done = asyncio.Event()

        async def consume(subscription: Subscription) -> None:
            while not done.is_set():
                for delivery in await subscription.next_batch(50, timeout=0.2):
                    await delivery.ack()
                    counts[delivery.body] += 1
                if len(counts) >= len(sent):
                    done.set()

        tasks = [asyncio.create_task(consume(m)) for m in members]
        await publisher.publish(topic, sent)
        try:
            await asyncio.wait_for(done.wait(), ctx.timeout)
            await asyncio.sleep(1.0)  # give a wrongly duplicated delivery time to show up
        finally:
            done.set()
            await asyncio.gather(*tasks)
        assert set(counts) == {m.body for m in sent}
        assert max(counts.values()) == 1, "a message went to two members of one group"

    async def test_late_group_reads_history(self, ctx: ConformanceContext) -> None:
        self.need(ctx, "replays_history")
        transport = await ctx.transport()
        topic = ctx.name("t")
        sent = messages(50)
        await transport.publish(topic, sent)
        late = await transport.subscribe(topic, ctx.name("late"))
        received = await collect(late, 50, ctx.timeout)
        assert sorted(bodies(received)) == sorted(m.body for m in sent)

    # -- reading a topic's log at a position (optional: LogReader) -----------------

    @staticmethod
    async def log_reader(ctx: ConformanceContext, topic: str) -> LogReader:
        transport = await ctx.transport()
        if not isinstance(transport, LogReader) or transport.position_key(topic) is None:
            pytest.skip("transport does not read logs at positions (LogReader)")
        return transport

    async def test_new_log_reader_reads_history_in_order(self, ctx: ConformanceContext) -> None:
        topic = ctx.name("t")
        reader = await self.log_reader(ctx, topic)
        publisher = await ctx.transport()
        sent = messages(50)
        await publisher.publish(topic, sent)
        subscription = await reader.subscribe_log(topic, ctx.name("node"), None)
        received = await collect(subscription, 50, ctx.timeout)
        assert bodies(received) == [m.body for m in sent]
        positions = [p for d in received if (p := delivery_position(d)) is not None]
        assert len(positions) == 50
        assert positions == sorted(positions) and len(set(positions)) == 50

    async def test_log_reader_resumes_exactly_at_a_position(self, ctx: ConformanceContext) -> None:
        topic = ctx.name("t")
        reader = await self.log_reader(ctx, topic)
        publisher = await ctx.transport()
        sent = messages(40)
        await publisher.publish(topic, sent[:30])
        first = await reader.subscribe_log(topic, ctx.name("node"), None)
        received = await collect(first, 30, ctx.timeout)
        resume_at = delivery_position(received[19])  # settled up to m-19
        await first.aclose()
        await publisher.publish(topic, sent[30:])
        second = await self.log_reader(ctx, topic)
        again = await second.subscribe_log(topic, ctx.name("node"), resume_at)
        rest = await collect(again, 20, ctx.timeout)
        assert bodies(rest) == [m.body for m in sent[20:]]
        assert await settle_quietly(again, 1.0) == []

    async def test_log_reader_nack_reads_again_from_the_nacked(
        self, ctx: ConformanceContext
    ) -> None:
        topic = ctx.name("t")
        reader = await self.log_reader(ctx, topic)
        sent = messages(10)
        await (await ctx.transport()).publish(topic, sent)
        subscription = await reader.subscribe_log(topic, ctx.name("node"), None)
        first = await collect(subscription, 10, ctx.timeout, ack=False)
        for delivery in first[:4]:
            await delivery.ack()
        for delivery in first[4:]:
            await delivery.nack(requeue=True)
        again = await collect(subscription, 6, ctx.timeout)
        assert bodies(again) == [m.body for m in sent[4:]]
        assert await settle_quietly(subscription, 1.0) == []

    # -- dead letters -------------------------------------------------------------

    async def test_dead_letters_keep_body_and_reason(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        topic = ctx.name("t")
        await transport.dead_letter(topic, b"not json", {"x-a": "1"}, "malformed: not valid JSON")
        await transport.dead_letter(topic, b"\x00\x01", {}, "hash-mismatch: tampered")
        letters = await dead_letters(transport, topic, at_least=2, pause=0.2)
        assert [letter.body for letter in letters] == [b"not json", b"\x00\x01"]
        assert [letter.reason for letter in letters] == [
            "malformed: not valid JSON",
            "hash-mismatch: tampered",
        ]
        assert letters[0].headers.get("x-a") == "1"
        assert await transport.purge_dead_letters(topic) == 2
        assert await transport.read_dead_letters(topic, 10) == []

    # -- broker restart -----------------------------------------------------------

    async def test_recovers_after_broker_restart(self, ctx: ConformanceContext) -> None:
        # "Nothing lost across a restart" needs both reconnection and persistence.
        self.need(ctx, "persistent")
        self.need(ctx, "survives_broker_restart")
        if not self.restart_command:
            pytest.skip("no restart command for this broker")
        await recovers_after(ctx, ctx.restart_broker)

    # -- the whole pipeline ---------------------------------------------------------

    async def test_pipeline_three_nodes_converge(
        self, ctx: ConformanceContext, tmp_path: Any
    ) -> None:
        from factbus.testing.scenario import run_convergence

        report = await run_convergence(
            ctx.url, nodes=3, facts=300, store_dir=tmp_path, timeout=ctx.timeout * 2
        )
        assert report.lost == 0
        assert report.duplicated == 0
        assert report.out_of_order == 0
        assert report.converged


async def recovers_after(
    ctx: ConformanceContext,
    disrupt: Callable[[], Awaitable[None]],
    *,
    retry_on: type[Exception] = Exception,
    ack_errors: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Assert that nothing is lost across a broker outage: 100 messages published
    and 50 of them received, ``disrupt()`` (a broker restart or kill), 100 more
    published (tried again while that raises ``retry_on``), then all 200 received
    within twice ``ctx.timeout``. An ack raising one of ``ack_errors`` (a
    delivery from before the outage) is passed over; any other fails the test."""
    topic, group = ctx.name("t"), ctx.name("g")
    publisher = await ctx.transport()
    consumer = await ctx.transport()
    subscription = await consumer.subscribe(topic, group)
    before, after = messages(100, "before"), messages(100, "after")
    await publisher.publish(topic, before)
    seen = set(bodies(await collect(subscription, 50, ctx.timeout)))
    await disrupt()
    await publish_with_retry(publisher, topic, after, ctx.timeout * 2, retry_on)
    want = {m.body for m in before + after}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.timeout * 2
    while not want <= seen and loop.time() < deadline:
        batch = await subscription.next_batch(200, timeout=1.0)
        for delivery in batch:
            with contextlib.suppress(*ack_errors):
                await delivery.ack()
            seen.add(delivery.body)
    assert want - seen == set()


async def publish_with_retry(
    transport: Transport,
    topic: str,
    batch: list[Message],
    timeout: float,
    retry_on: type[Exception] = Exception,
) -> None:
    """Publish ``batch``, trying again every 0.5 s while the call raises
    ``retry_on`` (a broker coming back); the last error once ``timeout``
    seconds have passed, any other error at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await transport.publish(topic, batch)
            return
        except retry_on:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
