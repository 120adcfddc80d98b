"""The AMQP transport (aio-pika) against a real RabbitMQ: the conformance suite plus
what only AMQP has (URL options, topology, unroutable messages, native dead
letters, coalesced acks, outages through the fault proxy, TLS option mapping)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conftest import broker_url, connected
from factbus.errors import ConfigError, PublishError, TransportError
from factbus.testing.brokers import unavailable, unique, with_options
from factbus.testing.conformance import (
    ConformanceContext,
    TransportConformance,
    collect,
    dead_letters,
    messages,
    publish_with_retry,
)
from factbus.testing.faultproxy import FaultProxy, through, upstream_of
from factbus.transport import Message, Subscription, open_transport
from factbus_amqp import AmqpTransport
from factbus_amqp.config import AmqpConfig

BROKERS_SH = Path(__file__).resolve().parents[2] / "scripts" / "brokers.sh"


def amqp_url(options: str = "") -> str:
    return with_options(broker_url("amqp"), options)


class TestAmqpTransport(TransportConformance):
    restart_command = ("bash", str(BROKERS_SH), "restart", "rabbitmq")
    timeout = 30.0

    @pytest.fixture
    async def ctx(self) -> AsyncIterator[ConformanceContext]:
        context = ConformanceContext(amqp_url(), self.restart_command, self.timeout)
        try:
            yield context
        finally:
            await context.aclose()


# -- fixtures for the AMQP-specific tests ---------------------------------------------


@pytest.fixture
def names() -> list[str]:
    """The names a test made (their queues and exchanges are removed after it by
    tests/conftest.py)."""
    return []


def fresh(names: list[str], prefix: str) -> str:
    name = unique(f"amqp-{prefix}")
    names.append(name)
    return name


async def open_amqp(made: list[AmqpTransport], url: str) -> AmqpTransport:
    return await connected(made, AmqpTransport(url))


# -- URL options, reprs, driver ---------------------------------------------------------


def test_url_defaults() -> None:
    config = AmqpConfig.from_url("amqp://")
    assert (config.host, config.port, config.vhost, config.tls) == ("localhost", 5672, "/", False)
    assert (config.username, config.password) == ("guest", "guest")
    assert config.prefetch == 1000
    assert config.heartbeat == 10
    assert config.unroutable == "error"
    assert config.ssl_context() is None


def test_url_options_and_vhost() -> None:
    config = AmqpConfig.from_url(
        "amqps://al%40ice:p%3Ass@rabbit.example:1234/my%2Fvhost?prefetch=50&heartbeat=3"
        "&publish_timeout=2.5&unroutable=drop&connect_timeout=4&reconnect_delay=0.2"
        "&reconnect_max_delay=1&name=svc&verify=false&auth=external"
    )
    assert (config.host, config.port, config.tls) == ("rabbit.example", 1234, True)
    assert (config.username, config.password, config.vhost) == ("al@ice", "p:ss", "my/vhost")
    assert (config.prefetch, config.heartbeat, config.publish_timeout) == (50, 3, 2.5)
    assert (config.unroutable, config.connect_timeout, config.name) == ("drop", 4.0, "svc")
    assert (config.reconnect_delay, config.reconnect_max_delay) == (0.2, 1.0)
    assert (config.verify, config.auth) == (False, "external")
    assert AmqpConfig.from_url("amqp://h/%2F").vhost == "/"
    assert AmqpConfig.from_url("amqp://h/").vhost == "/"
    assert AmqpConfig.from_url("amqps://h").port == 5671


def test_url_handed_to_aio_pika_carries_heartbeat_name_and_auth() -> None:
    config = AmqpConfig.from_url("amqp://u:p%2Fw@h:1/v%2Fh?heartbeat=4&name=n1&auth=external")
    url = config.amqp_url()
    assert url.startswith("amqp://u:p%2Fw@h:1/v%2Fh?")
    assert "heartbeat=4" in url
    assert "name=n1" in url
    assert "auth=external" in url


@pytest.mark.parametrize(
    "url",
    [
        "amqp://h/?nope=1",
        "amqp://h/?prefetch=0",
        "amqp://h/?prefetch=lots",
        "amqp://h/?heartbeat=-1",
        "amqp://h/?publish_timeout=0",
        "amqp://h/?unroutable=ignore",
        "amqp://h/?auth=kerberos",
        "amqp://h/?verify=maybe",
        "amqp://h/?cafile=/tmp/ca.pem",
        "amqp://h/?reconnect_delay=2&reconnect_max_delay=1",
        "amqps://h/?keyfile=/tmp/k.pem",
        "kafka://h/",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        AmqpConfig.from_url(url)


def test_password_never_in_repr() -> None:
    transport = AmqpTransport("amqp://user:s3cret@127.0.0.1:5672/?prefetch=10")
    assert "s3cret" not in repr(transport)
    assert "s3cret" not in repr(transport.config)
    assert "s3cret" not in transport.config.display_url()
    assert "***" in repr(transport)


def test_open_transport_picks_the_amqp_adapter() -> None:
    assert isinstance(open_transport("amqp://guest:guest@127.0.0.1/"), AmqpTransport)
    assert isinstance(open_transport("amqps://guest:guest@127.0.0.1/"), AmqpTransport)


# -- TLS option mapping (the local broker has no TLS listener) ---------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a client certificate it signed (made with the openssl command)."""
    command = shutil.which("openssl")
    if command is None:
        unavailable("the openssl command is needed to make test certificates")
    root = tmp_path_factory.mktemp("tls")
    files = {name: root / name for name in ("ca.pem", "ca.key", "client.pem", "client.key")}
    csr = root / "client.csr"

    def openssl(*args: str | Path) -> None:
        subprocess.run([command, *map(str, args)], check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        files["ca.key"],
        "-out",
        files["ca.pem"],
        "-subj",
        "/CN=factbus-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        files["client.key"],
        "-out",
        csr,
        "-subj",
        "/CN=factbus-client",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        files["ca.pem"],
        "-CAkey",
        files["ca.key"],
        "-CAcreateserial",
        "-out",
        files["client.pem"],
        "-days",
        "2",
    )
    return files


