"""The operator tools: ``factbus dlq list|show|replay|purge`` on each transport's
dead-letter destination, and ``factbus parked`` on a node's store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
import structlog
from fault_harness import transport_url

from factbus import Bus, Fact
from factbus.cli import main
from factbus.envelope import encode
from factbus.logging import configure_logging
from factbus.testing.brokers import unique
from factbus.transport import Message, open_transport
from factbus.transport.memory import MemoryTransport

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True, scope="module")
def _logging_outside_capsys() -> None:
    """The CLI configures structlog on first use, on the sys.stderr of that moment; a
    capsys stream would be closed after its test. Configure it first, here."""
    if not structlog.is_configured():
        configure_logging("warning")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dlq_commands_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    url, topic = f"memory://{unique('dlq')}", unique("topic")
    good = Fact("Tool.Thing", {"n": 1})
    transport = MemoryTransport(url)

    async def setup() -> None:
        await transport.dead_letter(topic, b"{oops", {"x-a": "1"}, "malformed: not valid JSON")
        await transport.dead_letter(
            topic, encode([good]), {}, "handler project failed 3x on Tool.Thing#x: boom"
        )

    asyncio.run(setup())
    where = ("--transport", url, "--topic", topic)

    code, out, _ = cli(capsys, "dlq", "list", *where, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["code"] for r in rows] == ["malformed", "handler"]
    assert rows[0]["facts"] is None and rows[0]["decode_error"].startswith("malformed")
    assert rows[1]["head"] == {"type": "Tool.Thing", "hash": good.hash}

    code, out, _ = cli(capsys, "dlq", "list", *where)
    assert code == 0 and "malformed: not valid JSON" in out and "Tool.Thing" in out

    code, out, _ = cli(capsys, "dlq", "show", "2", *where)
    assert code == 0 and "boom" in out and good.hash in out and '"n": 1' in out
    code, out, _ = cli(capsys, "dlq", "show", "1", *where)
    assert code == 0 and "does not decode" in out and "{oops" in out
    code, out, _ = cli(capsys, "dlq", "show", "1", *where, "--json")
    assert json.loads(out)["headers"]["x-a"] == "1"
    code, _, err = cli(capsys, "dlq", "show", "3", *where)
    assert code == 1 and "no dead letter #3" in err

    # Replay: only the letter that decodes, unless asked; dead-letter headers dropped.
    subscription = asyncio.run(transport.subscribe(topic, "check"))
    code, out, _ = cli(capsys, "dlq", "replay", *where)
    assert code == 0 and "replayed 1 of 2" in out and "skipped 1" in out
    code, out, _ = cli(capsys, "dlq", "replay", *where, "--reason", "malformed", "--dry-run")
    assert code == 0 and "would replay 0 of 2" in out
    code, out, _ = cli(capsys, "dlq", "replay", *where, "--include-undecodable", "--reason", "mal")
    assert code == 0 and "replayed 1 of 2" in out
    replayed = asyncio.run(subscription.next_batch(10, timeout=0))
    assert [d.body for d in replayed] == [encode([good]), b"{oops"]
    assert not any(k.startswith("x-factbus-dead-letter") for d in replayed for k in d.headers)

    code, _, err = cli(capsys, "dlq", "purge", *where)
    assert code == 2 and "--yes" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "dlq", "purge", *where, "--yes")
    assert code == 0 and "removed 2" in out
    code, out, _ = cli(capsys, "dlq", "list", *where)
    assert code == 0 and "no dead letters" in out


def test_dlq_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(
        capsys,
        "dlq",
        "list",
        "--transport",
        "amqp://guest:secret@127.0.0.1:9/?connect_timeout=1",
        "--topic",
        "t",
        "--timeout",
        "3",
    )
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("factbus dlq: ") and "Traceback" not in err
    assert "secret" not in err


@pytest.mark.parametrize("name", ["amqp", "kafka", "redis"])
async def test_dlq_replay_heals_a_failed_fact(name: str) -> None:
    """A handler fails, its fact is dead-lettered and its successor waits; after the
    fix, ``factbus dlq replay`` brings the fact back and both are handled."""
    url, topic = transport_url(name), unique("replay")
    parent = Fact("Tool.Parent", {"n": 1})
    child = Fact("Tool.Child", {"n": 2}, {"parent": parent})
    broken = True
    handled: list[str] = []
    bus = Bus(url, "memory://", topic=topic, node=unique("node"), retry_attempts=1)

    @bus.handler("Tool.Parent")
    def parent_handler(fact: Fact) -> None:
        if broken:
            raise RuntimeError("downstream is down")
        handled.append(fact.type)

    bus.handler("Tool.Child")(lambda fact: handled.append(fact.type))
    sender = open_transport(url)
    async with bus:
        await sender.connect()
        try:
            await sender.publish(topic, [Message(b"not json", "bad-1")])
            async with Bus(url, "memory://", topic=topic, node="p", consume=False) as publisher:
                await publisher.publish(child)
            await wait_until(lambda: bus.stats.failed == 1 and bus.stats.rejected == 1)
            assert handled == []

            where = ("--transport", url, "--topic", topic, "--json")
            out = await asyncio.to_thread(run_cli, "dlq", "list", *where)
            rows = [json.loads(line) for line in out.splitlines()]
            assert sorted(r["code"] for r in rows) == ["handler", "malformed"]
            broken = False
            await asyncio.to_thread(run_cli, "dlq", "replay", "--transport", url, "--topic", topic)
            await wait_until(lambda: handled == ["Tool.Parent", "Tool.Child"])
            out = await asyncio.to_thread(
                run_cli, "dlq", "purge", "--transport", url, "--topic", topic, "--yes"
            )
            assert "removed 2" in out
            assert await bus.transport.read_dead_letters(topic, 10) == []
        finally:
            await sender.aclose()


def run_cli(*argv: str) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(list(argv))
    assert code == 0, buffer.getvalue()
    return buffer.getvalue()


async def wait_until(condition: object, timeout: float = 30.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_parked_lists_what_waits_and_why(tmp_path: Path) -> None:
    url, store = f"memory://{unique('parked')}", tmp_path / "node.db"
    root = Fact("Tool.Root", {"n": 0})
    middle = Fact("Tool.Middle", {"n": 1}, {"root": root})
    leaf = Fact("Tool.Leaf", {"n": 2}, {"middle": middle, "root": root})
    async with (
        Bus(url, f"sqlite:///{store}", node="r"),
        Bus(url, "memory://", node="p", consume=False) as publisher,
    ):
        await publisher.publish(leaf, middle, ancestors=False)
        await asyncio.sleep(0.3)

    out = await asyncio.to_thread(run_cli, "parked", "--store", f"sqlite:///{store}")
    assert "2 facts waiting for predecessors" in out
    assert "not received" in out and "parked" in out
    assert f"Tool.Root#{root.hash[:12]}" in out  # the root cause
    out = await asyncio.to_thread(run_cli, "parked", "--store", f"sqlite:///{store}", "--json")
    rows = {r["type"]: r for r in map(json.loads, out.splitlines())}
    assert {m["hash"]: m["parked"] for m in rows["Tool.Leaf"]["missing"]} == {
        middle.hash: True,
        root.hash: False,
    }
    assert [m["hash"] for m in rows["Tool.Middle"]["missing"]] == [root.hash]


def test_parked_on_a_missing_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "parked", "--store", f"sqlite:///{tmp_path}/nope.db")
    assert code == 2 and "no store at" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope.db").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, out, _ = cli(capsys, "parked", "--store", f"sqlite:///{empty}")
    assert code == 0 and "0 facts waiting" in out
