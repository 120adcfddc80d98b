"""A fault-injecting TCP proxy on loopback, for tests that break connections on purpose.

Put it between a client and a broker (``amqp://guest:guest@127.0.0.1:<proxy.port>/``)
and switch faults on and off while traffic flows::

    with FaultProxy(("127.0.0.1", 5672)).running() as proxy:
        ...                          # clients connect to proxy.port
        proxy.reset_connections()    # every open connection gets a TCP RST, new ones pass
        proxy.drop()                 # silent drop: nothing forwarded, sockets stay open
        proxy.passthrough()          # heal: stalled connections go on where they stopped
        proxy.set_latency(0.2)       # every chunk, both ways, arrives 200 ms late
        proxy.close_after(4096)      # connections are closed once 4096 bytes went through
        proxy.refuse()               # open and new connections are reset (broker "down")

Faults:

- ``reset_connections()``: one shot. Every open connection is aborted with a
  RST (``SO_LINGER`` 0) on both sides; new connections pass.
- ``refuse()``: like a dead broker: open connections are reset, new ones are
  accepted and reset at once, until ``passthrough()``.
- ``drop()``: a network black hole: the proxy stops reading and forwarding in
  both directions and leaves every socket open; new connections are accepted
  but not connected upstream. Kernel buffers fill, so the peers only notice by
  their own timeouts (heartbeats). ``passthrough()`` resumes every stalled
  connection where it stopped (as TCP would after a healed partition), unless
  a peer gave up meanwhile.
- ``set_latency(seconds)``: every chunk is held that long in each direction,
  without reducing throughput (chunks queue, they do not wait one by one).
- ``close_after(n)``: each connection is closed (FIN on both sides, mid-frame
  if need be) once ``n`` bytes (both directions together) went through it;
  ``close_after(None)`` turns it off.

Kafka: a client learns broker addresses from Metadata and FindCoordinator
responses, so behind a plain proxy it would bypass it after bootstrap.
``FaultProxy(..., kafka=True)`` parses the Kafka wire protocol and rewrites,
in those responses, every broker port equal to the upstream port into the
proxy's port (host strings are kept, so the proxy must listen on the host the
broker advertises, e.g. ``127.0.0.1``). This covers a single-broker cluster;
frames it cannot parse pass unchanged.

Threading: :meth:`FaultProxy.running` serves from a daemon thread with its own
event loop, so a test's own loop (or blocking code) cannot delay forwarding;
every control method may be called from any thread and returns once the change
is in effect. :meth:`FaultProxy.start` serves from the running loop instead.
:func:`upstream_of` and :func:`through` put it in front of the broker a
transport URL names. ``python -m factbus.testing.faultproxy --upstream
127.0.0.1:5672`` runs one from the command line (faults switched by typing
their names on stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

_READ = 65536
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class ProxyStats:
    """What the proxy did since it started (read from any thread; plain counters)."""

    accepted: int = 0
    """Client connections accepted."""
    reset: int = 0
    """Connections aborted with a RST (reset_connections, refuse)."""
    closed_after: int = 0
    """Connections closed by the ``close_after`` rule."""
    bytes_forwarded: int = 0
    rewritten: int = 0
    """Kafka broker addresses rewritten to the proxy's."""
    upstream_failures: int = 0
    """Upstream connection attempts that failed (the client connection is then closed)."""


