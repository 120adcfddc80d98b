"""Paced Kafka latency with the raw client: the broker-and-machine floor of the half-load p99.

The bench's half-load phase publishes message by message at half of the
peak's end-to-end rate (on a quiet machine 34-44k msgs/s for Kafka) and
reports the p99 of publish call -> handled. This study moves the same kind
of messages (bodies of ``--body`` bytes, an 88-character key each, three
headers, as factbus's producer sends them) with confluent-kafka alone, paced
as the bench paces: a producer process of its own makes a call every
millisecond at most (asyncio's timer resolution) with every message due by
then, and a consumer thread in this process takes them
(``consume(1, poll)`` then ``consume(n, 0)``, as the adapter's thread does).
Each body starts with the ``perf_counter()`` of its produce call
(``CLOCK_MONOTONIC``, one clock for both processes), so per message:

- ``ack``: produce call -> its delivery report in the producer (librdkafka's
  queue and linger, the produce request, the broker's append, acks=all);
- ``latency``: produce call -> the consumer thread has it (all of the above
  that precedes the record's visibility, then the fetch).

Variants (``--variant NAME[:key=value,...]``, rounds alternating, a fresh
topic each time) apply librdkafka settings on top of the adapter's
(:class:`factbus_kafka.config.KafkaConfig` from ``--url``); ``producer.x`` /
``consumer.x`` go to one side only. ``keyless=1`` sends each call's messages
to one partition (round robin per call) instead of partitioning by key.

Also reported per run: the CPU seconds of the producer and consumer
processes, the machine's load average and ``/proc/stat`` busy share.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/kafka_latency_floor.py \\
        --rate 40000 --messages 50000 --rounds 3 \\
        --variant default --variant linger5:producer.linger.ms=5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import threading
import time
import uuid
from array import array
from typing import Any

from _common import KAFKA_BROKER, machine_jiffies, pct, process_cpu
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from factbus_kafka.config import KafkaConfig

STAMP = struct.Struct("<dq")


def _requests(stats: str) -> int:
    """Requests a client sent to the brokers (librdkafka statistics: ``tx``)."""
    brokers = json.loads(stats).get("brokers", {})
    return sum(int(b.get("tx", 0)) for name, b in brokers.items() if not name.startswith(":"))


def _split(settings: dict[str, str]) -> tuple[dict[str, str], dict[str, str], bool]:
    producer, consumer, keyless = {}, {}, False
    for key, value in settings.items():
        if key == "keyless":
            keyless = value not in ("0", "")
        elif key.startswith("producer."):
            producer[key[len("producer.") :]] = value
        elif key.startswith("consumer."):
            consumer[key[len("consumer.") :]] = value
        else:
            producer[key] = consumer[key] = value
    return producer, consumer, keyless


def _producer_main(
    url: str,
    topic: str,
    overrides: dict[str, str],
    keyless: bool,
    rate: float,
    messages: int,
    body: int,
    partitions: int,
    start_at: float,
    out: Any,
) -> None:
    config = KafkaConfig.from_url(url)
    settings: dict[str, Any] = config.producer_settings()
    settings.update(overrides)
    stats: list[str] = []
    settings["statistics.interval.ms"] = 100
    settings["stats_cb"] = stats.append
    producer = Producer(settings)
    acks = array("d", bytes(8 * messages))
    failed = [0]

    def report(error: Any, message: Any) -> None:
        if error is not None:
            failed[0] += 1
            return
        stamp, n = STAMP.unpack_from(message.value())
        acks[n] = time.perf_counter() - stamp

    # Warm: metadata and the idempotent producer's id before the clock starts.
    producer.produce(topic, b"warm" * 4, b"warm-up", on_delivery=lambda e, m: None)
    producer.flush(30)
    keys = [uuid.uuid4().hex.encode() * 2 + b"abcdefghijklmnopqrstuv" for _ in range(messages)]
    filler = b"x" * max(0, body - STAMP.size)
    headers = [
        ("x-factbus-producer", b"kafka-latency-floor-pub0"),
        ("x-factbus-published-at", b"1764480000.000000"),
    ]
    period = 1.0 / rate
    delay = start_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    start = time.perf_counter()
    cpu = time.process_time()
    sent = calls = 0
    lag: list[float] = []
    round_robin = 0
    while sent < messages:
        now = time.perf_counter()
        due = min(messages, int((now - start) / period) + 1)
        if due <= sent:
            # asyncio's timers wake at 1 ms resolution (epoll): as the bench's publisher does.
            time.sleep(max(0.001, start + sent * period - now))
            continue
        partition = round_robin % partitions if keyless else -1
        round_robin += 1
        calls += 1
        for n in range(sent, due):
            lag.append(now - start - n * period)
            value = STAMP.pack(now, n) + filler
            while True:
                try:
                    producer.produce(
                        topic,
                        value,
                        None if keyless else keys[n],
                        partition,
                        on_delivery=report,
                        headers=[*headers, ("x-factbus-message-id", keys[n])],
                    )
                    break
                except BufferError:
                    producer.poll(0.005)
        sent = due
        producer.poll(0)
    left = producer.flush(60)
    cpu = time.process_time() - cpu
    end = time.perf_counter()
    time.sleep(0.25)
    producer.poll(0)
    requests_before = _requests(stats[0]) if stats else 0
    lag.sort()
    out.send(
        {
            "acks": acks.tobytes(),
            "failed": failed[0] + left,
            "cpu_s": cpu,
            "calls": calls,
            "seconds": end - start,
            "lag_p99_ms": lag[int(0.99 * (len(lag) - 1))] * 1e3,
            "requests": _requests(stats[-1]) - requests_before if stats else 0,
        }
    )
    out.close()


def one_round(args: argparse.Namespace, name: str, settings: dict[str, str]) -> dict[str, Any]:
    config = KafkaConfig.from_url(args.url)
    producer_overrides, consumer_overrides, keyless = _split(settings)
    topic = f"latency-floor-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config.admin())
    futures = admin.create_topics([NewTopic(topic, config.partitions, 1)])
    futures[topic].result(30)
    consumer_settings = config.consumer_settings(f"{topic}-group")
    consumer_settings["enable.auto.offset.store"] = True
    consumer_settings.update(consumer_overrides)
    consumer_stats: list[str] = []
    consumer_settings["statistics.interval.ms"] = 100
    consumer_settings["stats_cb"] = consumer_stats.append
    consumer = Consumer(consumer_settings)
    assigned: list[int] = []
    consumer.subscribe([topic], on_assign=lambda c, ps: assigned.extend(p.partition for p in ps))
    deadline = time.monotonic() + 30
    held: list[Any] = []
    while len(assigned) < config.partitions and time.monotonic() < deadline:
        held.extend(consumer.consume(10, 0.1))
    received = array("d", bytes(8 * args.messages))
    count = [0]
    stop = threading.Event()
    warm = threading.Event()
    cpu_thread = [0.0]

    def take(batch: list[Any]) -> None:
        t = time.perf_counter()
        for message in batch:
            if message.error() is not None:
                continue
            value = message.value()
            if len(value) < STAMP.size or value[:4] == b"warm":
                warm.set()
                continue
            stamp, n = STAMP.unpack_from(value)
            if not received[n]:
                received[n] = t - stamp
                count[0] += 1

    fetches = [0, 0]

    def consume() -> None:
        cpu = time.thread_time()
        if consumer_stats:
            fetches[0] = _requests(consumer_stats[-1])
        take(held)
        while not stop.is_set() and count[0] < args.messages:
            batch = consumer.consume(1, config.poll_interval)
            if batch:
                batch.extend(consumer.consume(config.fetch_batch - 1, 0))
                take(batch)
        cpu_thread[0] = time.thread_time() - cpu
        consumer.consume(1, 0.25)  # one more statistics round
        if consumer_stats:
            fetches[1] = _requests(consumer_stats[-1])

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    start_at = time.perf_counter() + 2.0
    process = context.Process(
        target=_producer_main,
        args=(
            args.url,
            topic,
            producer_overrides,
            keyless,
            args.rate,
            args.messages,
            args.body,
            config.partitions,
            start_at,
            child,
        ),
    )
    load_before = os.getloadavg()
    process.start()
    child.close()
    busy_before = machine_jiffies()
    broker_before = process_cpu(KAFKA_BROKER)
    report = parent.recv()
    process.join(30)
    thread.join(30)
    stop.set()
    busy_after = machine_jiffies()
    broker_cpu = process_cpu(KAFKA_BROKER) - broker_before
    consumer.close()
    admin.delete_topics([topic])
    total = busy_after[0] - busy_before[0]
    busy = 1 - (busy_after[1] - busy_before[1]) / total if total else 0.0
    acks = array("d")
    acks.frombytes(report["acks"])
    got = [v * 1e3 for v in received if v]
    ack = [v * 1e3 for v in acks if v]
    return {
        "variant": name,
        "settings": settings,
        "rate": args.rate,
        "achieved_per_s": round(args.messages / report["seconds"]),
        "received": len(got),
        "latency_ms": {
            "p50": round(pct(got, 0.5), 2),
            "p99": round(pct(got, 0.99), 2),
            "max": round(max(got), 2) if got else None,
        },
        "ack_ms": {"p50": round(pct(ack, 0.5), 2), "p99": round(pct(ack, 0.99), 2)},
        "producer_cpu_us_per_msg": round(report["cpu_s"] / args.messages * 1e6, 2),
        "broker_cpu_us_per_msg": round(broker_cpu / args.messages * 1e6, 2),
        "consumer_thread_cpu_us_per_msg": round(cpu_thread[0] / args.messages * 1e6, 2),
        "producer_calls": report["calls"],
        "produce_requests_per_1000": round(report["requests"] / args.messages * 1000, 1),
        "consumer_requests_per_1000": round((fetches[1] - fetches[0]) / args.messages * 1000, 1),
        "producer_lag_p99_ms": round(report["lag_p99_ms"], 2),
        "failed": report["failed"],
        "machine_busy": round(busy, 2),
        "load_avg": [round(x, 2) for x in (*load_before, *os.getloadavg())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default="kafka://127.0.0.1:9092")
    parser.add_argument("--rate", type=float, default=40_000)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--body", type=int, default=348)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str]]] = []
    for spec in args.variant or ["default"]:
        name, _, rest = spec.partition(":")
        settings = dict(item.split("=", 1) for item in rest.split(",") if item)
        variants.append((name, settings))
    results = []
    for r in range(args.rounds):
        for name, settings in variants:
            result = one_round(args, name, settings)
            result["round"] = r
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
