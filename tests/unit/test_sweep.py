"""The suite's clean-up (tests/conftest.py, factbus.testing.names/sweep) on the real
brokers: an inner pytest run with this suite's conftest makes queues, exchanges,
topics, a group, keys, a schema and a database through the real brokers, checks
they are there, and ends; afterwards none is left, an object of the same shape
that the run did not name is still there, and the run's journal is gone. A
clean-up that fails is an error of the inner test's teardown, its own result
kept, and ``python -m factbus.testing.sweep`` removes what was left. A Kafka group
that still has a member is reported busy (retried at the run's end), not failed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from factbus.testing.brokers import broker_url
from factbus.testing.sweep import containing, prefixed, present, sweep_now

pytestmark = [
    pytest.mark.broker("amqp"),
    pytest.mark.broker("kafka"),
    pytest.mark.broker("redis"),
    pytest.mark.broker("postgres"),
]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

INNER = """
import json, os
import asyncpg
from factbus.testing.brokers import broker_url, unique
from factbus.testing.sweep import containing, present
from factbus.transport import Message, open_transport

OUT = os.environ["SWEEP_TEST_OUT"]

def made(kind, name):
    with open(OUT, "a") as out:
        out.write(json.dumps([kind, name]) + "\\n")

def there(kind, url, name):
    return present({kind: {url}}, containing([name]))

async def through_transport(kind):
    url = broker_url(kind)
    topic, group = unique(f"sweep-{kind}"), unique("g")
    transport = open_transport(url)
    await transport.connect()
    try:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, [Message(b"x", "m-1", None, {})])
        if kind == "kafka":  # a committed offset: the group exists on the broker
            batch = await subscription.next_batch(1, timeout=30)
            for delivery in batch:
                await delivery.ack()
        await subscription.aclose()
    finally:
        await transport.aclose()
    made(kind, topic)
    made(kind, group)
    return url, topic, group

async def test_amqp():
    url, topic, group = await through_transport("amqp")
    assert f"{topic}.{group}" in there("amqp", url, topic)
    assert topic in there("amqp", url, topic)

async def test_kafka():
    url, topic, group = await through_transport("kafka")
    assert topic in there("kafka", url, topic)
    assert group in there("kafka", url, group)

async def test_redis():
    url, topic, group = await through_transport("redis")
    assert any(key.endswith(topic) for key in there("redis", url, topic))

async def test_postgres():
    url = broker_url("postgres")
    schema, database = unique("sweep", "_"), unique("sweep_db", "_")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(f'CREATE TABLE "{schema}".t (x int)')
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
    made("postgres", schema)
    made("postgres", database)
    assert there("postgres", url, schema) == [schema]
    assert there("postgres", url, database) == [database]
"""

INNER_FAILING = """
import json, os
from factbus.testing.brokers import broker_url, unique
from factbus.transport import open_transport

async def test_makes_a_queue_then_passes():
    url = broker_url("amqp")
    topic = unique("sweep-fail")
    transport = open_transport(url)
    await transport.connect()
    try:
        await (await transport.subscribe(topic, "g")).aclose()
    finally:
        await transport.aclose()
    with open(os.environ["SWEEP_TEST_OUT"], "a") as out:
        out.write(json.dumps(["amqp", topic]) + "\\n")
"""


def _inner_run(
    tmp_path: Path, source: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]], Path]:
    """Run ``source`` as a test file under this suite's conftest in a pytest of its own;
    (the run, the (broker, name) pairs it made, its journal directory)."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(CONFTEST.read_text())
    (inner / "pytest.ini").write_text(INI)
    (inner / "test_inner.py").write_text(source)
    journals, out = tmp_path / "journals", tmp_path / "made.jsonl"
    environ = {k: v for k, v in os.environ.items() if k != "FACTBUS_TEST_NAMES"}
    environ |= {"FACTBUS_TEST_NAMES_DIR": str(journals), "SWEEP_TEST_OUT": str(out), **env}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=inner,
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
    )
    pairs = (
        [tuple(json.loads(line)) for line in out.read_text().splitlines()] if out.exists() else []
    )
    return run, [(kind, name) for kind, name in pairs], journals


def _decoy_queue(url: str, name: str) -> None:
    """A queue the inner run did not name (same prefix, another random part)."""
    import aio_pika

    async def declare() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True)

    asyncio.run(declare())


def test_a_run_leaves_nothing_it_made_and_keeps_what_it_did_not(tmp_path: Path) -> None:
    urls = {kind: broker_url(kind) for kind in ("amqp", "kafka", "redis", "postgres")}
    decoy = f"sweep-amqp-{uuid.uuid4().hex[:10]}"  # not through unique(): not the run's
    _decoy_queue(urls["amqp"], decoy)
    try:
        run, made, journals = _inner_run(tmp_path, INNER)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "4 passed" in run.stdout and "error" not in run.stdout, run.stdout
        assert {kind for kind, _ in made} == {"amqp", "kafka", "redis", "postgres"}
        for kind, name in made:
            assert present({kind: {urls[kind]}}, containing([name])) == [], (kind, name)
        assert present({"amqp": {urls["amqp"]}}, containing([decoy])) == [decoy]
        assert list(journals.iterdir()) == []  # a clean run removes its journal
    finally:
        sweep_now({"amqp": {urls["amqp"]}}, containing([decoy])).check(busy_is_failure=True)


