"""The fault proxy itself, against a local echo server: each fault does what it says,
and the Kafka mode rewrites broker ports in Metadata and FindCoordinator responses."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from factbus.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.faults


@contextlib.asynccontextmanager
async def server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 2
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_passthrough_latency_and_drop() -> None:
    async with server(echo) as port:
        with FaultProxy(("127.0.0.1", port)).running() as proxy:
            reader, writer = await connect(proxy)
            assert await roundtrip(reader, writer, b"hello") == b"hello"

            proxy.set_latency(0.2)
            started = time.monotonic()
            assert await roundtrip(reader, writer, b"slow") == b"slow"
            assert time.monotonic() - started >= 0.35  # 0.2 each way
            proxy.set_latency(0)

            proxy.drop()
            writer.write(b"lost?")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(5), 0.5)
            assert not reader.at_eof()  # the socket stays open
            late_reader, late_writer = await connect(proxy)  # accepted, not forwarded
            proxy.passthrough()
            assert await asyncio.wait_for(reader.readexactly(5), 2) == b"lost?"
            assert await roundtrip(late_reader, late_writer, b"late") == b"late"
            writer.close()
            late_writer.close()


async def test_reset_refuse_and_close_after() -> None:
    async with server(echo) as port:
        with FaultProxy(("127.0.0.1", port)).running() as proxy:
            reader, writer = await connect(proxy)
            assert await roundtrip(reader, writer, b"x") == b"x"
            assert proxy.reset_connections() == 1
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await roundtrip(reader, writer, b"y" * 100_000)
            writer.close()

            reader, writer = await connect(proxy)  # new connections pass
            assert await roundtrip(reader, writer, b"z") == b"z"

            proxy.refuse()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                refused_reader, refused_writer = await connect(proxy)  # may be reset already
                try:
                    await roundtrip(refused_reader, refused_writer, b"no")
                finally:
                    refused_writer.close()
            proxy.passthrough()

            proxy.close_after(10)
            reader, writer = await connect(proxy)
            writer.write(b"0123456789abcdef")
            await writer.drain()
            received = await asyncio.wait_for(reader.read(100), 2)
            rest = await asyncio.wait_for(reader.read(100), 2)
            assert len(received) + len(rest) <= 10
            assert rest == b"" or (await asyncio.wait_for(reader.read(100), 2)) == b""
            writer.close()
            assert proxy.stats.closed_after >= 1
            assert proxy.stats.reset >= 2


# -- Kafka: the proxy rewrites advertised broker ports ------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact(text: str | None) -> bytes:
    if text is None:
        return _uvarint(0)
    raw = text.encode()
    return _uvarint(len(raw) + 1) + raw


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _request(api_key: int, version: int, correlation: int) -> bytes:
    return _frame(struct.pack(">hhih", api_key, version, correlation, 4) + b"test")


def metadata_v12(correlation: int, port: int) -> bytes:
    body = struct.pack(">i", correlation) + _uvarint(0)  # header v1: no tags
    body += struct.pack(">i", 0)  # throttle
    body += _uvarint(2)  # one broker
    body += struct.pack(">i", 1) + _compact("127.0.0.1") + struct.pack(">i", port)
    body += _compact(None) + _uvarint(0)  # rack, tags
    body += _compact("cluster") + struct.pack(">i", 1) + _uvarint(1) + _uvarint(0)
    return _frame(body)


def find_coordinator_v4(correlation: int, port: int) -> bytes:
    body = struct.pack(">i", correlation) + _uvarint(0)
    body += struct.pack(">i", 0) + _uvarint(2)  # throttle, one coordinator
    body += _compact("group") + struct.pack(">i", 1) + _compact("127.0.0.1")
    body += struct.pack(">i", port) + struct.pack(">h", 0) + _compact(None) + _uvarint(0)
    body += _uvarint(0)
    return _frame(body)


def metadata_v1(correlation: int, port: int) -> bytes:
    body = struct.pack(">i", correlation)
    body += struct.pack(">i", 1)  # brokers
    body += (
        struct.pack(">ih", 1, 9) + b"127.0.0.1" + struct.pack(">i", port) + struct.pack(">h", -1)
    )
    body += struct.pack(">i", 1) + struct.pack(">i", 0)  # controller, no topics
    return _frame(body)


async def test_kafka_mode_rewrites_advertised_ports() -> None:
    responses: dict[int, Callable[[int, int], bytes]] = {
        7: metadata_v12,
        8: find_coordinator_v4,
        9: metadata_v1,
    }
    upstream_port = 0

    async def fake_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                correlation = struct.unpack_from(">i", frame, 4)[0]
                response = responses[correlation](correlation, upstream_port)
                # Split the response to check the proxy reassembles frames.
                writer.write(response[:5])
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.write(response[5:])
                await writer.drain()
        writer.close()

    async with server(fake_broker) as port:
        upstream_port = port
        with FaultProxy(("127.0.0.1", port), kafka=True).running() as proxy:
            reader, writer = await connect(proxy)
            for correlation, api_key, version in ((7, 3, 12), (8, 10, 4), (9, 3, 1)):
                writer.write(_request(api_key, version, correlation))
                await writer.drain()
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                expected = responses[correlation](correlation, proxy.port)[4:]
                assert frame == expected, f"correlation {correlation}"
            writer.close()
            assert proxy.stats.rewritten == 3
