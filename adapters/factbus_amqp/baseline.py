"""``amqp://`` baseline: aio-pika with publisher confirms.

Same topology and durability as the factbus adapter: a durable topic exchange
and a durable queue bound with ``#``, persistent messages carrying the id as
``message_id`` and routing key. The producer (its own connection) publishes on
a confirm-mode channel and awaits each chunk's confirms together
(``asyncio.gather`` of ``exchange.publish``: aio-pika's documented way to batch
confirms); the consumer (another connection, ``prefetch`` from the URL, as the
adapter) iterates ``queue.iterator()`` and acks each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from factbus.bench.baseline import Arrivals
from factbus.errors import MissingDriver, TransportError
from factbus_amqp import removal
from factbus_amqp.config import AmqpConfig
from factbus_amqp.removal import connect_raw

try:
    import aio_pika
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingDriver("amqp", "amqp") from error


class AmqpBaseline(Arrivals):
    """See the module docstring."""

    def __init__(self, url: str, destination: str) -> None:
        self.config = AmqpConfig.from_url(url)
        self.exchange = destination
        self.queue = f"{destination}.raw"
        self.client = f"aio-pika {version('aio-pika')} (publisher confirms)"
        self._connection: Any = None
        self._channel: Any = None

    async def _connect(self) -> Any:
        return await connect_raw(self.config)

    async def setup(self, subscribe: bool = True) -> None:
        self._connection = await self._connect()
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.config.prefetch)
        exchange = await self._channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await self._channel.declare_queue(self.queue, durable=True)
        await queue.bind(exchange, "#")

    async def subscribe(self) -> None:
        pass  # consume() starts the queue iterator

    async def produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        connection = await self._connect()
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.exchange)
            persistent = aio_pika.DeliveryMode.PERSISTENT
            start = time.perf_counter()
            for chunk in chunks:
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                bodies[i], message_id=keys[i], delivery_mode=persistent
                            ),
                            routing_key=keys[i],
                        )
                        for i in chunk
                    )
                )
            return start, time.perf_counter()
        finally:
            await connection.close()

    async def consume(self, count: int, timeout: float) -> float:
        if self._channel is None:
            raise TransportError("setup() first")
        queue = await self._channel.get_queue(self.queue)
        last = time.perf_counter()
        async with asyncio.timeout(timeout), queue.iterator() as messages:
            async for message in messages:
                message.body  # noqa: B018 - touch the bytes like a real consumer
                await message.ack()
                self.arrived()
                if self.received >= count:
                    last = time.perf_counter()
                    break
        return last

    async def teardown(self, remove: bool = True) -> list[str]:
        await self._close()
        if not remove:
            return []
        try:
            return await removal.delete(self.config, [self.queue], [self.exchange])
        except Exception as error:
            return [f"rabbitmq queue {self.queue!r} and exchange {self.exchange!r}: {error}"]

    async def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


__all__ = ["AmqpBaseline", "connect_raw"]
