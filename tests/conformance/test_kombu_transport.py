"""The kombu transport against real brokers: the conformance suite on redis and on
RabbitMQ (py-amqp), plus what only this adapter has (URL options, per-URL
capabilities, giving messages back to one group only on redis, reconnection after
a redis restart, native dead-lettering on RabbitMQ, TLS/SASL option mapping)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from conftest import broker_url, connected
from factbus import Bus, Fact
from factbus.errors import ConfigError, FatalTransportError, TransportError
from factbus.testing.brokers import unavailable, unique, with_options
from factbus.testing.conformance import (
    ConformanceContext,
    TransportConformance,
    bodies,
    collect,
    dead_letters,
    messages,
    settle_quietly,
)
from factbus.transport import Message, open_transport
from factbus.urls import redact
from factbus_kombu import KombuConfig, KombuTransport
from factbus_kombu.config import (
    AMQP_CAPABILITIES,
    GENERIC_CAPABILITIES,
    REDIS_CAPABILITIES,
    REDIS_TRANSPORT_DEFAULTS,
)
from factbus_kombu.consumer import KombuSubscription
from factbus_kombu.redis_channel import ChannelMisuse, SentinelTransport
from factbus_kombu.redis_channel import Transport as RedisTransport

BROKERS_SH = Path(__file__).resolve().parents[2] / "scripts" / "brokers.sh"
BROKERS = {"redis": "redis", "kombu_amqp": "rabbitmq"}
"""broker_url name -> scripts/brokers.sh name."""


class _KombuConformance(TransportConformance):
    broker: ClassVar[str]
    timeout = 30.0

    @pytest.fixture
    async def ctx(self) -> AsyncIterator[ConformanceContext]:
        context = ConformanceContext(broker_url(self.broker), self.restart_command, self.timeout)
        try:
            yield context
        finally:
            await context.aclose()


class TestKombuRedis(_KombuConformance):
    """Skipped by capabilities: ``test_late_group_reads_history`` (a group's queue
    exists only once it subscribed) and ``test_recovers_after_broker_restart``
    (the test redis keeps nothing across a restart; reconnection itself is
    checked by ``test_redis_subscription_recovers_after_restart``)."""

    broker = "redis"
    restart_command = ("bash", str(BROKERS_SH), "restart", "redis")


class TestKombuAmqp(_KombuConformance):
    """Skipped by capabilities: ``test_late_group_reads_history`` only."""

    broker = "kombu_amqp"
    restart_command = ("bash", str(BROKERS_SH), "restart", "rabbitmq")


# -- fixtures for the adapter's own tests ------------------------------------------------


def prefixed_redis(options: str = "") -> str:
    """The test redis under a ``global_keyprefix`` of its own (every key kombu and the
    adapter write starts with it), plus ``options``."""
    prefix = f"transport.global_keyprefix={unique('factbus-test')}:"
    return with_options(broker_url("redis"), f"{prefix}&{options}" if options else prefix)


@pytest.fixture(params=["redis", "redis_prefixed", "kombu_amqp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis_prefixed":
        return prefixed_redis()
    return broker_url(request.param)


class Names(list[str]):
    """Names a test made on the broker at ``url`` (what they made there is removed
    after the test by tests/conftest.py)."""

    url = ""


@pytest.fixture
def names() -> Names:
    return Names()


def fresh(names: Names, prefix: str) -> str:
    name = unique(f"kombu-{prefix}")
    names.append(name)
    return name


async def open_kombu(made: list[KombuTransport], url: str, names: Names) -> KombuTransport:
    names.url = url
    return await connected(made, KombuTransport(url))


# -- URL options, capabilities, reprs, driver (no broker) ------------------------------


def test_url_defaults_and_kombu_url() -> None:
    config = KombuConfig.from_url("kombu+redis://127.0.0.1:6379/0")
    assert config.kombu_url == "redis://127.0.0.1:6379/0"
    assert (config.transport, config.driver_type, config.is_virtual) == ("redis", "redis", True)
    assert (config.prefetch, config.poll_interval) == (1024, 0.02)
    assert (config.confirm_timeout, config.retry_timeout) == (30.0, 30.0)
    assert config.transport_options == REDIS_TRANSPORT_DEFAULTS
    assert config.transport_options["unacked_key"] == "factbus.unacked"
    assert config.ssl is None


def test_amqp_means_py_amqp() -> None:
    config = KombuConfig.from_url("kombu+amqp://guest:guest@127.0.0.1:5672//")
    assert config.kombu_url == "pyamqp://guest:guest@127.0.0.1:5672//"
    assert (config.transport, config.driver_type, config.is_virtual) == ("pyamqp", "amqp", False)
    assert config.transport_options == {}
    assert Connection(config.kombu_url).transport_cls == "pyamqp"


def test_adapter_and_transport_options_are_taken_out_of_the_url() -> None:
    config = KombuConfig.from_url(
        "kombu+redis://127.0.0.1:6379/3?factbus_prefetch=50&factbus_poll_interval=0.1"
        "&factbus_confirm_timeout=5&factbus_retry_timeout=7.5&transport.visibility_timeout=600"
        "&transport.global_keyprefix=app:&transport.priority_steps=[0,5]&connect_timeout=3"
    )
    assert (config.prefetch, config.poll_interval) == (50, 0.1)
    assert (config.confirm_timeout, config.retry_timeout) == (5.0, 7.5)
    assert config.transport_options == {
        **REDIS_TRANSPORT_DEFAULTS,
        "visibility_timeout": 600,
        "global_keyprefix": "app:",
        "priority_steps": [0, 5],
    }
    assert config.kombu_url == "redis://127.0.0.1:6379/3"
    connection = config.connection()
    assert connection.transport_options["visibility_timeout"] == 600
    assert connection.connect_timeout == 3.0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("factbus_prefetch=0", "out of range"),
        ("factbus_prefetch=70000", "out of range"),
        ("factbus_prefetch=many", "not a valid int"),
        ("factbus_poll_interval=-1", "out of range"),
        ("factbus_color=blue", "unknown kombu option .factbus_color."),
        ("visibility_timeout=60", "unknown URL option 'visibility_timeout'"),
        ("transport.confirm_publish=true", "always uses publisher confirms"),
        ("transport.ack_emulation=false", "ack_emulation=False: without kombu's ack emulation"),
        ("transport.ack_emulation=0", "consumer that dies before acking .kill -9. loses it"),
        ("ssl=true", "secure scheme"),
        ("heartbeat=soon", "not a valid duration"),
    ],
)
def test_bad_options_are_refused(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KombuConfig.from_url(f"kombu+redis://127.0.0.1:6379/0?{query}")


def test_not_a_kombu_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="kombu\\+<transport>"):
        KombuTransport("redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="no transport 'nosuch'"):
        KombuTransport("kombu+nosuch://host")


def test_open_transport_picks_the_kombu_adapter() -> None:
    transport = open_transport("kombu+redis://127.0.0.1:6379/0")
    assert type(transport) is KombuTransport
    assert type(open_transport("kombu+amqp://guest:guest@127.0.0.1//")) is KombuTransport


def test_capabilities_depend_on_the_url() -> None:
    assert KombuTransport("kombu+redis://127.0.0.1:6379/0").capabilities == REDIS_CAPABILITIES
    assert KombuTransport("kombu+amqp://127.0.0.1//").capabilities == AMQP_CAPABILITIES
    assert KombuTransport("kombu+amqps://127.0.0.1//").capabilities == AMQP_CAPABILITIES
    assert KombuTransport("kombu+memory://").capabilities == GENERIC_CAPABILITIES
    # The class declares only what every kombu transport guarantees.
    assert KombuTransport.capabilities == GENERIC_CAPABILITIES
    assert REDIS_CAPABILITIES.persistent is False
    assert AMQP_CAPABILITIES.persistent and AMQP_CAPABILITIES.survives_broker_restart


def test_repr_and_logs_hide_credentials() -> None:
    transport = KombuTransport(
        "kombu+amqp://user:s3cret@rabbit.example:5672/vh?transport.password=hunter2&heartbeat=5"
    )
    text = repr(transport)
    assert "s3cret" not in text and "hunter2" not in text
    assert "user:***@rabbit.example:5672" in text
    assert "heartbeat=5" in text
    assert "s3cret" not in redact("kombu+redis://:s3cret@127.0.0.1:6379/0")
    config = KombuConfig.from_url("kombu+redis://u:s3cret@127.0.0.1:6379/0?transport.password=x2")
    assert "s3cret" not in repr(config) and "x2" not in repr(config)


def test_tls_and_sasl_options_map_onto_py_amqp() -> None:
    config = KombuConfig.from_url(
        "kombu+amqps://app:pw@rabbit.example:5671/prod?ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key&ssl_cert_reqs=required"
        "&ssl_server_hostname=rabbit.internal&login_method=EXTERNAL&heartbeat=10"
    )
    assert config.ssl == {
        "ca_certs": "/etc/ca.pem",
        "certfile": "/etc/client.pem",
        "keyfile": "/etc/client.key",
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "rabbit.internal",
    }
    connection = config.connection()
    assert connection.transport_cls == "amqps"
    assert connection.ssl == config.ssl
    assert connection.login_method == "EXTERNAL"
    assert connection.heartbeat == 10.0
    assert (connection.userid, connection.password, connection.virtual_host) == (
        "app",
        "pw",
        "prod",
    )
    # ssl=true turns TLS on with the defaults (same as amqps://)
    assert KombuConfig.from_url("kombu+amqp://h//?ssl=true").connection().ssl is True
    with pytest.raises(ConfigError, match="unknown TLS option 'ssl_check_hostname'"):
        KombuConfig.from_url("kombu+amqp://h//?ssl_check_hostname=false")


def test_tls_options_pass_through_to_redis() -> None:
    config = KombuConfig.from_url(
        "kombu+rediss://app:pw@redis.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&transport.client_name=factbus"
    )
    connection = config.connection()
    # kombu's redis transport with the adapter's lossless take (redis_channel.py).
    assert connection.transport_cls is RedisTransport
    assert issubclass(RedisTransport, kombu_redis.Transport)
    assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    bare = KombuConfig.from_url("kombu+rediss://redis.example:6380/0").connection()
    assert bare.ssl == {"ssl_cert_reqs": ssl.CERT_NONE}  # kombu's own default for rediss
    assert (connection.userid, connection.password) == ("app", "pw")
    assert connection.transport_options == {**REDIS_TRANSPORT_DEFAULTS, "client_name": "factbus"}


async def test_dead_letter_group_name_is_reserved() -> None:
    transport = KombuTransport("kombu+redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="reserved"):
        await transport.subscribe("facts", "dead-letter")
    await transport.aclose()


async def test_unreachable_broker_fails_within_the_retry_timeout() -> None:
    transport = KombuTransport("kombu+redis://127.0.0.1:1/0?factbus_retry_timeout=0.5")
    with pytest.raises(TransportError, match="cannot connect"):
        await transport.connect()
    with pytest.raises(TransportError, match="cannot"):
        await transport.subscribe("facts", "g")
    await transport.aclose()
    with pytest.raises(TransportError, match="closed"):
        await transport.publish("facts", messages(1))


# -- on both brokers -----------------------------------------------------------------------


async def test_settling_twice_raises_and_settling_after_close_is_ignored(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    transport = await open_kombu(transports, url, names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    await transport.publish(topic, messages(3))
    first = await collect(subscription, 3, 30.0, ack=False)
    await first[0].ack()
    with pytest.raises(TransportError, match="already"):
        await first[0].nack()
    await subscription.aclose()
    with pytest.raises(FatalTransportError, match="closed"):  # never [] at once, for ever
        await subscription.next_batch(10, timeout=1)
    await first[1].ack()  # given back on close: ignored, comes again
    reopened = await transport.subscribe(topic, group)
    again = await collect(reopened, 2, 30.0)
    assert sorted(bodies(again)) == [b"m-1", b"m-2"]
    assert all(d.redelivered for d in again)
    assert await settle_quietly(reopened, 0.5) == []


async def test_a_transport_closed_under_a_running_bus_ends_it_loudly(
    url: str, names: Names
) -> None:
    """Closing the transport instead of the bus: the consumer ends with
    FatalTransportError (kept in ``bus.failure``), it does not poll a closed
    subscription for ever."""
    names.url = url
    topic = fresh(names, "t")
    bus = Bus(url, "memory://", topic=topic, node=fresh(names, "g"))
    handled: list[Fact] = []

    @bus.handler("Closed.Kombu")
    async def record(fact: Fact) -> None:
        handled.append(fact)

    async with Bus(url, "memory://", topic=topic, node="p", consume=False) as publisher:
        await bus.start()
        try:
            await publisher.publish(Fact("Closed.Kombu", {"n": 1}))
            await bus.drain(timeout=30)
            assert len(handled) == 1
            consumer = bus.consumer
            assert consumer is not None
            await bus.transport.aclose()  # under the running bus
            done, _ = await asyncio.wait([consumer], timeout=30)
            assert done, "the consumer still runs on a closed transport"
            assert isinstance(consumer.exception(), FatalTransportError)
        finally:
            await bus.aclose()
    assert isinstance(bus.failure, FatalTransportError)
    assert "closed" in str(bus.failure)


async def test_small_prefetch_still_delivers_everything_in_order(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    transport = await open_kombu(transports, with_options(url, "factbus_prefetch=7"), names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    sent = messages(300)
    await transport.publish(topic, sent)
    received = []
    while len(received) < len(sent):
        batch = await subscription.next_batch(100, timeout=30.0)
        assert batch, "stalled: acks did not free the prefetch window"
        assert len(batch) <= 7
        for delivery in batch:
            await delivery.ack()
        received.extend(batch)
    assert bodies(received) == [m.body for m in sent]


async def two_groups(
    url: str, names: Names, transports: list[KombuTransport]
) -> tuple[KombuTransport, str, str, KombuSubscription, KombuSubscription]:
    """A transport on ``url`` and a fresh topic with two groups subscribed:
    (transport, topic, the first group's name, its subscription, the other's)."""
    transport = await open_kombu(transports, url, names)
    topic, group, other = fresh(names, "t"), fresh(names, "g"), fresh(names, "h")
    first = await transport.subscribe(topic, group)
    second = await transport.subscribe(topic, other)
    return transport, topic, group, first, second


async def test_nack_requeue_comes_back_to_its_group_only(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    # kombu's own requeue on redis re-routes through the exchange (to every group);
    # the adapter gives the message back to the nacking group's queue alone.
    transport, topic, _, first, second = await two_groups(url, names, transports)
    await transport.publish(topic, messages(4, headers={"x-trace": "t1"}))
    taken = await collect(first, 4, 30.0, ack=False)
    for delivery in taken:
        await delivery.nack(requeue=True)
    again = await collect(first, 4, 30.0)
    assert sorted(bodies(again)) == sorted(bodies(taken))
    assert all(d.redelivered and d.headers.get("x-trace") == "t1" for d in again)
    assert sorted(bodies(await collect(second, 4, 30.0))) == sorted(bodies(taken))
    assert await settle_quietly(second, 1.0) == []
    assert await settle_quietly(first, 0.5) == []


async def test_close_gives_back_to_its_group_only(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    transport, topic, closing, first, second = await two_groups(url, names, transports)
    sent = messages(20)
    await transport.publish(topic, sent)
    assert len(await collect(first, 20, 30.0, ack=False)) == 20
    await first.aclose()
    reopened = await transport.subscribe(topic, closing)
    assert sorted(bodies(await collect(reopened, 20, 30.0))) == sorted(m.body for m in sent)
    assert sorted(bodies(await collect(second, 20, 30.0))) == sorted(m.body for m in sent)
    assert await settle_quietly(second, 1.0) == []


async def test_dead_letters_are_peeked_in_order_and_purged(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    transport = await open_kombu(transports, url, names)
    topic = fresh(names, "t")
    for i in range(6):
        await transport.dead_letter(topic, f"letter-{i}".encode(), {"x-i": str(i)}, f"reason {i}")
    for _ in range(2):  # peeking leaves them in place, in order
        three = await transport.read_dead_letters(topic, 3)
        assert [letter.body for letter in three] == [b"letter-0", b"letter-1", b"letter-2"]
        every = await transport.read_dead_letters(topic, 100)
        assert [letter.reason for letter in every] == [f"reason {i}" for i in range(6)]
        assert [letter.headers["x-factbus-dead-letter-topic"] for letter in every] == [topic] * 6
        assert [letter.headers["x-i"] for letter in every] == [str(i) for i in range(6)]
    assert await transport.purge_dead_letters(topic) == 6
    assert await transport.read_dead_letters(topic, 10) == []
    assert await transport.purge_dead_letters(topic) == 0


async def test_message_key_is_the_routing_key(
    url: str, names: Names, transports: list[KombuTransport]
) -> None:
    # Queues bind with '#': every key arrives, including none and an over-long one.
    transport = await open_kombu(transports, url, names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    keys = ["Order.Placed", None, "x" * 300, "a.b.c"]
    await transport.publish(
        topic, [Message(f"k{i}".encode(), f"k{i}", k) for i, k in enumerate(keys)]
    )
    assert bodies(await collect(subscription, 4, 30.0)) == [b"k0", b"k1", b"k2", b"k3"]


# -- broker specifics ----------------------------------------------------------------------


async def nack_first_of_two(
    broker: str, names: Names, transports: list[KombuTransport]
) -> tuple[KombuTransport, str, Any]:
    """Publish two messages to a fresh topic on ``broker``, take both, nack the first
    without requeue and ack the second; return (transport, topic, subscription)."""
    transport = await open_kombu(transports, broker_url(broker), names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    await transport.publish(topic, messages(2))
    first, second = await collect(subscription, 2, 30.0, ack=False)
    await first.nack(requeue=False)
    await second.ack()
    return transport, topic, subscription


async def test_amqp_nack_without_requeue_dead_letters_natively(
    names: Names, transports: list[KombuTransport]
) -> None:
    transport, topic, _ = await nack_first_of_two("kombu_amqp", names, transports)
    letters = await dead_letters(transport, topic)
    assert [letter.body for letter in letters] == [b"m-0"]
    assert await transport.purge_dead_letters(topic) == 1


async def test_amqp_idle_publisher_keeps_its_connection_with_heartbeats(
    names: Names, transports: list[KombuTransport]
) -> None:
    url = with_options(broker_url("kombu_amqp"), "heartbeat=1")
    transport = await open_kombu(transports, url, names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    connection = transport._link.connection
    await asyncio.sleep(4.0)  # RabbitMQ drops a connection after 2 missed heartbeats
    await transport.publish(topic, messages(3))
    assert transport._link.connection is connection, "the idle publisher was dropped"
    assert bodies(await collect(subscription, 3, 30.0)) == [b"m-0", b"m-1", b"m-2"]


async def test_redis_nack_without_requeue_drops(
    names: Names, transports: list[KombuTransport]
) -> None:
    transport, topic, subscription = await nack_first_of_two("redis", names, transports)
    assert await settle_quietly(subscription, 0.5) == []
    assert await transport.read_dead_letters(topic, 10) == []


@pytest.mark.faults
async def test_redis_subscription_recovers_after_restart(
    names: Names, transports: list[KombuTransport]
) -> None:
    """The local redis has no persistence: a restart loses queues, bindings and
    messages. The consumer notices, reconnects and re-declares its queue and
    binding; the publisher reconnects on its next publish."""
    url = with_options(broker_url("redis"), "factbus_retry_timeout=20")
    publisher = await open_kombu(transports, url, names)
    consumer = await open_kombu(transports, url, names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await consumer.subscribe(topic, group)
    await publisher.publish(topic, messages(10, "before"))
    assert len(await collect(subscription, 10, 30.0)) == 10

    proc = await asyncio.create_subprocess_exec("bash", str(BROKERS_SH), "restart", "redis")
    assert await proc.wait() == 0

    # Probes published before the consumer re-declared its binding are lost (no
    # persistence); once one arrives, the subscription is back.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    probe: list[Any] = []
    while not probe and loop.time() < deadline:
        await publisher.publish(topic, [Message(b"probe", "probe")])
        probe = await subscription.next_batch(10, timeout=0.5)
        for delivery in probe:
            await delivery.ack()
    assert probe, "the subscription did not come back after the redis restart"
    after = messages(100, "after")
    await publisher.publish(topic, after)
    received = await collect(subscription, 100, 30.0)
    got = {b for b in bodies(received) if b != b"probe"}
    while len(got) < 100:
        more = await collect(subscription, 100 - len(got), 5.0)
        if not more:
            break
        got |= {b for b in bodies(more) if b != b"probe"}
    assert got == {m.body for m in after}


_DYING_CONSUMER = """
import asyncio, os, sys
from factbus.transport import open_transport

