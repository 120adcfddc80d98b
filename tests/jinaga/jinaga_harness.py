"""Helpers of the Jinaga round-trip tests: the jinaga-server that scripts/jinaga-server.sh
runs, the jinaga.js client (tests/jinaga/client.js), Kafka topic clean-up and counts."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition

from factbus.testing.brokers import kafka_bootstrap, unavailable, unique

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLIENT_JS = HERE / "client.js"
SERVER_JS = ROOT / "scripts" / "jinaga-server" / "server.js"
DEFAULT_SERVER = "http://127.0.0.1:8091/jinaga"


def jinaga_server_url() -> str:
    """The running jinaga-server (``bash scripts/jinaga-server.sh start``); skips, or
    fails in CI, when it does not answer."""
    url = os.environ.get("FACTBUS_TEST_JINAGA_URL", DEFAULT_SERVER)
    try:
        response = httpx.options(f"{url}/save", timeout=3)
        if "x-jinaga-graph-v1" not in response.headers.get("accept-post", ""):
            raise OSError(f"OPTIONS /save answered {response.status_code} {response.headers}")
    except (OSError, httpx.HTTPError) as error:
        unavailable(f"jinaga-server at {url} does not answer ({error}); run `make jinaga-server`")
    return url


async def node_json(
    script: Path, *args: str, request: dict[str, Any], timeout: float = 60.0
) -> dict[str, Any]:
    """Run ``node SCRIPT ARGS`` with ``request`` as JSON on stdin, within ``timeout``
    seconds; what it prints, parsed as JSON. AssertionError with its stderr if it
    exits with an error."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(request).encode()), timeout)
    if process.returncode != 0:
        raise AssertionError(
            f"{script.name} {' '.join(args)} failed ({process.returncode}): {err.decode()}"
        )
    result: dict[str, Any] = json.loads(out)
    return result


async def jinaga_js(command: str, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run ``node client.js <command> <endpoint>`` (the unmodified jinaga.js 6.11.3)."""
    return await node_json(CLIENT_JS, command, endpoint, request=request)


def key_counts(url: str, topic: str, attempts: int = 20) -> Counter[str]:
    """How many messages of ``topic`` carry each key (the head fact's hash); retries
    while the topic is new (no leader yet, unknown partition)."""
    for _ in range(attempts - 1):
        try:
            return _key_counts(url, topic)
        except KafkaException:
            time.sleep(0.25)
    return _key_counts(url, topic)


def _key_counts(url: str, topic: str) -> Counter[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap(url),
            "group.id": unique("jinaga-count"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        ends = {}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            ends[tp.partition] = high
            tp.offset = low
        consumer.assign(partitions)
        counts: Counter[str] = Counter()
        remaining = {p for p, high in ends.items() if high > 0}
        seen: dict[int, int] = {}
        while remaining:
            message = consumer.poll(5)
            if message is None:
                raise AssertionError(f"could not read {topic} to its end ({seen} of {ends})")
            if message.error():
                continue
            key = message.key()
            counts[key.decode() if key else ""] += 1
            seen[message.partition()] = message.offset() + 1
            if seen[message.partition()] >= ends[message.partition()]:
                remaining.discard(message.partition())
        return counts
    finally:
        consumer.close()


def items(
    root: dict[str, Any], type_: str, role: str, values: Iterator[int]
) -> list[dict[str, Any]]:
    """A client.js fact list: the root, then one successor per value."""
    facts = [root]
    facts += [{"type": type_, "fields": {"n": n}, "predecessors": {role: 0}} for n in values]
    return facts
