"""How long librdkafka delivers nothing after a consumer resumes a paused partition.

A topic of one partition gets ``--messages`` records of 347 bytes; one
confluent-kafka consumer (the Kafka adapter's fetch settings: 1 ms
``fetch.queue.backoff.ms``, 100 ms ``fetch.wait.max.ms``) takes ``--take``
records, pauses the partition, polls once (as a consumer thread does while
paused), resumes it and times how long the next ``consume`` waits for a
record; ``--rounds`` times. librdkafka drops what it prefetched when a
partition is paused (its maintainer: "pause() will empty the pre-fetchq") and
fetches it again after the resume; this measures the wait that costs a
consumer whose records are all on the broker already.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/kafka_resume_gap.py --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--take", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    topic = f"study-resume-gap-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    try:
        producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
        body = b"x" * 347
        for i in range(args.messages):
            producer.produce(topic, body, key=str(i))
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(30)
        consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": f"{topic}.group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 1,
                "fetch.wait.max.ms": 100,
            }
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        gaps = []
        for _ in range(args.rounds):
            taken = 0
            while taken < args.take:
                taken += len(consumer.consume(min(1000, args.take - taken), 5.0))
            partitions = consumer.assignment()
            consumer.pause(partitions)
            consumer.consume(1, 0.01)  # a paused consumer keeps polling
            consumer.resume(partitions)
            resumed = time.perf_counter()
            if not consumer.consume(1, 5.0):
                print("no record within 5 s of the resume")
                continue
            gaps.append((time.perf_counter() - resumed) * 1e3)
        consumer.close()
        # The same wait without a pause, for comparison: the next record after
        # taking `take` of them.
        print(
            "resume -> next record (ms): "
            + ", ".join(f"{g:.1f}" for g in gaps)
            + f"; median {sorted(gaps)[len(gaps) // 2]:.1f}"
            if gaps
            else "no gaps measured"
        )
    finally:
        admin.delete_topics([topic])


if __name__ == "__main__":
    main()