async def main(url, topic, group):
    transport = open_transport(url)
    await transport.connect()
    subscription = await transport.subscribe(topic, group)
    print("ready", flush=True)
    got = 0
    while got < 5:
        got += len(await subscription.next_batch(100, timeout=10))
    print("got", got, flush=True)
    os._exit(0)  # dies holding 5 unacked messages, as kill -9 would

asyncio.run(main(*sys.argv[1:]))
"""


def redis_with_own_unacked(visibility_timeout: float, base: str = "") -> str:
    """The test redis (or ``base``) with a short visibility timeout and unacked
    bookkeeping under keys of its own: tests running meanwhile on the same redis
    neither delay this one's restores (a restore pass of their messages holding
    kombu's mutex) nor get their messages restored early by it."""
    keys = unique("factbus.test")
    return with_options(
        base or broker_url("redis"),
        f"transport.visibility_timeout={visibility_timeout:g}"
        f"&transport.unacked_key={keys}.unacked&transport.unacked_index_key={keys}.index"
        f"&transport.unacked_mutex_key={keys}.mutex",
    )


def redis_keys(url: str, pattern: str) -> list[str]:
    """The keys matching ``pattern`` (as written, whatever ``global_keyprefix``)."""
    import redis

    client = redis.Redis.from_url(KombuConfig.from_url(url).kombu_url, decode_responses=True)
    try:
        return sorted(client.keys(pattern))
    finally:
        client.close()


