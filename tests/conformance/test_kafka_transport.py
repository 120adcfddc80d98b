"""The Kafka transport (confluent-kafka) against a real broker: the conformance suite
plus what only Kafka has (URL options, offsets, partitions, dead-letter topics)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import broker_url
from factbus import Bus, Fact, envelope
from factbus.envelope import encode
from factbus.errors import ConfigError, PublishError, TransportError
from factbus.testing.brokers import kafka_bootstrap, with_options
from factbus.testing.conformance import (
    ConformanceContext,
    TransportConformance,
    bodies,
    collect,
    messages,
    recovers_after,
    settle_quietly,
    take_all,
)
from factbus.testing.polling import eventually
from factbus.transport import (
    Delivery,
    Message,
    Subscription,
    Transport,
    ack_all,
    open_transport,
    take_batch,
)
from factbus.urls import redact
from factbus_kafka import HEADER_MESSAGE_ID, KafkaConfig, KafkaTransport
from factbus_kafka.delivery import KafkaBatch, KafkaDelivery
from factbus_kafka.subscription import KafkaSubscription
from factbus_kafka.transport import _Confirmations

BROKERS_SH = Path(__file__).resolve().parents[2] / "scripts" / "brokers.sh"

# Short heartbeats make group joins and rebalances quick in tests.
TEST_OPTIONS = "session_timeout=6&heartbeat_interval=0.5&commit_interval=0.5"


def kafka_url(options: str = TEST_OPTIONS) -> str:
    return with_options(broker_url("kafka"), options)


async def _subscribed(ctx: ConformanceContext) -> tuple[str, str, Transport, Subscription]:
    """A fresh topic and group, a transport of the test's, and that group's
    subscription to that topic on it."""
    topic, group = ctx.name("t"), ctx.name("g")
    transport = await ctx.transport()
    return topic, group, transport, await transport.subscribe(topic, group)


async def _reopened(
    ctx: ConformanceContext, subscription: Subscription, topic: str, group: str
) -> Subscription:
    """``subscription`` closed, then ``group`` subscribed to ``topic`` again on a
    new transport (a new member of the group, reading from its commit)."""
    await subscription.aclose()
    return await (await ctx.transport()).subscribe(topic, group)


async def _again(
    ctx: ConformanceContext, subscription: Subscription, topic: str, group: str, count: int
) -> tuple[list[bytes], list[Delivery]]:
    """After :func:`_reopened`: the bodies of the first ``count`` records that
    come again (acked), and whatever else comes until 1 s passes with nothing;
    the reopened subscription is closed then."""
    reopened = await _reopened(ctx, subscription, topic, group)
    again = bodies(await collect(reopened, count, ctx.timeout))
    extra = await settle_quietly(reopened, 1.0)
    await reopened.aclose()
    return again, extra


def _made(subscription: Subscription) -> list[KafkaDelivery]:
    """Every ``KafkaDelivery`` alive for a record of ``subscription``."""
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, KafkaDelivery) and o._partition.owner is subscription
    ]


async def _ten_buffered(ctx: ConformanceContext) -> tuple[str, str, KafkaSubscription]:
    """:func:`_subscribed`, then 10 messages published in one key-less call (one
    partition, in order) and waited for until all wait in the subscription's
    buffer (its consumer thread fills it; AssertionError after ``ctx.timeout``)."""
    topic, group, transport, subscription = await _subscribed(ctx)
    assert isinstance(subscription, KafkaSubscription)
    await transport.publish(topic, messages(10))

    async def full() -> bool:
        return len(subscription._buffer) >= 10

    await eventually(full, ctx.timeout, "10 records buffered", interval=0.02)
    return topic, group, subscription


async def _take_slowly(
    subscription: Subscription,
    received: list[Delivery],
    count: int,
    timeout: float,
    *,
    one_by_one: bool = False,
    each: Callable[[], None] | None = None,
) -> None:
    """Take records 5 at a time, 2 ms apart, into ``received`` until it holds
    ``count`` (AssertionError "stalled" when none came within ``timeout``
    seconds). Each batch is acked with ``ack_all`` (``one_by_one``: one
    ``ack()`` per delivery), then ``each()`` is called."""
    while len(received) < count:
        batch = await subscription.next_batch(5, timeout=timeout)
        assert batch, "stalled"
        if one_by_one:
            for delivery in batch:
                await delivery.ack()
        else:
            await ack_all(batch)
        received.extend(batch)
        if each is not None:
            each()
        await asyncio.sleep(0.002)


async def _cut_off_by_close(
    ctx: ConformanceContext, *, queue: int, count: int, after: float
) -> asyncio.Future[None]:
    """A transport whose librdkafka local queue holds ``queue`` messages, warmed
    up with one publish; a call of ``count`` messages started on it, and the
    transport closed ``after`` seconds later: that call (to await)."""
    topic = ctx.name("t")
    transport = await ctx.transport(
        kafka_url(f"{TEST_OPTIONS}&producer.queue.buffering.max.messages={queue}")
    )
    await transport.publish(topic, messages(1, prefix="warm"))
    call = asyncio.ensure_future(transport.publish(topic, messages(count)))
    await asyncio.sleep(after)
    await transport.aclose()
    return call


class TestKafkaTransport(TransportConformance):
    restart_command = ("bash", str(BROKERS_SH), "restart", "kafka")
    timeout = 30.0

    @pytest.fixture
    async def ctx(self) -> AsyncIterator[ConformanceContext]:
        """The suite's context on the test Kafka (what its names made is removed by
        tests/conftest.py)."""
        context = ConformanceContext(kafka_url(), self.restart_command, self.timeout)
        try:
            yield context
        finally:
            await context.aclose()

    # -- Kafka specifics ------------------------------------------------------------

    async def test_out_of_order_acks_never_skip_an_unacked_message(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(10))  # key-less: one partition, in order
        first = await collect(subscription, 10, ctx.timeout, ack=False)
        assert len(first) == 10
        for delivery in reversed(first):  # acks in reverse order, all but m-3
            if delivery.body != b"m-3":
                await delivery.ack()
        again, extra = await _again(ctx, subscription, topic, group, 7)
        # The committed position stopped at m-3: it and everything after come again.
        assert again == [f"m-{i}".encode() for i in range(3, 10)]
        assert extra == []

    async def test_nack_redelivers_only_the_nacked_and_commits_after(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(10))
        first = await collect(subscription, 10, ctx.timeout, ack=False)
        for delivery in first:
            if delivery.body in (b"m-2", b"m-6"):
                await delivery.nack(requeue=True)
            else:
                await delivery.ack()
        again = await collect(subscription, 2, ctx.timeout)
        assert bodies(again) == [b"m-2", b"m-6"]
        assert all(d.redelivered for d in again)
        assert await settle_quietly(subscription, 1.0) == []
        # Everything was acked in the end: a new member of the group gets nothing.
        reopened = await _reopened(ctx, subscription, topic, group)
        assert await settle_quietly(reopened, 2.0) == []

    async def test_nacked_message_survives_a_close(self, ctx: ConformanceContext) -> None:
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(5))
        first = await collect(subscription, 5, ctx.timeout, ack=False)
        for delivery in first:
            await (delivery.nack() if delivery.body == b"m-1" else delivery.ack())
        # Closed before the nacked message came back.
        reopened = await _reopened(ctx, subscription, topic, group)
        again = await collect(reopened, 4, ctx.timeout)
        assert bodies(again)[0] == b"m-1"

    async def test_deliveries_are_made_when_taken_and_the_commit_stops_at_the_untaken(
        self, ctx: ConformanceContext
    ) -> None:
        """Received records wait in the buffer as they came; a delivery is made
        for each when ``next_batch`` hands it out (so it lives one pipeline step,
        not also while buffered). Acking the taken ones commits past them only:
        the records still buffered come again after a close."""
        topic, group, subscription = await _ten_buffered(ctx)
        assert _made(subscription) == []
        first = await subscription.next_batch(4)
        assert bodies(first) == [f"m-{i}".encode() for i in range(4)]
        assert sorted(_made(subscription), key=lambda d: d.offset) == sorted(
            first, key=lambda d: d.offset
        )
        await ack_all(first)
        again, extra = await _again(ctx, subscription, topic, group, 6)
        assert again == [f"m-{i}".encode() for i in range(4, 10)]
        assert extra == []

    async def test_a_batch_makes_no_delivery_and_its_ack_commits_only_what_it_took(
        self, ctx: ConformanceContext
    ) -> None:
        """``take_batch`` hands records out as one ``KafkaBatch``: no
        ``KafkaDelivery`` is made for them (only for one asked for with
        ``delivery(i)``), and the batch's ack commits past what it took only:
        the records still buffered come again after a close."""
        topic, group, subscription = await _ten_buffered(ctx)
        batch = await subscription.take_batch(4)
        assert isinstance(batch, KafkaBatch)
        assert batch.bodies == [f"m-{i}".encode() for i in range(4)]
        assert _made(subscription) == []
        await batch.ack()
        assert _made(subscription) == []
        again, extra = await _again(ctx, subscription, topic, group, 6)
        assert again == [f"m-{i}".encode() for i in range(4, 10)]
        assert extra == []

    async def test_a_batch_ack_stops_the_commit_at_a_handed_out_unacked_record(
        self, ctx: ConformanceContext
    ) -> None:
        """Offsets are committed only up to the leading acked records: a record
        handed out with ``delivery(i)`` and not acked holds the partition's
        commit there, though the batch acked every record after it; once it is
        acked, the commit moves past the whole batch."""
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(10))
        batch = await take_all(subscription, 10, ctx.timeout)
        assert batch.bodies == [f"m-{i}".encode() for i in range(10)]
        held = batch.delivery(3)
        await batch.ack()
        again, extra = await _again(ctx, subscription, topic, group, 7)
        assert again == [f"m-{i}".encode() for i in range(3, 10)]
        assert extra == []
        # The same with the held record acked: nothing comes again.
        topic, group = ctx.name("t"), ctx.name("g")
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, messages(10))
        batch = await take_all(subscription, 10, ctx.timeout)
        held = batch.delivery(3)
        await batch.ack()
        await held.ack()
        reopened = await _reopened(ctx, subscription, topic, group)
        assert await settle_quietly(reopened, 2.0) == []

    async def test_a_nacked_batch_comes_again_marked_redelivered_and_then_commits(
        self, ctx: ConformanceContext
    ) -> None:
        """A nacked batch (a failed step) is read again from its first unsettled
        record; only its unsettled records come again, each ``redelivered``, and
        acking them (as a batch) lets the commit pass the whole run."""
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(8))
        batch = await take_all(subscription, 6, ctx.timeout)
        assert batch.bodies == [f"m-{i}".encode() for i in range(6)]
        await batch.delivery(0).ack()
        await batch.nack(requeue=True)
        again = await take_all(subscription, 7, ctx.timeout)
        assert sorted(again.bodies) == sorted(f"m-{i}".encode() for i in range(1, 8))
        flags = {again.bodies[i]: again.delivery(i).redelivered for i in range(len(again))}
        assert flags == {f"m-{i}".encode(): i < 6 for i in range(1, 8)}
        await again.nack(requeue=False)  # without requeue: settled, as an ack
        reopened = await _reopened(ctx, subscription, topic, group)
        assert await settle_quietly(reopened, 2.0) == []

    async def test_a_batch_handed_out_whole_is_acked_per_delivery_and_commits(
        self, ctx: ConformanceContext
    ) -> None:
        """The per-delivery path of a batch (``deliveries()``, as a pipeline with
        an observer takes it): acking those deliveries in one ``ack_all`` settles
        the batch's runs, so the commit passes them; one left unacked holds it."""
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, messages(8))
        batch = await take_all(subscription, 8, ctx.timeout)
        taken = batch.deliveries()
        assert [d.body for d in taken] == batch.bodies
        await ack_all([d for d in taken if d.body != b"m-5"])
        again, extra = await _again(ctx, subscription, topic, group, 3)
        assert again == [b"m-5", b"m-6", b"m-7"]
        assert extra == []

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_random_batch_settling_commits_up_to_the_first_unacked_record(
        self, ctx: ConformanceContext, seed: int
    ) -> None:
        """Batches taken and settled at random (records handed out with
        ``delivery(i)`` and acked, nacked or held across batches; batches acked
        or nacked; nacked records taken again): once nothing more comes, the
        group's commit is exactly the first record never acked, so a new member
        gets it and everything after it, and nothing before it."""
        rng = random.Random(seed)
        topic, group, transport, subscription = await _subscribed(ctx)
        count = 60
        await transport.publish(topic, messages(count))  # key-less: one partition
        unacked = {f"m-{i}".encode() for i in range(count)}
        held: list[Delivery] = []
        idle = 0
        while idle < 2:
            if rng.random() < 0.2:  # the per-delivery path, beside batches
                single = await subscription.next_batch(rng.randint(1, 4), timeout=1.0)
                idle = 0 if single else idle + 1
                for delivery in single:
                    roll = rng.random()
                    if roll < 0.5:
                        await delivery.ack()
                        unacked.discard(delivery.body)
                    elif roll < 0.7:
                        await delivery.nack(requeue=True)
                    else:
                        held.append(delivery)
                continue
            batch = await take_batch(subscription, rng.randint(1, 8), timeout=1.0)
            if not batch:
                idle += 1
                continue
            idle = 0
            if rng.random() < 0.3:  # Bus's linger: more taken into the same batch
                batch.extend(await take_batch(subscription, rng.randint(1, 4), timeout=0.05))
            handed: dict[int, Delivery] = {}
            whole = rng.random() < 0.1  # an observer's step: every record handed out
            for i in range(len(batch)):
                if whole or rng.random() < 0.3:
                    handed[i] = batch.delivery(i)
            taken = set(handed)
            for i, delivery in list(handed.items()):
                roll = rng.random()
                if roll < 0.3:
                    await delivery.ack()
                    unacked.discard(batch.bodies[i])
                    del handed[i]
                elif roll < 0.45:
                    await delivery.nack(requeue=True)  # comes again
                    del handed[i]
            if rng.random() < 0.8:
                await batch.ack()
                unacked -= {b for i, b in enumerate(batch.bodies) if i not in taken}
                held += handed.values()
            else:
                await batch.nack(requeue=True)  # every unsettled record comes again
            rng.shuffle(held)
            while held and rng.random() < 0.4:
                delivery = held.pop()
                await delivery.ack()
                unacked.discard(delivery.body)
        first = min(int(body[2:]) for body in unacked) if unacked else count
        again, extra = await _again(ctx, subscription, topic, group, count - first)
        assert again == [f"m-{i}".encode() for i in range(first, count)]
        assert extra == []

    async def test_a_bus_step_dead_letters_a_rejected_record_and_commits_the_whole_batch(
        self, ctx: ConformanceContext, tmp_path: Path
    ) -> None:
        """Through ``Bus`` (one ``KafkaBatch`` per step): a body that is no
        envelope, between good ones of the same partition, is dead-lettered with
        its reason and its own headers; the others are handled; and the group's
        commit passes all of them (a new member of the group gets nothing)."""
        topic, group = ctx.name("t"), ctx.name("g")
        transport = await ctx.transport()
        good = [Fact("Batch.Item", {"i": i}, {}) for i in range(6)]
        wire = [
            Message(encode([fact]), fact.hash, None, {"x-n": str(i)}) for i, fact in enumerate(good)
        ]
        bad = Message(b"not an envelope", "bad", None, {"x-n": "bad"})
        handled: list[int] = []
        bus = Bus(ctx.url, f"sqlite:///{tmp_path}/store.db", topic=topic, group=group)
        bus.handler("Batch.Item")(lambda fact: handled.append(fact.fields["i"]))
        async with bus:
            # One publish call, key-less: one partition, in this order, one step.
            await transport.publish(topic, [*wire[:3], bad, *wire[3:]])
            async with asyncio.timeout(ctx.timeout):
                while len(handled) < 6 or bus.stats.rejected < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert bus.stats.messages == 7
            assert sorted(handled) == list(range(6))
        [letter] = await transport.read_dead_letters(topic, 10)
        assert letter.body == b"not an envelope"
        assert letter.reason.startswith("malformed: not valid JSON")
        assert letter.headers["x-n"] == "bad"
        subscription = await transport.subscribe(topic, group)
        assert await settle_quietly(subscription, 2.0) == []

    async def test_buffered_records_are_untracked_and_deliver_and_dead_letter_intact(
        self, ctx: ConformanceContext
    ) -> None:
        """With the native helper the consumer thread takes each record out of the
        cyclic collector's lists before the loop buffers it (docs/decisions.md,
        "Kafka records out of the cyclic collector's lists"). Full collections
        with the records waiting free nothing of them (the headers list a record
        alone refers to included), and each is delivered, and dead-lettered,
        with its body and headers."""
        topic, group, transport, subscription = await _subscribed(ctx)
        assert isinstance(subscription, KafkaSubscription)
        sent = [
            Message(f"u-{i}".encode(), f"id-{i}", None, {"x-n": str(i), "x-t": "é"})
            for i in range(20)
        ]
        await transport.publish(topic, sent)

        async def buffered() -> bool:
            return len(subscription._buffer) >= 20

        await eventually(buffered, ctx.timeout, "20 records buffered", interval=0.02)
        records = list(subscription._buffer)
        assert {type(r).__name__ for r in records} == {"Message"}
        assert [gc.is_tracked(r) for r in records] == [not envelope.NATIVE] * 20
        for record in records:
            record.headers()  # now a list only the record refers to
        for _ in range(3):
            gc.collect()
        assert [r.value() for r in records] == [m.body for m in sent]
        assert [dict(r.headers())["x-n"] for r in records] == [str(i).encode() for i in range(20)]
        del records
        deliveries = await collect(subscription, 20, ctx.timeout, ack=False)
        assert [d.body for d in deliveries] == [m.body for m in sent]
        assert [(d.headers["x-n"], d.headers["x-t"]) for d in deliveries] == [
            (str(i), "é") for i in range(20)
        ]
        assert [d.headers[HEADER_MESSAGE_ID] for d in deliveries] == [f"id-{i}" for i in range(20)]
        rejected = deliveries[7]
        await transport.dead_letter(topic, rejected.body, dict(rejected.headers), "rejected")
        await ack_all(deliveries)
        [letter] = await transport.read_dead_letters(topic, 10)
        assert letter.body == b"u-7" and letter.reason == "rejected"
        assert (letter.headers["x-n"], letter.headers["x-t"]) == ("7", "é")

    async def test_a_failed_bus_step_nacks_its_batch_which_comes_again_and_is_handled_once(
        self, ctx: ConformanceContext, tmp_path: Path
    ) -> None:
        """A step that fails before its transaction (the store refuses once) gives
        its ``KafkaBatch`` back (``nack``): the records come again, each fact is
        handled once, and the group's commit then passes them all."""
        topic, group = ctx.name("t"), ctx.name("g")
        transport = await ctx.transport()
        facts = [Fact("Batch.Again", {"i": i}, {}) for i in range(20)]
        handled: list[int] = []
        bus = Bus(ctx.url, f"sqlite:///{tmp_path}/store.db", topic=topic, group=group)
        bus.handler("Batch.Again")(lambda fact: handled.append(fact.fields["i"]))
        failures = 0
        async with bus:
            store = bus.store
            inner = store.transaction

            @contextlib.asynccontextmanager
            async def refusing_once() -> AsyncIterator[Any]:
                nonlocal failures
                if failures == 0:
                    failures += 1
                    raise RuntimeError("the store refuses this once")
                async with inner() as tx:
                    yield tx

            store.transaction = refusing_once  # type: ignore[method-assign]
            await transport.publish(topic, [Message(encode([f]), f.hash) for f in facts])
            async with asyncio.timeout(ctx.timeout):
                while len(handled) < 20:  # noqa: ASYNC110 - the bus handles them
                    await asyncio.sleep(0.05)
            await bus.drain(ctx.timeout)
        assert failures == 1
        assert sorted(handled) == list(range(20))  # each once
        subscription = await transport.subscribe(topic, group)
        assert await settle_quietly(subscription, 2.0) == []

    async def test_message_id_travels_in_a_header(self, ctx: ConformanceContext) -> None:
        topic, group, transport, subscription = await _subscribed(ctx)
        await transport.publish(topic, [Message(b"body", "the-head-hash", "k", {"x-a": "1"})])
        [delivery] = await collect(subscription, 1, ctx.timeout)
        assert delivery.headers[HEADER_MESSAGE_ID] == "the-head-hash"
        assert delivery.headers["x-a"] == "1"
        assert delivery.redelivered is False

    async def test_a_message_id_equal_to_its_key_travels_as_the_key(
        self, ctx: ConformanceContext
    ) -> None:
        """A message whose id is its key (every message ``Bus.publish`` makes)
        carries no id header; receivers read the key for it, as they read the
        header of older records that carry one (docs/decisions.md)."""
        topic, group, transport, subscription = await _subscribed(ctx)
        shared = {"x-a": "1"}
        await transport.publish(
            topic,
            [
                Message(b"same", "head-1", "head-1", shared),
                Message(b"other", "id-2", "key-2", shared),
                Message(b"same-again", "head-3", "head-3", shared),
                # A mapping with an id header of its own (a replayed dead letter's):
                # the message's id wins.
                Message(b"replayed", "head-5", "head-5", {"x-a": "1", HEADER_MESSAGE_ID: "old"}),
                Message(b"replayed-2", "id-6", None, {"x-a": "1", HEADER_MESSAGE_ID: "old"}),
            ],
        )
        # An older producer's record: the id header and the same key.
        older = Producer({"bootstrap.servers": kafka_bootstrap(ctx.url)})
        older.produce(
            topic, b"older", b"head-4", headers=[("x-a", b"1"), (HEADER_MESSAGE_ID, b"head-4")]
        )
        assert await asyncio.to_thread(older.flush, 30) == 0
        received = {d.body: d for d in await collect(subscription, 6, ctx.timeout)}
        assert set(received) == {
            b"same",
            b"other",
            b"same-again",
            b"replayed",
            b"replayed-2",
            b"older",
        }

        def record_headers(delivery: Any) -> list[tuple[str, bytes]]:
            return list(delivery._message.headers() or [])

        # On the wire: the id header only where the id is not the key.
        assert record_headers(received[b"same"]) == [("x-a", b"1")]
        assert record_headers(received[b"same-again"]) == [("x-a", b"1")]
        assert record_headers(received[b"replayed"]) == [("x-a", b"1")]
        assert record_headers(received[b"replayed-2"]) == [
            ("x-a", b"1"),
            (HEADER_MESSAGE_ID, b"id-6"),
        ]
        assert record_headers(received[b"other"]) == [
            ("x-a", b"1"),
            (HEADER_MESSAGE_ID, b"id-2"),
        ]
        # As read: every record has its id, whichever way it travelled.
        for body, message_id in [
            (b"same", "head-1"),
            (b"other", "id-2"),
            (b"same-again", "head-3"),
            (b"replayed", "head-5"),
            (b"replayed-2", "id-6"),
            (b"older", "head-4"),
        ]:
            assert dict(received[body].headers) == {"x-a": "1", HEADER_MESSAGE_ID: message_id}
        # A dead letter of a record without the header keeps the id (the key).
        delivery = received[b"same"]
        await transport.dead_letter(topic, delivery.body, delivery.headers, "bad")
        [letter] = await transport.read_dead_letters(topic, 10)
        assert letter.headers[HEADER_MESSAGE_ID] == "head-1"
        assert letter.body == b"same"

    async def test_keyless_batch_shares_a_partition_and_keys_route_stably(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group, transport, subscription = await _subscribed(ctx)
        keyed = [Message(f"k-{i}".encode(), f"k-{i}", f"key-{i % 4}") for i in range(40)]
        await transport.publish(topic, messages(60))
        await transport.publish(topic, keyed)
        received = await collect(subscription, 100, ctx.timeout)
        assert len(received) == 100
        partition_of = {d.body: getattr(d, "partition", None) for d in received}
        assert len({partition_of[m.body] for m in messages(60)}) == 1
        for key in range(4):
            assert len({partition_of[m.body] for m in keyed[key::4]}) == 1
        # Per key (and per key-less batch), the order is the publish order.
        assert [d.body for d in received if d.body.startswith(b"m-")] == [
            m.body for m in messages(60)
        ]
        for key in range(4):
            got = [d.body for d in received if d.body in {m.body for m in keyed[key::4]}]
            assert got == [m.body for m in keyed[key::4]]

    async def test_topics_are_created_with_the_configured_partitions(
        self, ctx: ConformanceContext
    ) -> None:
        transport = await ctx.transport(kafka_url(f"{TEST_OPTIONS}&partitions=3"))
        topic = ctx.name("t")
        await transport.publish(topic, messages(1))
        await transport.dead_letter(topic, b"x", {}, "test")
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap(ctx.url)})
        metadata = await asyncio.to_thread(admin.list_topics, timeout=10)  # before cleanup
        assert len(metadata.topics[topic].partitions) == 3
        assert len(metadata.topics[f"{topic}.dead-letter"].partitions) == 1

    async def test_slow_consumer_pauses_fetching_without_loss(
        self, ctx: ConformanceContext
    ) -> None:
        topic, group = ctx.name("t"), ctx.name("g")
        publisher = await ctx.transport()
        consumer = await ctx.transport(kafka_url(f"{TEST_OPTIONS}&max_buffered=20&fetch_batch=7"))
        subscription = await consumer.subscribe(topic, group)
        sent = messages(300)
        await publisher.publish(topic, sent)
        received: list[Delivery] = []
        await _take_slowly(subscription, received, len(sent), ctx.timeout, one_by_one=True)
        assert bodies(received) == [m.body for m in sent]

    async def test_a_full_buffer_holds_back_and_pauses_only_when_it_stays_full(
        self, ctx: ConformanceContext
    ) -> None:
        """A consumer that keeps taking never holds more than ``max_buffered``
        records and never pauses (a pause drops librdkafka's prefetch, fetched
        again on resume); one that stops taking for longer than
        ``heartbeat_interval`` gets its partitions paused; nothing is lost."""
        topic, group = ctx.name("t"), ctx.name("g")
        publisher = await ctx.transport()
        consumer = await ctx.transport(
            kafka_url("session_timeout=6&heartbeat_interval=1.5&max_buffered=20&fetch_batch=7")
        )
        subscription = await consumer.subscribe(topic, group)
        assert isinstance(subscription, KafkaSubscription)
        sent = messages(300)
        await publisher.publish(topic, sent)  # one call, no key: one partition, in order
        received: list[Delivery] = []
        most = 0

        def watch() -> None:
            nonlocal most
            most = max(most, subscription._occupancy())

        await _take_slowly(subscription, received, 100, ctx.timeout, each=watch)
        assert subscription.pauses == 0
        await asyncio.sleep(2.5)  # stop taking for longer than heartbeat_interval
        most = max(most, subscription._occupancy())
        assert subscription.pauses >= 1
        await _take_slowly(subscription, received, len(sent), ctx.timeout, each=watch)
        assert most <= 20
        assert bodies(received) == [m.body for m in sent]

    async def test_dead_letters_oldest_first_limited_and_purged(
        self, ctx: ConformanceContext
    ) -> None:
        transport = await ctx.transport()
        topic = ctx.name("t")
        assert await transport.read_dead_letters(topic, 10) == []
        assert await transport.purge_dead_letters(topic) == 0
        for i in range(5):
            await transport.dead_letter(topic, f"bad-{i}".encode(), {"x-i": str(i)}, f"r{i}")
        letters = await transport.read_dead_letters(topic, 3)
        assert [letter.body for letter in letters] == [b"bad-0", b"bad-1", b"bad-2"]
        assert [letter.reason for letter in letters] == ["r0", "r1", "r2"]
        assert letters[1].headers["x-i"] == "1"
        assert letters[1].headers["x-factbus-dead-letter-topic"] == topic
        assert len(await transport.read_dead_letters(topic, 100)) == 5
        assert await transport.purge_dead_letters(topic) == 5
        assert await transport.read_dead_letters(topic, 10) == []
        await transport.dead_letter(topic, b"later", {}, "again")
        assert [letter.body for letter in await transport.read_dead_letters(topic, 10)] == [
            b"later"
        ]
        assert await transport.purge_dead_letters(topic) == 1

    async def test_oversized_message_raises_publish_error(self, ctx: ConformanceContext) -> None:
        transport = await ctx.transport()
        with pytest.raises(PublishError):
            await transport.publish(ctx.name("t"), [Message(b"x" * 2_000_000, "big")])

    async def test_a_message_the_broker_refuses_fails_its_own_call_only(
        self, ctx: ConformanceContext
    ) -> None:
        """A record larger than the topic's ``max.message.bytes`` passes librdkafka's
        own check and is refused by the broker in its delivery report: the call
        that carried it raises PublishError naming the count, the message's key
        and the broker's reason; a call in flight at the same time (another
        partition) returns normally, and the producer goes on working."""
        topic = ctx.name("t")
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap(ctx.url)})
        created = admin.create_topics(
            [NewTopic(topic, num_partitions=6, config={"max.message.bytes": "4000"})]
        )
        await asyncio.wrap_future(created[topic])
        transport = await ctx.transport()
        refused = [
            Message(b"a-0", "a-0", None, {}),
            Message(b"x" * 20_000, "too-big", "too-big", {"x-call": "a"}),
            Message(b"a-1", "a-1", None, {}),
        ]
        fine = messages(5, prefix="b")
        outcomes = await asyncio.gather(
            transport.publish(topic, refused),
            transport.publish(topic, fine),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], PublishError)
        assert "of 3 message(s)" in str(outcomes[0])
        assert "'too-big'" in str(outcomes[0])
        assert "too large" in str(outcomes[0]).lower()
        assert outcomes[1] is None
        await transport.publish(topic, messages(3, prefix="c"))  # still working

    async def test_a_call_never_confirmed_fails_at_its_deadline(
        self, ctx: ConformanceContext
    ) -> None:
        """The poller's safety net: a producer pointed at a port where no broker
        listens (the admin client, which creates the topic, reaches the real one)
        and told to retry for 120 s reports nothing before then; the call fails
        with the safety net's PublishError ("within 4s": librdkafka's own timeout
        would say "refused ... timed out"), not before its deadline
        ``publish_timeout + request_timeout`` after the hand-over. Behaviour
        bounds only: how much later than the deadline it fails depends on the
        machine's load (pytest's timeout bounds it)."""
        transport = await ctx.transport(
            kafka_url(f"{TEST_OPTIONS}&publish_timeout=1&request_timeout=3")
            + "&producer.bootstrap.servers=127.0.0.1:1&producer.message.timeout.ms=120000"
        )
        started = time.monotonic()
        with pytest.raises(PublishError, match=r"did not confirm 1 message\(s\) .* within 4s"):
            await transport.publish(ctx.name("t"), messages(1))
        assert time.monotonic() - started >= 4.0  # the deadline counts from the hand-over

    async def test_aclose_is_bounded_when_message_timeout_exceeds_publish_timeout(
        self, ctx: ConformanceContext
    ) -> None:
        """``aclose`` flushes for ``publish_timeout`` (1 s), then purges what is
        still unconfirmed and closes: it does not wait for librdkafka's
        ``message.timeout.ms`` (120 s here; confluent-kafka's ``close()`` alone
        flushes without a bound). The producer reaches no broker (port 1), so the
        message in flight can only be purged; its call fails with PublishError.
        The bound (60 s) is half the message timeout: a behaviour bound, not a
        speed figure (the close takes about ``publish_timeout``)."""
        transport = open_transport(
            kafka_url(f"{TEST_OPTIONS}&publish_timeout=1&request_timeout=60")
            + "&producer.bootstrap.servers=127.0.0.1:1&producer.message.timeout.ms=120000"
        )
        await transport.connect()
        assert isinstance(transport, KafkaTransport)
        call = asyncio.ensure_future(transport.publish(ctx.name("t"), messages(3)))

        async def handed_over() -> bool:
            producer = transport._producer
            return producer is not None and bool(producer.pending)

        try:
            await eventually(handed_over, 60, "the call's messages handed over", interval=0.01)
        except BaseException:
            call.cancel()
            await transport.aclose()
            raise
        started = time.monotonic()
        await transport.aclose()
        assert time.monotonic() - started < 60
        with pytest.raises(PublishError, match="3 message"):
            await call

    async def test_concurrent_calls_return_once_their_own_messages_are_in_the_log(
        self, ctx: ConformanceContext
    ) -> None:
        """Calls of different sizes in flight together: when each returns, the log
        holds at least the messages of every call returned so far (a call settled
        on another call's reports would break this)."""
        topic = ctx.name("t")
        transport = await ctx.transport()
        await transport.publish(topic, messages(1, prefix="warm"))
        reader = Consumer(
            {"bootstrap.servers": kafka_bootstrap(ctx.url), "group.id": ctx.name("g")}
        )

        def records() -> int:
            metadata = reader.list_topics(topic, timeout=10)
            total = 0
            for number in metadata.topics[topic].partitions:
                low, high = reader.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
                total += high - low
            return total

        returned = 1  # the warm-up message
        checks: list[tuple[int, int]] = []

        async def call(size: int, index: int) -> None:
            nonlocal returned
            await transport.publish(topic, messages(size, prefix=f"c{index}"))
            returned += size
            expected = returned
            checks.append((expected, await asyncio.to_thread(records)))

        try:
            sizes = [1, 500, 3, 2000, 1, 50, 1000, 2, 7, 300]
            await asyncio.gather(*(call(size, i) for i, size in enumerate(sizes)))
        finally:
            await asyncio.to_thread(reader.close)
        assert len(checks) == len(sizes)
        for expected, found in checks:
            assert found >= expected
        assert checks[-1][1] == 1 + sum(sizes)

    async def test_reports_are_served_while_the_event_loop_is_blocked(
        self, ctx: ConformanceContext
    ) -> None:
        """Small calls are served by the event loop's own polls (PROFILE.md §19);
        while the loop is blocked the poller thread serves their reports itself,
        and the calls return once the loop runs again."""
        topic = ctx.name("t")
        transport = await ctx.transport()
        assert isinstance(transport, KafkaTransport)
        await transport.publish(topic, messages(1, prefix="warm"))
        thread = transport._producer
        assert thread is not None
        calls = [
            asyncio.create_task(transport.publish(topic, messages(3, prefix=f"c{i}")))
            for i in range(4)
        ]
        await asyncio.sleep(0)  # the calls produce, then await their reports
        tracked = list(thread.pending)[-4:]
        assert [call.count for call in tracked] == [3, 3, 3, 3]
        deadline = time.monotonic() + 20
        # Block the event loop (no tick can run) until the thread counted every report.
        while any(call.remaining for call in tracked) and time.monotonic() < deadline:
            time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point
        assert [call.remaining for call in tracked] == [0, 0, 0, 0]
        assert not any(call.future.done() for call in tracked)  # settled on the loop only
        await asyncio.wait_for(asyncio.gather(*calls), 10)
        await transport.publish(topic, messages(2, prefix="after"))  # the loop serves again

    async def test_small_calls_are_served_by_the_event_loop_large_by_the_thread(
        self, ctx: ConformanceContext
    ) -> None:
        """Who polls the producer (PROFILE.md §19): a small call is served by the
        event loop, which hands serving back to the poller thread a few ticks
        after its last call settled; a large call is listed for the thread."""
        topic = ctx.name("t")
        transport = await ctx.transport()
        assert isinstance(transport, KafkaTransport)
        await transport.publish(topic, messages(300, prefix="warm"))
        thread = transport._producer
        assert thread is not None
        loop = asyncio.get_running_loop()
        await transport.publish(topic, messages(3, prefix="small"))
        assert thread._loop is loop  # still serving: its idle ticks
        for _ in range(100):
            if thread._loop is None:
                break
            await asyncio.sleep(0.01)
        assert thread._loop is None
        big = asyncio.create_task(transport.publish(topic, messages(300, prefix="big")))
        await asyncio.sleep(0)
        assert thread._loop is None  # no tick armed: the thread serves it
        assert thread._timer is None
        assert not thread._loop_calls
        await big

    async def test_calls_complete_while_the_event_loop_is_busy(
        self, ctx: ConformanceContext
    ) -> None:
        """Small and large calls in flight together while another task keeps the
        loop busy in 2 ms slices: every call returns, each with its own messages."""
        topic = ctx.name("t")
        transport = await ctx.transport()
        stop = asyncio.Event()

        async def hog() -> None:
            while not stop.is_set():
                time.sleep(0.002)  # noqa: ASYNC251 - a busy event loop is the point
                await asyncio.sleep(0)

        busy = asyncio.create_task(hog())
        try:
            sizes = [1, 2, 3, 600, 1, 5, 8, 1, 300, 2] * 3
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        transport.publish(topic, messages(size, prefix=f"c{i}"))
                        for i, size in enumerate(sizes)
                    )
                ),
                60,
            )
        finally:
            stop.set()
            await busy
        subscription = await transport.subscribe(topic, ctx.name("g"))
        received = await collect(subscription, sum(sizes), ctx.timeout)
        assert len(set(bodies(received))) == sum(sizes)

    async def test_close_settles_the_calls_in_flight(self, ctx: ConformanceContext) -> None:
        """Closing the transport while small calls await their reports flushes
        them: every call returns (delivered), none is left waiting."""
        topic = ctx.name("t")
        transport = await ctx.transport()
        await transport.publish(topic, messages(1, prefix="warm"))
        calls = [
            asyncio.create_task(transport.publish(topic, messages(2, prefix=f"c{i}")))
            for i in range(10)
        ]
        await asyncio.sleep(0)  # the calls produce, then await their reports
        await transport.aclose()
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        assert outcomes == [None] * 10

    async def test_a_call_waiting_for_room_fails_with_librdkafkas_reason(
        self, ctx: ConformanceContext
    ) -> None:
        """A call larger than librdkafka's local queue (10 messages here) waits for
        room while the producer reaches no broker (port 1): librdkafka times out
        each message after ``publish_timeout`` (1 s), making room for the next
        ten. The call's deadline must not run while it is still handing messages
        over: it fails with librdkafka's own reason for all of them, not with
        "did not confirm ... within 2s" raised ~4 s later for the messages it
        handed over after it had failed."""
        transport = await ctx.transport(
            kafka_url(f"{TEST_OPTIONS}&publish_timeout=1&request_timeout=1")
            + "&producer.bootstrap.servers=127.0.0.1:1"
            + "&producer.queue.buffering.max.messages=10"
        )
        with pytest.raises(PublishError) as raised:
            await transport.publish(ctx.name("t"), messages(40))
        assert "of 40 message(s)" in str(raised.value)
        assert "timed out" in str(raised.value).lower()

    async def test_a_call_cut_off_by_close_raises_a_transport_error(
        self, ctx: ConformanceContext
    ) -> None:
        """A call still handing messages to librdkafka (its local queue holds 50)
        when the transport closes either completes or raises PublishError or
        TransportError naming the problem, never confluent-kafka's bare
        RuntimeError("Producer has been closed")."""
        call = await _cut_off_by_close(ctx, queue=50, count=5000, after=0.05)
        outcome = (await asyncio.gather(call, return_exceptions=True))[0]
        assert outcome is None or isinstance(outcome, PublishError | TransportError), repr(outcome)

    async def test_a_call_cut_off_by_close_names_the_close(self, ctx: ConformanceContext) -> None:
        """A call still waiting for room in librdkafka's local queue (10 messages)
        when the transport closes fails with PublishError naming the close as
        the cause of the messages left unconfirmed."""
        # 2,000 messages, 10 at a time: seconds of hand-over (5 ms between tries).
        call = await _cut_off_by_close(ctx, queue=10, count=2000, after=0.1)
        with pytest.raises(PublishError) as raised:
            await asyncio.wait_for(call, 30)
        assert "message(s) to" in str(raised.value)
        assert "before the transport was closed" in str(raised.value)

    async def test_a_failed_poller_thread_fails_its_calls_and_is_replaced(
        self, ctx: ConformanceContext
    ) -> None:
        """If the producer's poller thread dies (forced here: a delivery callback
        that raises, which makes its ``poll`` raise), a call still waiting for
        reports fails at once with PublishError naming that failure instead of
        hanging, and the next publish gets a new producer."""

        class Poison(Exception):
            pass

        def poison(error: object, message: object) -> None:
            raise Poison("forced by the test")

        topic = ctx.name("t")
        transport = await ctx.transport()
        assert isinstance(transport, KafkaTransport)
        await transport.publish(topic, messages(300, prefix="warm"))  # the thread serves
        dying = transport._producer
        assert dying is not None
        # A call the thread serves (300 messages) whose reports are still due.
        waiting = _Confirmations(asyncio.get_running_loop(), 300, topic, 60.0, dying.settled)
        dying.track(waiting)
        dying.watch(waiting)
        dying.producer.produce(topic, b"poison", on_delivery=poison)
        with pytest.raises(PublishError) as raised:
            await asyncio.wait_for(waiting.future, 10)
        assert "did not confirm 300 message(s)" in str(raised.value)
        assert "poller thread failed (Poison('forced by the test'))" in str(raised.value)
        assert dying.ended is not None
        await asyncio.wait_for(transport.publish(topic, messages(300, prefix="after")), 30)
        assert transport._producer is not dying

    async def test_close_waits_for_a_producer_replaced_after_a_fatal_error(
        self, ctx: ConformanceContext
    ) -> None:
        """A producer replaced after a fatal error (forced here by setting the
        error its ``error_cb`` would have set) flushes its calls for up to
        ``publish_timeout`` on its own thread, then purges what is left:
        ``aclose`` waits for that thread, and the call it held fails with
        librdkafka's reason (its messages timed out, or were purged)."""
        transport = await ctx.transport(
            kafka_url(f"{TEST_OPTIONS}&publish_timeout=2&request_timeout=2")
            + "&producer.bootstrap.servers=127.0.0.1:1"
        )
        assert isinstance(transport, KafkaTransport)
        call = asyncio.ensure_future(transport.publish(ctx.name("t"), messages(300)))
        await asyncio.sleep(0.2)  # handed over to a producer that reaches no broker
        old = transport._producer
        assert old is not None
        old.fatal = KafkaError(KafkaError._FATAL, "forced by the test", fatal=True)
        _, new = await transport._ready()
        assert new is not old
        await transport.aclose()
        assert not old._thread.is_alive()
        with pytest.raises(PublishError, match=r"refused 300 of 300 .*(timed out|Purged in queue)"):
            await asyncio.wait_for(call, 10)

    async def test_close_releases_the_librdkafka_clients(self, ctx: ConformanceContext) -> None:
        def os_threads() -> int:
            # librdkafka names its threads "rdk:..."; counting only those keeps
            # other tests' threads (executors, servers) out of the comparison.
            count = 0
            for task in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{task}/comm") as comm:
                        count += comm.read().startswith("rdk:")
                except FileNotFoundError:  # the thread ended while we looked
                    continue
            return count

        async def cycle() -> None:
            transport = await ctx.transport()
            topic = ctx.name("t")
            subscription = await transport.subscribe(topic, ctx.name("g"))
            await transport.publish(topic, messages(3))
            await collect(subscription, 3, ctx.timeout)
            await transport.dead_letter(topic, b"x", {}, "test")
            await transport.read_dead_letters(topic, 1)
            await transport.aclose()

        await cycle()  # starts the executor threads that stay
        before = os_threads()
        await cycle()  # no gc.collect(): closing alone must stop librdkafka's threads
        # librdkafka's destroy returns before its threads have exited: wait for
        # them (bounded), then require that none of this cycle's threads stayed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for _ in range(100):
            if os_threads() <= before or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert os_threads() <= before

    @pytest.mark.faults
    async def test_recovers_after_broker_kill9(self, ctx: ConformanceContext) -> None:
        async def kill9() -> None:
            proc = await asyncio.create_subprocess_exec("bash", str(BROKERS_SH), "kill9", "kafka")
            assert await proc.wait() == 0

        # The first publishes after it may fail while the broker comes back.
        await recovers_after(ctx, kill9, retry_on=TransportError, ack_errors=())


