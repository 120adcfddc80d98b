"""What ``factbus bench`` leaves on the brokers, per transport, found by the run's own name.

Runs ``factbus bench`` (the real command, in a process of its own) on each transport
with a small workload, each run named ``bench-<8 hex>`` by a UUID chosen here (the
runner's ``uuid.uuid4`` is replaced in that process, so this works on commits
from before ``BenchConfig.name``), then lists through the brokers every topic,
consumer group, queue, exchange and Redis key whose name contains the run's
name (:func:`factbus.testing.sweep.present`): objects of concurrent runs never
count. ``--interrupt S`` sends SIGINT to the run's process group after ``S``
seconds, as Ctrl-C in a terminal does (with 20,000 facts, so the run is still
going). Prints one block per run and a JSON summary (objects left per run).

    eval "$(bash scripts/brokers.sh env)"
    .venv/bin/python benchmarks/studies/bench_leftovers.py
    .venv/bin/python benchmarks/studies/bench_leftovers.py --interrupt 3 --variant baseline

What it leaves is not removed: ``python -m factbus.testing.sweep --prefix bench-``
removes every bench run's leftovers (only when no bench runs meanwhile).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

from factbus.testing.sweep import configured_brokers, containing, present

RUN = """
import sys, uuid
from factbus.bench import runner
fixed = uuid.UUID(sys.argv[1])
class _Fixed:
    @staticmethod
    def uuid4():
        return fixed
runner.uuid = _Fixed
from factbus.cli import main
sys.argv = ["factbus", "bench", *sys.argv[2:]]
raise SystemExit(main())
"""

TRANSPORTS = {
    "kafka": ("kafka", "FACTBUS_TEST_KAFKA_URL"),
    "amqp": ("amqp", "FACTBUS_TEST_AMQP_URL"),
    "kombu+redis": ("redis", "FACTBUS_TEST_REDIS_URL"),
    "kombu+amqp": ("kombu_amqp", "FACTBUS_TEST_KOMBU_AMQP_URL"),
}
VARIANTS = {
    "baseline": ["--no-half-load"],
    "no-baseline": ["--no-half-load", "--no-baseline"],
    "half-load": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", action="append", choices=sorted(TRANSPORTS))
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--facts", type=int, default=0, help="default 2000 (20000 interrupted)")
    parser.add_argument("--interrupt", type=float, default=0.0, metavar="S")
    args = parser.parse_args()
    brokers = configured_brokers({kind for kind, _ in TRANSPORTS.values()})
    facts = args.facts or (20_000 if args.interrupt else 2_000)
    env = {k: v for k, v in os.environ.items() if k != "FACTBUS_TEST_NAMES"}
    summary: dict[str, int] = {}
    for label in args.transport or list(TRANSPORTS):
        kind, _ = TRANSPORTS[label]
        url = next(iter(brokers[kind]))
        for variant in args.variant or list(VARIANTS):
            run = uuid.uuid4()
            name = f"bench-{run.hex[:8]}"
            command = [sys.executable, "-c", RUN, str(run), "--transport", url]
            command += ["--facts", str(facts), "--warmup", "500", "--timeout", "120"]
            command += VARIANTS[variant]
            start = time.monotonic()
            with subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            ) as process:
                if args.interrupt:
                    time.sleep(args.interrupt)
                    os.killpg(process.pid, signal.SIGINT)
                _, err = process.communicate(timeout=300)
            took = time.monotonic() - start
            time.sleep(2)  # Kafka deletes topics asynchronously
            left = present({kind: {url}}, containing([name]))
            summary[f"{label}/{variant}"] = len(left)
            print(
                f"== {label} {variant}: {name} exit {process.returncode}, {took:.1f} s, "
                f"{len(left)} left",
                flush=True,
            )
            for line in left:
                print(f"    {line}")
            for line in err.splitlines():
                if "removed" in line or "interrupted" in line:
                    print(f"    stderr: {line.strip()}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