def unacked_tags(url: str) -> list[str]:
    """The delivery tags in the unacked hash the transport at ``url`` records in."""
    import redis

    config = KombuConfig.from_url(url)
    options = config.transport_options
    client = redis.Redis.from_url(config.kombu_url, decode_responses=True)
    try:
        return sorted(client.hkeys(options.get("global_keyprefix", "") + options["unacked_key"]))
    finally:
        client.close()


async def died_holding_five(
    url: str, publisher: KombuTransport, topic: str, group: str
) -> list[Message]:
    """Run a consumer of ``group`` in a process of its own, publish 5 messages and let
    it die holding them unacked; return what was published."""
    dying = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_CONSUMER, url, topic, group, stdout=asyncio.subprocess.PIPE
    )
    assert dying.stdout is not None
    assert (await asyncio.wait_for(dying.stdout.readline(), 30)).strip() == b"ready"
    sent = messages(5)
    await publisher.publish(topic, sent)
    assert (await asyncio.wait_for(dying.stdout.readline(), 30)).strip() == b"got 5"
    assert await asyncio.wait_for(dying.wait(), 30) == 0
    return sent


@pytest.mark.faults
async def test_redis_messages_of_a_dead_consumer_come_back_after_the_visibility_timeout(
    names: Names, transports: list[KombuTransport]
) -> None:
    url = redis_with_own_unacked(1)
    publisher = await open_kombu(transports, url, names)
    topic, group = fresh(names, "t"), fresh(names, "g")
    sent = await died_holding_five(url, publisher, topic, group)
    subscription = await publisher.subscribe(topic, group)
    received = await collect(subscription, 5, 30.0)
    assert sorted(bodies(received)) == sorted(m.body for m in sent)
    assert all(d.redelivered for d in received)


