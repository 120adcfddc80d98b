"""The catch-up client's own checks: peer URLs, page verification (every hash
recomputed), the ``catch_up`` setting, and what a node does when a peer cannot
be reached. Catch-up against a real peer sidecar is tested in
test_catchup_peer.py."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import uvicorn
from structlog.testing import capture_logs

from factbus import Bus, Fact
from factbus.catchup import CatchUpError, PeerExport, position_key, verify
from factbus.config import Settings
from factbus.envelope import CodecLimits, encode
from factbus.errors import ConfigError


def chain() -> list[Fact]:
    root = Fact("Test.Root", {"n": 0})
    child = Fact("Test.Child", {"n": 1}, {"root": root})
    return [root, child]


def test_verify_returns_the_page_facts_in_order() -> None:
    facts = chain()
    wire = [orjson.loads(f.wire_bytes()) for f in facts]
    assert [f.ref for f in verify(wire, CodecLimits(), "page")] == [f.ref for f in facts]
    assert verify([], CodecLimits(), "page") == []


def test_verify_refuses_a_tampered_fact_naming_it() -> None:
    wire = [orjson.loads(f.wire_bytes()) for f in chain()]
    wire[1]["fields"]["n"] = 2
    with pytest.raises(CatchUpError, match=r"peer page: .*facts\[1\] \(Test.Child\) claims hash"):
        verify(wire, CodecLimits(), "peer page")


def test_verify_applies_the_size_limit_per_fact() -> None:
    big = Fact("Test.Big", {"pad": "x" * 5000})
    wire = [orjson.loads(big.wire_bytes())]
    assert len(verify(wire * 3, CodecLimits(max_bytes=6000), "p")) == 3
    with pytest.raises(CatchUpError, match="exceeds max_envelope_bytes=4000"):
        verify(wire, CodecLimits(max_bytes=4000), "p")


@pytest.mark.parametrize("peer", ["peer:8081", "ftp://peer/", "http://"])
def test_peer_must_be_an_http_url(peer: str) -> None:
    with pytest.raises(CatchUpError, match="not an http:// or https:// URL"):
        PeerExport(peer)


def test_pages_are_asked_with_cursor_and_limit() -> None:
    export = PeerExport("http://peer:8081/", limit=250)
    assert export.url("17") == "http://peer:8081/facts?after=17&limit=250"
    assert position_key("http://peer:8081/") == "catch-up:http://peer:8081"


def test_catch_up_setting_from_toml_list_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load(catch_up=["http://a:8081"]).catch_up == ("http://a:8081",)
    monkeypatch.setenv("FACTBUS_CATCH_UP", "http://a:8081, http://b:8081")
    assert Settings.load().catch_up == ("http://a:8081", "http://b:8081")
    with pytest.raises(ConfigError, match="catch_up must be a list of peer URLs"):
        Settings.load(catch_up=[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_peer_raises_and_changes_nothing() -> None:
    bus = Bus("memory://catchup-unreachable", "memory://", topic="t", node="n", consume=False)
    peer = f"http://127.0.0.1:{closed_port()}"
    try:
        with pytest.raises(CatchUpError, match="peer unreachable"):
            await bus.catch_up(peer)
        assert (await bus.store.counts())["handled"] == 0
        assert await bus.store.position(position_key(peer)) is None
    finally:
        await bus.aclose()


async def test_a_node_whose_peer_is_down_goes_on_live() -> None:
    peer = f"http://127.0.0.1:{closed_port()}"
    seen: list[Fact] = []
    node = Bus("memory://catchup-live", "memory://", topic="t", node="n", catch_up=[peer])
    node.handler("Test.Root")(seen.append)
    node.handler("Test.Child")(seen.append)
    with capture_logs() as logs:
        async with node:
            async with Bus("memory://catchup-live", "memory://", topic="t", consume=False) as pub:
                await pub.publish(chain()[1])
            await node.drain()
    assert [f.ref for f in seen] == [f.ref for f in chain()]
    failed = [e for e in logs if e["event"] == "catch-up failed; going on live"]
    assert len(failed) == 1 and "peer unreachable" in failed[0]["error"]


async def test_catching_up_while_consuming_is_refused() -> None:
    async with Bus("memory://catchup-busy", "memory://", topic="t", node="n") as bus:
        with pytest.raises(RuntimeError, match="before start"):
            await bus.catch_up("http://127.0.0.1:1")


def test_catch_up_command_fails_with_status_1_on_an_unreachable_peer(tmp_path: Path) -> None:
    app = tmp_path / "cliapp.py"
    app.write_text(
        "from factbus import Bus\n"
        f"bus = Bus('memory://cli', 'sqlite:///{tmp_path / 'cli.db'}', topic='t', node='cli')\n"
    )
    peer = f"http://127.0.0.1:{closed_port()}"
    command = [sys.executable, "-m", "factbus", "catch-up", "cliapp:bus", "--from", peer]
    done = subprocess.run(
        [*command, "--app-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"{peer}: failed: GET {peer}/facts?after=0&limit=1000: peer unreachable" in done.stdout


@pytest.mark.parametrize("cursor", ["9" * 20, "9" * 5000])
async def test_a_peer_cursor_past_64_bits_is_refused_and_changes_nothing(
    tmp_path: Path, cursor: str
) -> None:
    # A peer's ``next`` is its export cursor (the archive's 64-bit ``seq``), kept
    # as this node's position for the peer; one past 64 bits (or of thousands of
    # digits, which int() refuses) is no position any store can keep: a
    # CatchUpError naming it, and the page is not settled. The peer is a real
    # HTTP server that answers such a page (a sidecar never does).
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    root = chain()[0]

    async def export(request: Request) -> JSONResponse:
        first = request.query_params.get("after") == "0"
        facts = orjson.loads(encode([root]))["facts"] if first else []
        return JSONResponse({"facts": facts, "next": cursor})

    app = Starlette(routes=[Route("/facts", export)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    peer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    bus = Bus("memory://catchup-cursor", f"sqlite:///{tmp_path}/n.db", topic="t", consume=False)
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn's own flag
            await asyncio.sleep(0.01)
        with pytest.raises(CatchUpError, match=r"next cursor 9{20}.* is past 64 bits"):
            await bus.catch_up(peer)
        assert (await bus.store.counts())["handled"] == 0
        assert await bus.store.position(position_key(peer)) is None
    finally:
        await bus.aclose()
        server.should_exit = True
        await serving
        sock.close()