# -- configuration (no broker needed) --------------------------------------------------


def test_defaults_and_several_brokers() -> None:
    config = KafkaConfig.from_url("kafka://k1:9092,k2:9093")
    assert config.brokers == ("k1:9092", "k2:9093")
    assert (config.partitions, config.replication_factor) == (6, 1)
    producer = config.producer_settings()
    assert producer["bootstrap.servers"] == "k1:9092,k2:9093"
    assert producer["enable.idempotence"] is True
    assert producer["acks"] == "all"
    assert producer["message.timeout.ms"] == 30000
    consumer = config.consumer_settings("node-1")
    assert consumer["group.id"] == "node-1"
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["enable.auto.commit"] is True
    # Prefetch bounded from the subscription's buffer, not librdkafka's defaults.
    assert consumer["queued.min.messages"] == 10000
    assert consumer["queued.max.messages.kbytes"] == 4096
    assert consumer["fetch.max.bytes"] == 4096 * 1024
    small = KafkaConfig.from_url("kafka://k:9092?max_buffered=500&prefetch_kbytes=1024")
    assert small.consumer_settings("g")["queued.min.messages"] == 500
    assert small.consumer_settings("g")["queued.max.messages.kbytes"] == 1024


def test_options_are_parsed() -> None:
    config = KafkaConfig.from_url(
        "kafka://k:9092?partitions=12&replication_factor=3&publish_timeout=5"
        "&session_timeout=6&heartbeat_interval=0.5&group_protocol=consumer&client_id=svc"
    )
    assert (config.partitions, config.replication_factor) == (12, 3)
    assert config.producer_settings()["message.timeout.ms"] == 5000
    consumer = config.consumer_settings("g")
    assert consumer["group.protocol"] == "consumer"
    assert consumer["client.id"] == "svc"
    # The KIP-848 protocol takes session and heartbeat settings from the broker.
    assert "session.timeout.ms" not in consumer
    classic = KafkaConfig.from_url("kafka://k:9092?session_timeout=6&heartbeat_interval=0.5")
    assert classic.consumer_settings("g")["session.timeout.ms"] == 6000
    assert classic.consumer_settings("g")["heartbeat.interval.ms"] == 500


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://k:9092", "kafka://"),
        ("kafka://", "no broker"),
        ("kafka://k:9092?partitionz=3", "unknown kafka option 'partitionz'"),
        ("kafka://k:9092?partitions=many", "not a valid int"),
        ("kafka://k:9092?partitions=0", "at least 1"),
        ("kafka://k:9092?publish_timeout=-1", "positive"),
        ("kafka://k:9092?group_protocol=eager", "group_protocol"),
        ("kafka://user:pw@k:9092", "security_protocol"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaConfig.from_url(url)


def test_tls_and_sasl_options_map_to_librdkafka() -> None:
    # The local broker speaks PLAINTEXT only: this checks the mapping, not a handshake.
    config = KafkaConfig.from_url(
        "kafka://k1:9093,k2:9093?security_protocol=sasl_ssl&sasl_mechanism=SCRAM-SHA-512"
        "&sasl_username=svc&sasl_password=s3cret&ssl_ca_location=/etc/ca.pem"
        "&ssl_certificate_location=/etc/c.pem&ssl_key_location=/etc/k.pem&ssl_key_password=kp"
    )
    for settings in (
        config.producer_settings(),
        config.consumer_settings("g"),
        config.admin(),
        config.reader_settings(),
    ):
        assert settings["security.protocol"] == "sasl_ssl"
        assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
        assert settings["sasl.username"] == "svc"
        assert settings["sasl.password"] == "s3cret"
        assert settings["ssl.ca.location"] == "/etc/ca.pem"
        assert settings["ssl.certificate.location"] == "/etc/c.pem"
        assert settings["ssl.key.location"] == "/etc/k.pem"
        assert settings["ssl.key.password"] == "kp"


def test_credentials_in_the_url_user_info() -> None:
    config = KafkaConfig.from_url(
        "kafka://svc:p%40ss@k1:9093,k2:9093?security_protocol=sasl_plaintext&sasl_mechanism=PLAIN"
    )
    settings = config.admin()
    assert (settings["sasl.username"], settings["sasl.password"]) == ("svc", "p@ss")
    assert config.brokers == ("k1:9093", "k2:9093")


def test_rdkafka_options_pass_through_verbatim_and_win() -> None:
    config = KafkaConfig.from_url(
        "kafka://k:9092?rdkafka.socket.keepalive.enable=true&rdkafka.client.id=override"
        "&producer.linger.ms=20&producer.compression.type=lz4&consumer.fetch.min.bytes=1024"
        "&consumer.auto.offset.reset=latest"
    )
    producer, consumer = config.producer_settings(), config.consumer_settings("g")
    assert producer["socket.keepalive.enable"] == "true"
    assert consumer["socket.keepalive.enable"] == "true"
    assert producer["client.id"] == consumer["client.id"] == "override"
    assert producer["linger.ms"] == "20"
    assert producer["compression.type"] == "lz4"
    assert "linger.ms" not in consumer
    assert consumer["fetch.min.bytes"] == "1024"
    assert consumer["auto.offset.reset"] == "latest"
    assert "fetch.min.bytes" not in producer


def test_secrets_never_show() -> None:
    url = (
        "kafka://svc:hunter2@k1:9093,k2:9093?security_protocol=sasl_ssl&sasl_password=hunter3"
        "&ssl_key_password=hunter4&rdkafka.sasl.oauthbearer.client.secret=hunter5"
        "&rdkafka.ssl.key.pem=hunter6&partitions=3"
    )
    transport = KafkaTransport(url)
    for text in (repr(transport), repr(transport.config), redact(url)):
        for secret in ("hunter2", "hunter3", "hunter4", "hunter5", "hunter6"):
            assert secret not in text
    assert "svc:***@k1:9093,k2:9093" in repr(transport)
    assert "partitions=3" in repr(transport)


def test_open_transport_picks_this_adapter() -> None:
    transport = open_transport("kafka://127.0.0.1:9092")
    assert isinstance(transport, KafkaTransport)
    assert transport.capabilities.persistent
    assert transport.capabilities.replays_history


async def test_unreachable_broker_fails_connect() -> None:
    transport = KafkaTransport("kafka://127.0.0.1:1?request_timeout=1")
    with pytest.raises(TransportError, match="no Kafka broker answered"):
        await transport.connect()
    await transport.aclose()