@pytest.mark.faults
@pytest.mark.parametrize("setup", ["plain", "global_keyprefix", "global_keyprefix+priority_steps"])
async def test_redis_messages_of_a_dead_consumer_come_back_whoever_restores_them(
    setup: str, names: Names, transports: list[KombuTransport]
) -> None:
    """The restore is run by a transport that never declared the topic (it
    consumes another one), as a consumer-only process' publishing connection:
    kombu took the topic exchange for a ``direct`` one there and dropped every
    message it restored. They must come back, into their own group's queue only.

    Also under kombu's ``global_keyprefix`` (where the adapter used to fall back to
    kombu's BRPOP and shared delivery tags: the other group's ack deleted the dead
    consumer's records, and its messages never came back), and with priority steps
    that file priority 0 under a list of its own (``<queue>\\x06\\x165``)."""
    base = {
        "plain": broker_url("redis"),
        "global_keyprefix": prefixed_redis(),
        "global_keyprefix+priority_steps": prefixed_redis("transport.priority_steps=[1,5]"),
    }[setup]
    url = redis_with_own_unacked(1, base)
    prefix = KombuConfig.from_url(url).transport_options.get("global_keyprefix", "")
    publisher = await open_kombu(transports, url, names)
    topic, group, other = fresh(names, "t"), fresh(names, "g"), fresh(names, "g")
    bystander = await publisher.subscribe(topic, other)  # another group of the topic
    sent = await died_holding_five(url, publisher, topic, group)
    assert sorted(bodies(await collect(bystander, 5, 30.0))) == sorted(m.body for m in sent)
    await asyncio.sleep(0.3)  # the bystander's acks reach redis
    held = await asyncio.to_thread(unacked_tags, url)
    assert len([tag for tag in held if tag.startswith(f"{topic}.{group}/")]) == 5, held
    # Every key of the topic is under the prefix (nothing written beside it).
    assert await asyncio.to_thread(redis_keys, url, f"*{topic}*")
    assert all(
        key.startswith(prefix) for key in await asyncio.to_thread(redis_keys, url, f"*{topic}*")
    )

    restorer = await open_kombu(transports, url, names)
    await restorer.subscribe(fresh(names, "t"), fresh(names, "g"))  # starts its restorer
    deadline = time.monotonic() + 30
    while (await publisher.lag(topic, group)).get("queue", 0) < 5:
        assert time.monotonic() < deadline, "the dead consumer's messages did not come back"
        await asyncio.sleep(0.2)
    subscription = await publisher.subscribe(topic, group)
    received = await collect(subscription, 5, 30.0)
    assert sorted(bodies(received)) == sorted(m.body for m in sent)
    assert all(d.redelivered for d in received)
    assert await settle_quietly(bystander, 1.0) == []  # no restored copy for the other group