def test_a_failed_clean_up_is_reported_the_result_kept_and_brokers_clean_finishes_it(
    tmp_path: Path,
) -> None:
    url = broker_url("amqp")
    run, made, journals = _inner_run(
        tmp_path, INNER_FAILING, FACTBUS_TEST_RABBITMQ_API="http://127.0.0.1:9"
    )
    [(_, topic)] = made
    try:
        assert run.returncode != 0
        assert "1 passed" in run.stdout and "1 error" in run.stdout, run.stdout
        assert "management API at http://127.0.0.1:9" in run.stdout, run.stdout
        assert f"{topic}.g" in present({"amqp": {url}}, containing([topic]))
        [journal] = list(journals.iterdir())  # kept for make brokers-clean
        clean = subprocess.run(
            [sys.executable, "-m", "factbus.testing.sweep", "--broker", "amqp"],
            env={**os.environ, "FACTBUS_TEST_NAMES_DIR": str(journals)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert f"rabbitmq queue '{topic}.g'" in clean.stdout
        assert present({"amqp": {url}}, containing([topic])) == []
        assert not journal.exists()
    finally:
        sweep_now({"amqp": {url}}, containing([topic]))


def test_prefixed_picks_a_prefix_at_the_start_of_a_name_or_of_a_dotted_part() -> None:
    select = prefixed(["proxy-"])
    assert select("proxy-1a2b.dead-letter")
    assert select("_kombu.binding.proxy-1a2b")
    assert select("node-9f:_kombu.binding.proxy-1a2b")
    assert not select("myproxy-1a2b")
    assert not select("other.queue")
    assert not prefixed([])("proxy-1")


def test_containing_ignores_case_and_empty_names() -> None:
    select = containing(["Fb_ab12", ""])
    assert select("schema_fb_AB12_x")
    assert not select("unrelated")


async def test_a_kafka_group_with_a_member_is_busy_not_failed_and_goes_once_it_left() -> None:
    from factbus.testing.brokers import unique
    from factbus.transport import Message, open_transport

    url = broker_url("kafka")
    topic, group = unique("sweep-busy"), unique("sweep-busy-g")
    transport = open_transport(url)
    await transport.connect()
    try:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, [Message(b"x", "m-1", None, {})])
        assert len(await subscription.next_batch(1, timeout=60)) == 1  # a member now
        busy = await asyncio.to_thread(sweep_now, {"kafka": {url}}, containing([group]))
        assert busy.failed == [] and busy.removed == []
        assert busy.busy == [f"kafka group {group!r}: still has members"]
    finally:
        await transport.aclose()
    gone = await asyncio.to_thread(sweep_now, {"kafka": {url}}, containing([group, topic]))
    assert gone.failed == [] and gone.busy == []
    assert f"kafka group {group!r}" in gone.removed
    assert await asyncio.to_thread(present, {"kafka": {url}}, containing([group, topic])) == []


def test_the_sweep_deletes_kafka_objects_through_the_adapters_removal() -> None:
    """One deletion for product and tests: the sweep finds the Kafka adapter's
    ``removal.delete`` through the ``factbus.removals`` entry point (installed,
    and its built-in fallback alike), not a copy of its own."""
    from importlib.metadata import entry_points

    from factbus import plugins
    from factbus.testing import sweep
    from factbus_kafka import removal

    installed = {ep.name: ep.value for ep in entry_points(group=sweep.REMOVALS)}
    assert installed == {"kafka": "factbus_kafka.removal:delete"}
    assert sweep._BUILTIN_REMOVALS["kafka"][0] == installed["kafka"]
    found = plugins.load(sweep.REMOVALS, "kafka", sweep._BUILTIN_REMOVALS, what="removal")
    assert found is removal.delete
    # The fallback itself, as from a source tree whose entry points are not
    # installed: a group nobody registered in, the same built-in table.
    not_installed = f"{sweep.REMOVALS}.not-installed"
    assert list(entry_points(group=not_installed)) == []
    fallback = plugins.load(not_installed, "kafka", sweep._BUILTIN_REMOVALS, what="removal")
    assert fallback is removal.delete
    assert "delete_topics" not in Path(sweep.__file__).read_text()


async def test_a_redis_key_that_is_not_utf8_does_not_stop_the_sweep() -> None:
    """Redis keys are bytes: another user's key that is not UTF-8 on the shared
    Redis must not fail every sweep of it; such a key of the test's own goes too."""
    import redis.asyncio as aioredis

    from factbus.testing.brokers import unique
    from factbus.testing.sweep import _redis_url

    url = broker_url("redis")
    ours, theirs = unique("sweep-bytes"), unique("sweep-bytes-theirs")
    client = aioredis.from_url(_redis_url(url))
    async with client:
        await client.set(ours.encode() + b":\xff", b"1")
        await client.set(b"\xfe" + theirs.encode(), b"1")  # not selected below
        try:
            swept = await asyncio.to_thread(sweep_now, {"redis": {url}}, containing([ours]))
            assert swept.failed == [], swept.failed
            shown = ours + ":\N{REPLACEMENT CHARACTER}"
            assert swept.removed == [f"redis key {shown!r}"]
            assert await client.exists(ours.encode() + b":\xff") == 0
            assert await client.exists(b"\xfe" + theirs.encode()) == 1
        finally:
            await client.delete(ours.encode() + b":\xff", b"\xfe" + theirs.encode())