def test_tls_options_build_the_ssl_context(certificates: dict[str, Path]) -> None:
    config = AmqpConfig.from_url(
        f"amqps://u:p@rabbit.example/?cafile={certificates['ca.pem']}"
        f"&certfile={certificates['client.pem']}&keyfile={certificates['client.key']}"
    )
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "factbus-test-ca"} in subjects
    assert config.amqp_url().startswith("amqps://")


def test_tls_verify_false_and_bad_files(certificates: dict[str, Path]) -> None:
    context = AmqpConfig.from_url("amqps://h/?verify=false").ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    with pytest.raises(ConfigError):
        AmqpConfig.from_url(f"amqps://h/?cafile={certificates['client.key']}x").ssl_context()
    with pytest.raises(ConfigError):  # a certificate with the wrong key
        AmqpConfig.from_url(
            f"amqps://h/?certfile={certificates['client.pem']}&keyfile={certificates['ca.key']}"
        ).ssl_context()


# -- against the broker -----------------------------------------------------------------


async def test_connect_fails_fast_when_nothing_listens() -> None:
    with socket_port() as port:
        pass  # the port is free again: nothing listens there
    transport = AmqpTransport(f"amqp://guest:guest@127.0.0.1:{port}/?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(TransportError):
        await transport.connect()
    assert time.monotonic() - started < 10
    await transport.aclose()


async def test_wrong_password_is_refused_without_showing_it() -> None:
    url = amqp_url().replace("guest:guest@", "guest:wr0ngpass@")
    transport = AmqpTransport(url)
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    assert "wr0ngpass" not in str(caught.value)
    await transport.aclose()


async def test_topology_and_message_properties(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    transport = await open_amqp(transports, amqp_url())
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    await transport.publish(topic, [Message(b"body", "the-id", "the.key", {"x-h": "v"})])
    assert len(await collect(subscription, 1, 10, ack=False)) == 1
    await subscription.aclose()  # unacked: back in the queue for the raw look below

    connection = await aio_pika.connect(AmqpConfig.from_url(amqp_url()).amqp_url())
    try:
        channel = await connection.channel()
        await channel.get_exchange(topic)  # passive: raises when missing
        await channel.get_exchange(f"{topic}.dead-letter")
        await channel.get_queue(f"{topic}.dead-letter")
        queue = await channel.get_queue(f"{topic}.{group}")
        message = await queue.get(timeout=5)
        assert message.body == b"body"
        assert message.message_id == "the-id"
        assert message.routing_key == "the.key"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers["x-h"] == "v"
        assert message.redelivered
        await message.ack()
    finally:
        await connection.close()


async def test_unroutable_publish_raises_or_drops(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    strict = await open_amqp(transports, amqp_url())
    with pytest.raises(PublishError, match="unroutable"):
        await strict.publish(fresh(names, "nobody"), messages(3))
    lenient = await open_amqp(transports, amqp_url("unroutable=drop"))
    await lenient.publish(fresh(names, "nobody"), messages(3))
    # The channel is still usable after a returned message.
    topic = fresh(names, "t")
    subscription = await strict.subscribe(topic, fresh(names, "g"))
    await strict.publish(topic, messages(3))
    assert len(await collect(subscription, 3, 10)) == 3


async def test_reserved_group_name(names: list[str], transports: list[AmqpTransport]) -> None:
    transport = await open_amqp(transports, amqp_url())
    with pytest.raises(ConfigError):
        await transport.subscribe(fresh(names, "t"), "dead-letter")


async def test_nack_without_requeue_dead_letters_natively(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    transport = await open_amqp(transports, amqp_url())
    topic = fresh(names, "t")
    subscription = await transport.subscribe(topic, fresh(names, "g"))
    await transport.publish(topic, messages(3, headers={"x-trace": "t1"}))
    received = await collect(subscription, 3, 10, ack=False)
    await received[0].ack()
    await received[1].nack(requeue=False)
    await received[2].ack()
    letters = await dead_letters(transport, topic)
    assert [letter.body for letter in letters] == [received[1].body]
    assert letters[0].reason == "broker: rejected"
    assert letters[0].headers["x-trace"] == "t1"
    assert await transport.purge_dead_letters(topic) == 1


async def test_coalesced_acks_never_ack_what_was_held_or_nacked(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    transport = await open_amqp(transports, amqp_url())
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    sent = messages(60)
    await transport.publish(topic, sent)
    received = await collect(subscription, 60, 10, ack=False)
    assert [d.body for d in received] == [m.body for m in sent]
    held, nacked = received[10], received[20]
    for delivery in received:
        if delivery is nacked:
            await delivery.nack(requeue=True)
        elif delivery is not held:
            await delivery.ack()
    again = await collect(subscription, 1, 10, ack=False)
    assert [d.body for d in again] == [nacked.body]
    assert again[0].redelivered
    await again[0].ack()
    with pytest.raises(TransportError):
        await again[0].ack()
    await subscription.aclose()
    reopened = await (await open_amqp(transports, amqp_url())).subscribe(topic, group)
    rest = await collect(reopened, 1, 10)
    assert [d.body for d in rest] == [held.body]
    assert await reopened.next_batch(10, timeout=0.5) == []


async def test_next_batch_returns_what_is_buffered_without_waiting(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    transport = await open_amqp(transports, amqp_url("prefetch=100"))
    topic = fresh(names, "t")
    subscription = await transport.subscribe(topic, fresh(names, "g"))
    await transport.publish(topic, messages(30))
    await asyncio.sleep(0.5)  # let the broker push everything
    started = time.monotonic()
    first = await subscription.next_batch(1000, timeout=5)
    assert len(first) == 30
    assert time.monotonic() - started < 0.5
    for delivery in first:
        await delivery.ack()


async def test_consumer_comes_back_when_its_queue_is_deleted(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    transport = await open_amqp(transports, amqp_url("reconnect_delay=0.1"))
    topic, group = fresh(names, "t"), fresh(names, "g")
    subscription = await transport.subscribe(topic, group)
    connection = await aio_pika.connect(AmqpConfig.from_url(amqp_url()).amqp_url())
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{topic}.{group}")  # the broker cancels our consumer
    finally:
        await connection.close()
    sent = messages(5)
    for _ in range(50):  # unroutable until the consumer has declared its queue again
        try:
            await transport.publish(topic, sent)
            break
        except PublishError:
            await asyncio.sleep(0.1)
    received = await collect(subscription, 5, 10)
    assert sorted(d.body for d in received) == sorted(m.body for m in sent)


# -- outages, through the fault proxy ------------------------------------------------


@contextlib.contextmanager
def socket_port() -> Any:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def behind_proxy(
    names: list[str], transports: list[AmqpTransport], options: str
) -> AsyncIterator[tuple[FaultProxy, AmqpTransport, str, Subscription]]:
    """(the proxy, a transport connected through it with the URL ``options`` added,
    a fresh topic, a subscription of a fresh group to it); the proxy, in front of
    the test broker, is stopped afterwards."""
    proxy = FaultProxy(upstream_of(amqp_url()))
    await proxy.start()
    try:
        transport = await open_amqp(transports, with_options(through(amqp_url(), proxy), options))
        topic = fresh(names, "t")
        yield proxy, transport, topic, await transport.subscribe(topic, fresh(names, "g"))
    finally:
        await proxy.stop()


async def test_outage_publish_times_out_then_everything_recovers(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    options = "publish_timeout=1&reconnect_delay=0.1&reconnect_max_delay=0.3&connect_timeout=2"
    async with behind_proxy(names, transports, options) as (proxy, transport, topic, subscription):
        await transport.publish(topic, messages(10, "before"))
        assert len(await collect(subscription, 10, 10)) == 10

        proxy.refuse()  # every connection reset, every new one too
        started = time.monotonic()
        with pytest.raises(PublishError):
            await transport.publish(topic, messages(10, "lost"))
        assert time.monotonic() - started < 5
        assert await subscription.next_batch(10, timeout=0.2) == []

        proxy.passthrough()
        after = messages(10, "after")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        await publish_with_retry(transport, topic, after, 20, PublishError)
        want, seen = {m.body for m in after}, set[bytes]()
        while not want <= seen and loop.time() < deadline + 10:
            seen.update(d.body for d in await collect(subscription, 10, 1))
        assert want <= seen
        assert transport.link is not None
        assert transport.link.reconnects >= 1


async def test_heartbeat_notices_a_silent_connection(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    options = "heartbeat=1&reconnect_delay=0.1&reconnect_max_delay=0.3&connect_timeout=2"
    async with behind_proxy(names, transports, options) as (proxy, transport, topic, subscription):
        accepted = proxy.stats.accepted
        proxy.drop()  # silence: nothing forwarded, no connection closed
        # With heartbeat=1 the client gives up on a silent connection after about
        # 3 x (1 + 1) s and opens a new one; from then on the proxy forwards again.
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert transport.link is not None
        for _ in range(100):
            if proxy.stats.accepted > accepted:
                break
            await asyncio.sleep(0.1)
        proxy.passthrough()
        for _ in range(100):
            if transport.link.reconnects:
                break
            await asyncio.sleep(0.2)
        assert transport.link.reconnects >= 1
        assert loop.time() - started < 15
        await transport.publish(topic, messages(5))
        assert len(await collect(subscription, 5, 10)) == 5


async def test_publish_cut_off_while_acks_fill_the_write_queue_is_sent_again(
    names: list[str], transports: list[AmqpTransport]
) -> None:
    """A transport that consumes and publishes (a bus, a sidecar) loses its connection
    in the middle of a publish burst while a run of acks goes out on it too. The
    publish is sent again on the next connection and returns, far within
    ``publish_timeout``, and every message arrives.

    Why it could fail: aiormq's writer stops at once when the connection breaks, but
    its channels close a few loop turns later; meanwhile the acks (one frame each,
    no channel lock) fill the connection's write queue (10 frames), and the publish
    holding the channel lock waits on that queue for ever. The transport used to
    wait for its confirms until ``publish_timeout`` and raise ``PublishError`` (about
    9 runs in 10 of this test; the connection-faults test hit the same in CI).
    """
    options = (
        "publish_timeout=20&heartbeat=2&connect_timeout=2&reconnect_delay=0.1"
        "&reconnect_max_delay=0.3&prefetch=2000"
    )
    direct = await open_amqp(transports, amqp_url())
    async with behind_proxy(names, transports, options) as (proxy, transport, consumed, inbox):
        target = fresh(names, "t")
        receiver = await direct.subscribe(target, fresh(names, "g"))
        await direct.publish(consumed, messages(2000, "held"))
        held: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(held) < 2000 and loop.time() < deadline:
            held += await inbox.next_batch(2000, timeout=1)
        assert len(held) == 2000
        burst = [Message(b"%d-" % i + b"x" * 300, f"burst-{i}", None, {}) for i in range(1000)]

        # Cut the connection once, 10 kB into the burst and the acks.
        proxy.close_after(proxy.stats.bytes_forwarded + 10_000)

        async def heal() -> None:
            while proxy.stats.closed_after == 0:  # noqa: ASYNC110 - the proxy's own counter
                await asyncio.sleep(0)
            proxy.close_after(None)

        healer = asyncio.create_task(heal())
        started = loop.time()
        publish = asyncio.create_task(transport.publish(target, burst))
        await asyncio.sleep(0)
        for delivery in held[::2]:  # the odd ones stay held: one basic.ack frame each
            await delivery.ack()
        await publish
        took = loop.time() - started
        healer.cancel()
        assert proxy.stats.closed_after == 1
        assert transport.link is not None and transport.link.reconnects >= 1
        assert took < transport.config.publish_timeout / 2, took
        want, seen = {m.body for m in burst}, set[bytes]()
        while not want <= seen and loop.time() < deadline + 30:
            seen.update(d.body for d in await collect(receiver, len(want), 2))
        assert want <= seen