def test_redis_channel_refuses_to_consume_two_queues(names: Names) -> None:
    """kombu's BRPOP over several queues would lose a message taken during a kill;
    the adapter's channel refuses it (the adapter itself never does it)."""
    names.url = url = broker_url("redis")
    topic, one, two = fresh(names, "t"), fresh(names, "g"), fresh(names, "h")
    exchange = Exchange(topic, type="topic")
    with KombuConfig.from_url(url).connection() as connection:
        channel = connection.channel()
        queues = [Queue(f"{topic}.{g}", exchange, routing_key="#")(channel) for g in (one, two)]
        for queue in queues:
            queue.declare()
        consumer = connection.Consumer(queues, channel=channel, accept=None)
        with consumer, pytest.raises(ChannelMisuse, match="one queue per channel, not 2"):
            connection.drain_events(timeout=1)


@contextlib.contextmanager
def sentinel_of_test_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis Sentinel of its own (``redis-server --sentinel``, ephemeral port) that
    names the test redis master under a name of its own; yields (host:port, name).
    It only watches (quorum 1, no replica to fail over to)."""
    target = urlsplit(KombuConfig.from_url(broker_url("redis")).kombu_url)
    server = shutil.which("redis-server")
    if server is None:
        unavailable("redis-server is not installed (scripts/brokers.sh installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = unique("factbus-test")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\n"
        f"sentinel monitor {name} {target.hostname} {target.port or 6379} 1\n"
    )
    process = subprocess.Popen(
        [server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert process.poll() is None, "redis-server --sentinel exited"
            assert time.monotonic() < deadline, "the sentinel did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", name
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_redis_sentinel_urls_take_losslessly_too(
    tmp_path: Path, names: Names, transports: list[KombuTransport]
) -> None:
    """``kombu+sentinel://`` used to be turned into a plain redis connection to the
    sentinel's own address; it runs kombu's Sentinel transport with the adapter's
    channel (group-prefixed tags in the unacked hash show that channel took)."""
    with sentinel_of_test_redis(tmp_path) as (address, master):
        url = redis_with_own_unacked(
            300, f"kombu+sentinel://{address}/0?transport.master_name={master}"
        )
        assert KombuConfig.from_url(url).connection().transport_cls is SentinelTransport
        transport = await open_kombu(transports, url, names)
        names.url = broker_url("redis")  # clean up directly: the sentinel is gone by then
        topic, group = fresh(names, "t"), fresh(names, "g")
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, messages(5))
        taken = await collect(subscription, 5, 30.0, ack=False)
        assert bodies(taken) == [m.body for m in messages(5)]
        direct = with_options(broker_url("redis"), url.split("?", 1)[1])  # same unacked keys
        tags = await asyncio.to_thread(unacked_tags, direct)
        assert len([t for t in tags if t.startswith(f"{topic}.{group}/")]) == 5, tags
        for delivery in taken:
            await delivery.ack()
        await transport.aclose()


def kill_redis_clients(name: str) -> int:
    """Close (server side) every redis connection whose client name is ``name``."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        killed = 0
        for info in client.client_list():
            if info.get("name") == name:
                killed += int(client.client_kill_filter(_id=info["id"]))
        return killed
    finally:
        client.close()


