"""``kombu+<transport>://`` baseline: kombu's ``Producer`` and ``Consumer``.

The URL is read as the adapter reads it (:class:`factbus_kombu.config.KombuConfig`:
the kombu URL, transport options, TLS, ``factbus_prefetch``). A durable direct
exchange and a durable queue; persistent messages published one
``Producer.publish`` call each (on AMQP with kombu's ``confirm_publish``, which
waits for each confirm: kombu has no batched confirms); a ``Consumer`` with
``qos(prefetch_count=factbus_prefetch)`` draining events and acking each
message. Producer and consumer run in threads of their own (kombu is blocking),
each on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from factbus.bench.baseline import Arrivals
from factbus.errors import MissingDriver, TransportError
from factbus_kombu import removal
from factbus_kombu.config import KombuConfig

try:
    from kombu import Connection, Exchange, Queue
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingDriver("kombu", "kombu") from error


class KombuBaseline(Arrivals):
    """See the module docstring."""

    def __init__(self, url: str, destination: str) -> None:
        self.config = KombuConfig.from_url(url)
        self.amqp = self.config.driver_type == "amqp"
        self.exchange = Exchange(destination, type="direct", durable=True, delivery_mode=2)
        self.queue = Queue(
            f"{destination}.raw", self.exchange, routing_key=destination, durable=True
        )
        self.routing_key = destination
        confirms = " (confirm_publish)" if self.amqp else ""
        self.client = f"kombu {version('kombu')} on {self.config.transport}{confirms}"

    def _connection(self, *, confirm: bool = False) -> Any:
        options = dict(self.config.transport_options)
        if confirm and self.amqp:
            options["confirm_publish"] = True
        return Connection(
            self.config.kombu_url,
            transport_options=options,
            ssl=self.config.ssl if self.config.ssl is not None else False,
        )

    async def setup(self, subscribe: bool = True) -> None:
        def declare() -> None:
            with self._connection() as connection:
                self.queue(connection.default_channel).declare()

        await asyncio.to_thread(declare)

    async def subscribe(self) -> None:
        pass  # consume() starts the consumer thread

    async def produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        return await asyncio.to_thread(self._produce, bodies, keys, chunks)

    def _produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        with self._connection(confirm=True) as connection:
            connection.ensure_connection(max_retries=3)
            producer = connection.Producer(exchange=self.exchange, serializer=None)
            publish = producer.publish
            routing_key = self.routing_key
            start = time.perf_counter()
            for chunk in chunks:
                for i in chunk:
                    publish(
                        bodies[i],
                        routing_key=routing_key,
                        content_type="application/octet-stream",
                        content_encoding="binary",
                        delivery_mode=2,
                        message_id=keys[i],
                    )
            return start, time.perf_counter()

    async def consume(self, count: int, timeout: float) -> float:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        stop = threading.Event()

        def settle(result: float | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def run() -> None:
            try:
                last = self._consume(count, stop)
            except BaseException as error:
                loop.call_soon_threadsafe(settle, error)
            else:
                loop.call_soon_threadsafe(settle, last)

        thread = threading.Thread(target=run, name="bench-kombu-consumer", daemon=True)
        thread.start()
        try:
            async with asyncio.timeout(timeout):
                return await done
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 10)

    def _consume(self, count: int, stop: threading.Event) -> float:
        last = time.perf_counter()

        def on_message(body: Any, message: Any) -> None:
            nonlocal last
            message.ack()
            last = self.arrived()

        with self._connection() as connection:
            queue = self.queue(connection.default_channel)
            with connection.Consumer([queue], callbacks=[on_message], accept=None) as consumer:
                consumer.qos(prefetch_count=self.config.prefetch)
                while self.received < count:
                    if stop.is_set():
                        raise TransportError(f"raw consumer stopped at {self.received}/{count}")
                    with contextlib.suppress(socket.timeout, TimeoutError):
                        connection.drain_events(timeout=0.2)
        return last

    async def teardown(self, remove: bool = True) -> list[str]:
        if not remove:
            return []
        try:
            return await asyncio.to_thread(
                removal.delete, self.config, [self.queue], [self.exchange]
            )
        except Exception as error:
            return [f"kombu queue {self.queue.name!r} and exchange {self.exchange.name!r}: {error}"]
