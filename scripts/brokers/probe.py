#!/usr/bin/env python3
"""Protocol-level liveness probes for the test brokers (stdlib only).

Used by scripts/brokers.sh; can also be run by hand:

    python3 scripts/brokers/probe.py amqp  [host] [port]   # full AMQP 0-9-1 login as guest/guest
    python3 scripts/brokers/probe.py redis [host] [port]   # PING -> +PONG
    python3 scripts/brokers/probe.py kafka [host] [port]   # Metadata v4 request, needs >= 1 broker
    python3 scripts/brokers/probe.py tcp   host port       # plain TCP connect

Exit status 0 when the service answered correctly, 1 otherwise (reason on stderr).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys

TIMEOUT = 3.0


class ProbeError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by peer")
        buf += chunk
    return buf


def _connect(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as exc:
        raise ProbeError(f"cannot connect to {host}:{port}: {exc}") from exc


# --------------------------------------------------------------------------- AMQP 0-9-1


def _shortstr(s: bytes) -> bytes:
    return struct.pack("!B", len(s)) + s


def _longstr(s: bytes) -> bytes:
    return struct.pack("!I", len(s)) + s


def _amqp_send_method(sock: socket.socket, class_id: int, method_id: int, args: bytes) -> None:
    payload = struct.pack("!HH", class_id, method_id) + args
    sock.sendall(struct.pack("!BHI", 1, 0, len(payload)) + payload + b"\xce")


def _amqp_read_method(sock: socket.socket) -> tuple[int, int, bytes]:
    while True:
        ftype, _channel, size = struct.unpack("!BHI", _recv_exact(sock, 7))
        payload = _recv_exact(sock, size)
        if _recv_exact(sock, 1) != b"\xce":
            raise ProbeError("bad AMQP frame end")
        if ftype == 8:  # heartbeat
            continue
        if ftype != 1:
            raise ProbeError(f"unexpected AMQP frame type {ftype}")
        class_id, method_id = struct.unpack("!HH", payload[:4])
        return class_id, method_id, payload[4:]


def probe_amqp(host: str, port: int, user: str = "guest", password: str = "guest") -> None:
    sock = _connect(host, port)
    try:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        cid, mid, _ = _amqp_read_method(sock)
        if (cid, mid) != (10, 10):
            raise ProbeError(f"expected connection.start, got {cid}.{mid}")
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        _amqp_send_method(
            sock,
            10,
            11,
            struct.pack("!I", 0) + _shortstr(b"PLAIN") + _longstr(response) + _shortstr(b"en_US"),
        )
        try:
            cid, mid, args = _amqp_read_method(sock)
        except ProbeError as exc:
            raise ProbeError(f"login as {user} refused ({exc})") from exc
        if (cid, mid) == (10, 50):
            reason = args[3 : 3 + args[2]].decode(errors="replace")
            raise ProbeError(f"server closed connection: {reason}")
        if (cid, mid) != (10, 30):
            raise ProbeError(f"expected connection.tune, got {cid}.{mid}")
        channel_max, frame_max, _hb = struct.unpack("!HIH", args[:8])
        _amqp_send_method(sock, 10, 31, struct.pack("!HIH", channel_max, frame_max, 0))
        _amqp_send_method(sock, 10, 40, _shortstr(b"/") + _shortstr(b"") + b"\x00")
        cid, mid, args = _amqp_read_method(sock)
        if (cid, mid) == (10, 50):
            reason = args[3 : 3 + args[2]].decode(errors="replace")
            raise ProbeError(f"vhost / refused: {reason}")
        if (cid, mid) != (10, 41):
            raise ProbeError(f"expected connection.open-ok, got {cid}.{mid}")
        close = struct.pack("!H", 200) + _shortstr(b"probe") + struct.pack("!HH", 0, 0)
        _amqp_send_method(sock, 10, 50, close)
        with contextlib.suppress(ProbeError):
            _amqp_read_method(sock)  # close-ok
    finally:
        sock.close()


# --------------------------------------------------------------------------- Redis


def probe_redis(host: str, port: int) -> None:
    sock = _connect(host, port)
    try:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"+PONG"):
            raise ProbeError(f"unexpected PING reply {data!r}")
    finally:
        sock.close()


# --------------------------------------------------------------------------- Kafka


def probe_kafka(host: str, port: int) -> None:
    """Send a Metadata v4 request (all topics, no auto-create) and require >= 1 live broker."""
    client_id = b"factbus-probe"
    body = struct.pack("!hhih", 3, 4, 4242, len(client_id)) + client_id  # api_key=Metadata, v4
    # topics = null (all), allow_auto_topic_creation = false
    body += struct.pack("!i", -1) + b"\x00"
    sock = _connect(host, port)
    try:
        sock.sendall(struct.pack("!i", len(body)) + body)
        (size,) = struct.unpack("!i", _recv_exact(sock, 4))
        resp = _recv_exact(sock, size)
    finally:
        sock.close()
    corr, _throttle, nbrokers = struct.unpack("!iii", resp[:12])
    if corr != 4242:
        raise ProbeError(f"bad correlation id {corr}")
    if nbrokers < 1:
        raise ProbeError("metadata lists no live broker yet")


def probe_tcp(host: str, port: int) -> None:
    _connect(host, port).close()


PROBES = {
    "amqp": (probe_amqp, 5672),
    "redis": (probe_redis, 6379),
    "kafka": (probe_kafka, 9092),
    "tcp": (probe_tcp, None),
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in PROBES:
        print(__doc__, file=sys.stderr)
        return 2
    fn, default_port = PROBES[argv[1]]
    host = argv[2] if len(argv) > 2 else "127.0.0.1"
    port = int(argv[3]) if len(argv) > 3 else default_port
    if port is None:
        print("port required", file=sys.stderr)
        return 2
    try:
        fn(host, port)
    except (ProbeError, OSError, struct.error) as exc:
        print(f"{argv[1]} probe {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