@pytest.mark.faults
async def test_redis_clients_reconnect_when_their_connections_drop(
    names: Names, transports: list[KombuTransport]
) -> None:
    base = broker_url("redis")
    tag = uuid.uuid4().hex[:8]
    publisher = await open_kombu(
        transports, with_options(base, f"transport.client_name=pub-{tag}"), names
    )
    consumer = await open_kombu(
        transports, with_options(base, f"transport.client_name=sub-{tag}"), names
    )
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await consumer.subscribe(topic, group)
    await publisher.publish(topic, messages(10, "one"))
    assert len(await collect(subscription, 10, 30.0)) == 10
    await asyncio.sleep(0.2)  # let the acks reach redis

    assert await asyncio.to_thread(kill_redis_clients, f"pub-{tag}") > 0
    await publisher.publish(topic, messages(100, "two"))  # a pipelined batch: reconnects
    assert sorted(bodies(await collect(subscription, 100, 30.0))) == sorted(
        m.body for m in messages(100, "two")
    )
    await asyncio.sleep(0.2)

    assert await asyncio.to_thread(kill_redis_clients, f"sub-{tag}") > 0
    await asyncio.sleep(0.5)  # the consumer notices, reconnects, re-declares
    await publisher.publish(topic, messages(50, "three"))
    assert sorted(bodies(await collect(subscription, 50, 30.0))) == sorted(
        m.body for m in messages(50, "three")
    )
    assert await settle_quietly(subscription, 0.5) == []