class FaultProxy:
    """A TCP proxy from ``listen`` to ``upstream`` with switchable faults (see the module
    docstring). Not reusable once stopped."""

    def __init__(
        self,
        upstream: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        kafka: bool = False,
    ) -> None:
        self.upstream = upstream
        self.listen = listen
        self.kafka = kafka
        self.stats = ProxyStats()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._latency = 0.0
        self._close_after: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.listen[0]}:{self.port}"

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Listen, serving from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultProxy]:
        """Serve from a daemon thread with its own loop for the ``with`` block."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="factbus-faultproxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)

    # -- faults (any thread) -----------------------------------------------

    def passthrough(self) -> None:
        """Forward normally: heal a drop or a refusal (latency and close_after stay)."""

        def apply() -> None:
            self._refusing = False
            assert self._flowing is not None
            self._flowing.set()

        self._control(apply)

    def drop(self) -> None:
        """Silently stop forwarding; keep every socket open."""

        def apply() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._control(apply)

    def reset_connections(self) -> int:
        """Abort every open connection with a RST; return how many."""

        def apply() -> int:
            links = list(self._links)
            for link in links:
                link.abort()
            self.stats.reset += len(links)
            return len(links)

        return self._control(apply)

    def refuse(self) -> None:
        """Reset open connections and every new one until :meth:`passthrough`."""

        def apply() -> None:
            self._refusing = True
            assert self._flowing is not None
            self._flowing.set()  # stalled links must wake up to be reset

        self._control(apply)
        self.reset_connections()

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0 turns it off)."""

        def apply() -> None:
            self._latency = max(0.0, seconds)

        self._control(apply)

    def close_after(self, nbytes: int | None) -> None:
        """Close each connection once ``nbytes`` went through it (``None``: never)."""

        def apply() -> None:
            self._close_after = nbytes
            for link in list(self._links):
                link.check_limit()

        self._control(apply)

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._links)

    def _control(self, apply: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return apply()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(apply())
            except BaseException as error:
                future.set_exception(error)

        loop.call_soon_threadsafe(call)
        return future.result(timeout=10)

    # -- connections --------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            if not link.closed:  # cancelled (proxy stopping): nothing left to flush
                link.abort()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.forwarded = 0
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []
        self.requests: dict[int, tuple[int, int]] = {}
        """Kafka: correlation id -> (api key, api version) of requests in flight."""

    async def run(self) -> None:
        proxy = self.proxy
        assert proxy._flowing is not None
        await proxy._flowing.wait()
        if proxy._refusing or self.is_dead():
            self.abort()
            return
        try:
            self.upstream = await asyncio.open_connection(*proxy.upstream)
        except OSError:
            proxy.stats.upstream_failures += 1
            self.abort()
            return
        if self.is_dead():  # reset while connecting
            self.abort()
            return
        client_reader, client_writer = self.client
        upstream_reader, upstream_writer = self.upstream
        self.tasks = [
            asyncio.create_task(self._pump(client_reader, upstream_writer, outbound=True)),
            asyncio.create_task(self._pump(upstream_reader, client_writer, outbound=False)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, outbound: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        framer = _KafkaFramer() if self.proxy.kafka else None
        flowing = self.proxy._flowing
        assert flowing is not None
        try:
            while not self.closed:
                await flowing.wait()
                if self.proxy._refusing:
                    self.abort()
                    return
                try:
                    data = await reader.read(_READ)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                if framer is not None:
                    data = framer.feed(data, self, outbound=outbound)
                    if not data:
                        continue
                queue.put_nowait((time.monotonic() + self.proxy._latency, data))
            queue.put_nowait(None)
            await sender
        finally:
            sender.cancel()
            # One side ended (or failed): end the other side too.
            if not self.closed:
                with contextlib.suppress(Exception):
                    if writer.can_write_eof():
                        writer.write_eof()
                self.close()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        flowing = self.proxy._flowing
        assert flowing is not None
        while True:
            item = await queue.get()
            if item is None:
                return
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await flowing.wait()
            if self.closed:
                return
            limit = self.proxy._close_after
            if limit is not None and self.forwarded + len(data) >= limit:
                allowed = max(0, limit - self.forwarded)
                with contextlib.suppress(Exception):
                    writer.write(data[:allowed])
                self.forwarded += allowed
                self.proxy.stats.bytes_forwarded += allowed
                self.proxy.stats.closed_after += 1
                self.close()
                return
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                self.close()
                return
            self.forwarded += len(data)
            self.proxy.stats.bytes_forwarded += len(data)

    def is_dead(self) -> bool:
        """Closed or aborted (a method: the state changes across awaits)."""
        return self.closed

    def check_limit(self) -> None:
        limit = self.proxy._close_after
        if limit is not None and self.forwarded >= limit and not self.closed:
            self.proxy.stats.closed_after += 1
            self.close()

    def close(self) -> None:
        """Close both sides politely (FIN)."""
        if self.closed:
            return
        self.closed = True
        for writer in self._writers():
            with contextlib.suppress(Exception):
                writer.close()
        self._cancel()

    def abort(self) -> None:
        """Close both sides with a RST."""
        already = self.closed
        self.closed = True
        for writer in self._writers():
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(Exception):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            with contextlib.suppress(Exception):
                writer.transport.abort()
        if not already:
            self._cancel()

    def _writers(self) -> list[asyncio.StreamWriter]:
        writers = [self.client[1]]
        if self.upstream is not None:
            writers.append(self.upstream[1])
        return writers

    def _cancel(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


# -- Kafka -------------------------------------------------------------------

_METADATA = 3
_FIND_COORDINATOR = 10
_API_VERSIONS = 18


class _KafkaFramer:
    """Cuts one direction of a Kafka connection into whole frames; records requests
    (outbound) and rewrites broker ports in responses (inbound)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes, link: _Link, *, outbound: bool) -> bytes:
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 4:
            size = struct.unpack_from(">i", self.buffer, 0)[0]
            if size < 0 or len(self.buffer) < 4 + size:
                break
            frame = bytearray(self.buffer[: 4 + size])
            del self.buffer[: 4 + size]
            if outbound:
                _note_request(frame, link)
            else:
                _rewrite_response(frame, link)
            out += frame
        return bytes(out)


def _note_request(frame: bytearray, link: _Link) -> None:
    if len(frame) >= 12:
        api_key, api_version, correlation = struct.unpack_from(">hhi", frame, 4)
        if api_key in (_METADATA, _FIND_COORDINATOR):
            link.requests[correlation] = (api_key, api_version)


def _rewrite_response(frame: bytearray, link: _Link) -> None:
    if len(frame) < 8:
        return
    correlation = struct.unpack_from(">i", frame, 4)[0]
    request = link.requests.pop(correlation, None)
    if request is None:
        return
    api_key, version = request
    proxy = link.proxy
    try:
        reader = _Reader(frame, 8)
        if api_key == _METADATA:
            flexible = version >= 9
            if flexible:
                reader.tags()  # response header v1
            ports = _metadata_ports(reader, version, flexible)
        else:
            flexible = version >= 3
            if flexible:
                reader.tags()
            ports = _coordinator_ports(reader, version, flexible)
    except (IndexError, struct.error, ValueError):
        return  # not what we expected: leave it alone
    for offset in ports:
        if struct.unpack_from(">i", frame, offset)[0] == proxy.upstream[1]:
            struct.pack_into(">i", frame, offset, proxy.port)
            proxy.stats.rewritten += 1


def _metadata_ports(reader: _Reader, version: int, flexible: bool) -> list[int]:
    if version >= 3:
        reader.skip(4)  # throttle_time_ms
    ports: list[int] = []
    for _ in range(reader.array(flexible)):
        reader.skip(4)  # node_id
        reader.string(flexible)  # host
        ports.append(reader.pos)
        reader.skip(4)  # port
        if version >= 1:
            reader.string(flexible)  # rack (nullable)
        if flexible:
            reader.tags()
    return ports


def _coordinator_ports(reader: _Reader, version: int, flexible: bool) -> list[int]:
    if version >= 1:
        reader.skip(4)  # throttle_time_ms
    if version >= 4:
        ports: list[int] = []
        for _ in range(reader.array(flexible)):
            reader.string(flexible)  # key
            reader.skip(4)  # node_id
            reader.string(flexible)  # host
            ports.append(reader.pos)
            reader.skip(4)  # port
            reader.skip(2)  # error_code
            reader.string(flexible)  # error_message
            reader.tags()
        return ports
    reader.skip(2)  # error_code
    if version >= 1:
        reader.string(flexible)  # error_message
    reader.skip(4)  # node_id
    reader.string(flexible)  # host
    return [reader.pos]


class _Reader:
    """Just enough of Kafka's primitive types to find fields' offsets."""

    def __init__(self, data: bytearray, pos: int) -> None:
        self.data = data
        self.pos = pos

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos > len(self.data):
            raise IndexError("past the end of the frame")

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise ValueError("varint too long")

    def string(self, flexible: bool) -> None:
        if flexible:
            length = self.uvarint() - 1
        else:
            length = struct.unpack_from(">h", self.data, self.pos)[0]
            self.pos += 2
        if length > 0:
            self.skip(length)

    def array(self, flexible: bool) -> int:
        if flexible:
            return max(0, self.uvarint() - 1)
        count: int = struct.unpack_from(">i", self.data, self.pos)[0]
        self.pos += 4
        return max(0, count)

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.skip(self.uvarint())


# -- command line ------------------------------------------------------------


def upstream_of(url: str) -> tuple[str, int]:
    """The ``(host, port)`` of the broker a transport URL names (its first host, if
    it names several), to put a proxy in front of it."""
    parts = urlsplit(url.split(",")[0])
    return parts.hostname or "127.0.0.1", parts.port or 0


def through(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's address; credentials,
    path and options are kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{proxy.address}" if userinfo else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factbus.testing.faultproxy",
        description="A fault-injecting TCP proxy. Commands on stdin: pass, drop, reset, "
        "refuse, latency SECONDS, close-after BYTES|off, stats, quit.",
    )
    parser.add_argument("--upstream", required=True, type=_parse_address, help="host:port")
    parser.add_argument("--listen", default="127.0.0.1:0", type=_parse_address, help="host:port")
    parser.add_argument("--kafka", action="store_true", help="rewrite Kafka broker addresses")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, args.listen, kafka=args.kafka)
    with proxy.running():
        print(f"listening on {proxy.address} -> {args.upstream[0]}:{args.upstream[1]}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            command, rest = words[0], words[1:]
            if command == "quit":
                break
            if command == "pass":
                proxy.passthrough()
            elif command == "drop":
                proxy.drop()
            elif command == "reset":
                proxy.reset_connections()
            elif command == "refuse":
                proxy.refuse()
            elif command == "latency" and rest:
                proxy.set_latency(float(rest[0]))
            elif command == "close-after" and rest:
                proxy.close_after(None if rest[0] == "off" else int(rest[0]))
            elif command != "stats":
                print(f"unknown command {line.strip()!r}", flush=True)
                continue
            print(proxy.stats, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
