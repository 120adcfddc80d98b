"""Peak RSS of a Kafka consumer draining a backlog: the adapter's bounded prefetch
against librdkafka's defaults, in the same run.

A publisher puts ``--facts`` facts (the fault suite's shuffled DAG, no duplicates)
on a fresh topic; then, one after the other, a consumer per variant
(``tests/faults/fault_worker.py consume``: SQLite store, transactional effects)
drains the whole backlog from the earliest offset in a group of its own, while
psutil samples its RSS every 50 ms. Variants:

- ``bounded``: the adapter's settings (``queued.min.messages`` = ``max_buffered``,
  ``queued.max.messages.kbytes`` = ``fetch.max.bytes`` / 1024 = ``prefetch_kbytes``);
- ``librdkafka defaults``: the same URL with ``consumer.queued.min.messages=100000``,
  ``consumer.queued.max.messages.kbytes=65536``, ``consumer.fetch.max.bytes=52428800``
  (what the adapter used before it bounded them).

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_prefetch_rss.py --facts 200000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "faults"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from fault_harness import consumer, effects_count, publisher, transport_url

DEFAULTS = (
    "consumer.queued.min.messages=100000&consumer.queued.max.messages.kbytes=65536"
    "&consumer.fetch.max.bytes=52428800"
)


def peak_rss_while(pid: int, done: threading.Event) -> list[float]:
    peak = [0.0]
    process = psutil.Process(pid)

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def drain(url: str, topic: str, facts: int, work: Path, name: str) -> tuple[float, float]:
    store = work / f"{name}.db"
    worker = consumer(
        url, store, topic, f"rss-{name}-{uuid.uuid4().hex[:6]}", log=work / f"{name}.log"
    )
    done = threading.Event()
    peak = peak_rss_while(worker.proc.pid, done)
    started = time.monotonic()
    while effects_count(store) < facts:
        if worker.proc.poll() is not None:
            raise SystemExit(f"{name}: consumer died, see {work / (name + '.log')}")
        time.sleep(0.5)
    seconds = time.monotonic() - started
    done.set()
    worker.terminate()
    return peak[0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=200_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kafka-rss-"))
    topic = f"rss-{uuid.uuid4().hex[:8]}"
    base = transport_url("kafka")
    pub = publisher(
        base,
        topic,
        count=args.facts,
        seed=7,
        log=work / "published.log",
        duplicates=0.0,
        batch=1000,
        stderr=work / "publisher.log",
    )
    if pub.wait(timeout=1800) != 0:
        raise SystemExit(f"publisher failed: see {work / 'publisher.log'}")
    separator = "&" if "?" in base else "?"
    for name, url in (
        ("bounded", base),
        ("librdkafka defaults", f"{base}{separator}{DEFAULTS}"),
    ):
        peak, seconds = drain(url, topic, args.facts, work, name.replace(" ", "-"))
        print(
            f"{name:22} peak RSS {peak:7.1f} MB   drained {args.facts:,} facts in {seconds:6.1f} s"
        )


if __name__ == "__main__":
    main()
