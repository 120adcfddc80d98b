"""What the fault tests share: sizes, broker URLs, worker subprocesses, the checker.

Sizes scale with ``FACTBUS_FAULT_SCALE`` (default 1; e.g. 0.1 for a quick local
run); each size has a floor so that a small scale never shrinks a test to
nothing. ``FACTBUS_FAULT_REPORT=path.jsonl`` makes every test append what it
measured (kills, restarts, lost, duplicated, ...) to that file; docs/faults.md
is written from it.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_worker import scenario

from conftest import broker_url
from factbus.fact import Fact, FactRef
from factbus.testing.brokers import unique, with_options

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "fault_worker.py"
BROKERS_SH = ROOT / "scripts" / "brokers.sh"

SCALE = float(os.environ.get("FACTBUS_FAULT_SCALE", "1"))


def scaled(full: int, floor: int) -> int:
    """``full`` times the scale, never below ``floor``."""
    return max(floor, int(full * SCALE))


WORK_ROOT = Path(tempfile.gettempdir()) / "factbus-faults"
KEEP_DIRS = 12


def work_dir(name: str) -> Path:
    """A fresh directory for one test's stores and logs, under /tmp/factbus-faults.

    Not pytest's ``tmp_path``: on a machine where several pytest sessions run at
    once, each prunes the others' old base directories, which may pull the
    SQLite file from under a consumer that runs for minutes. The newest
    ``KEEP_DIRS`` directories are kept for post-mortems; older ones are removed.
    """
    WORK_ROOT.mkdir(exist_ok=True)
    old = sorted(WORK_ROOT.iterdir(), key=lambda p: p.stat().st_mtime)[: -KEEP_DIRS + 1]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    path = WORK_ROOT / f"{time.strftime('%H%M%S')}-{unique(name)}"
    path.mkdir()
    return path


# Options that make each adapter notice a dead peer within seconds. Each is
# documented in docs/adapters/<name>.md.
FAST_DETECTION = {
    "amqp": "heartbeat=2&connect_timeout=5&reconnect_delay=0.5",
    "kafka": (
        "session_timeout=6&heartbeat_interval=1&reconnect_backoff_max=0.5"
        "&rdkafka.socket.timeout.ms=5000&publish_timeout=60"
    ),
    "redis": "",
    "kombu_amqp": "heartbeat=2",
}

BROKER_OF = {"amqp": "rabbitmq", "kafka": "kafka", "redis": "redis", "kombu_amqp": "rabbitmq"}


def transport_url(name: str, extra: str = "") -> str:
    """The test broker's URL for ``name`` with fast failure detection (fails in CI,
    skips elsewhere, when the broker does not answer)."""
    if name == "memory":
        return f"memory://{unique('faults')}"
    return with_options(with_options(broker_url(name), FAST_DETECTION.get(name, "")), extra)


def brokers(command: str, broker: str) -> float:
    """Run ``scripts/brokers.sh <command> <broker>``; return the seconds it took."""
    started = time.monotonic()
    subprocess.run(["bash", str(BROKERS_SH), command, broker], check=True, timeout=300)
    return time.monotonic() - started


# -- worker subprocesses ------------------------------------------------------


class Worker:
    """A ``fault_worker.py`` subprocess whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, log: Path | None = None) -> None:
        self.args = args
        self.lines: queue.Queue[str] = queue.Queue()
        self.last_stats: dict[str, Any] = {}
        self.ready = threading.Event()
        stderr = log.open("ab") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if log is not None:
            stderr.close()  # type: ignore[union-attr]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                line = line.strip()
                if line.startswith("ready"):
                    self.ready.set()
                elif line.startswith("stats "):
                    self.last_stats = json.loads(line[6:])
                self.lines.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.05):
                return True
            if not self.alive():
                return False
        raise AssertionError(f"worker {self.args[:1]} not ready after {timeout}s")

    def kill9(self) -> bool:
        """``kill -9``; True if this killed it (it was still running)."""
        if not self.alive():
            return False
        self.proc.kill()
        self.wait(timeout=30)
        return self.proc.returncode == -9

    def terminate(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.terminate()
        try:
            return self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(timeout=30)
            raise AssertionError(f"worker {self.args[:1]} did not stop on SIGTERM") from None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def consumer(
    url: str,
    store: Path,
    topic: str,
    node: str,
    *,
    die_at: str | None = None,
    types: Sequence[str] = (),
    log: Path,
) -> Worker:
    args = ["consume", "--transport", url, "--store", str(store), "--topic", topic]
    args += ["--node", node]
    if die_at:
        args += ["--die-at", die_at]
    if types:
        args += ["--types", ",".join(types)]
    return Worker(*args, log=log)


def publisher(
    url: str,
    topic: str,
    *,
    count: int,
    seed: int,
    log: Path,
    pace: float = 0.0,
    duplicates: float = 0.3,
    batch: int = 100,
    stderr: Path,
) -> Worker:
    args = ["publish", "--transport", url, "--topic", topic, "--count", str(count)]
    args += ["--seed", str(seed), "--log", str(log), "--pace", str(pace)]
    args += ["--duplicates", str(duplicates), "--batch", str(batch)]
    return Worker(*args, log=stderr)


# -- the checker --------------------------------------------------------------


@dataclass
class Verdict:
    """What one node's effects say about the facts it should have handled."""

    facts: int
    handled_once: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int

    @property
    def perfect(self) -> bool:
        return (self.lost, self.duplicated, self.out_of_order, self.unexpected) == (0, 0, 0, 0)


def _readonly(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)


def effects_count(db_path: Path) -> int:
    """Distinct facts with an effect row (0 before the table exists)."""
    if not db_path.exists():
        return 0
    db = _readonly(db_path)
    try:
        return int(db.execute("SELECT COUNT(DISTINCT hash || type) FROM effects").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def classify(db_path: Path, expected: Iterable[Fact]) -> Verdict:
    """Handled once, lost, duplicated, out of causal order, for every expected fact."""
    return classify_refs(db_path, {f.ref for f in expected})


def classify_refs(db_path: Path, refs: set[FactRef]) -> Verdict:
    """:func:`classify` for identities."""
    db = _readonly(db_path)
    try:
        counts = Counter(
            FactRef(t, h) for h, t in db.execute("SELECT hash, type FROM effects ORDER BY seq")
        )
        violations = db.execute("SELECT COUNT(*) FROM violations").fetchone()[0]
    finally:
        db.close()
    return Verdict(
        facts=len(refs),
        handled_once=sum(1 for r in refs if counts[r] == 1),
        lost=sum(1 for r in refs if counts[r] == 0),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        out_of_order=int(violations),
        unexpected=sum(1 for r in counts if r not in refs),
    )


def wait_for_effects(
    db_path: Path,
    expected: int,
    *,
    timeout: float,
    alive: Sequence[Worker] = (),
    stall: float = 60.0,
) -> int:
    """Poll until ``expected`` distinct effects exist; return how many there are.
    Gives up early when the count has not moved for ``stall`` seconds."""
    deadline = time.monotonic() + timeout
    count, moved = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = effects_count(db_path)
        if now != count:
            count, moved = now, time.monotonic()
        if count >= expected or time.monotonic() - moved > stall:
            return count
        for worker in alive:
            if not worker.alive():
                raise AssertionError(f"worker {worker.args[:1]} died (rc {worker.proc.returncode})")
        time.sleep(0.2)
    return count


def logged_refs(log: Path) -> list[FactRef]:
    """Refs a publisher logged after their publish returned."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("ref "):
            _, fact_type, fact_hash = line.split(" ", 2)
            out.append(FactRef(fact_type, fact_hash))
    return out


# -- one run -------------------------------------------------------------------


@dataclass
class Run:
    """One fault test's stream and where it leaves things: a fresh work directory,
    a random source seeded from the clock, the scenario DAG and its hostile
    publishing order for a seed drawn from it, fresh topic and node names, and the
    consumer's SQLite store and log in the work directory."""

    dir: Path
    rng: random.Random
    seed: int
    dag: list[Fact]
    order: list[Fact]
    topic: str
    node: str
    store: Path
    log: Path
    """The consumers' stderr (appended to by each one started)."""
    started: float

    def consumer(self, url: str, *, die_at: str | None = None) -> Worker:
        """A ``fault_worker.py consume`` on this run's store, topic and node."""
        return consumer(url, self.store, self.topic, self.node, die_at=die_at, log=self.log)

    def publisher(
        self,
        url: str,
        *,
        pace: float = 0.0,
        log: str = "published.log",
        stderr: str = "publisher.log",
        batch: int = 100,
    ) -> Worker:
        """A ``fault_worker.py publish`` of the whole order (same seed), logging what
        it published to ``log`` and its stderr to ``stderr`` in the work directory."""
        return publisher(
            url,
            self.topic,
            count=len(self.dag),
            seed=self.seed,
            log=self.dir / log,
            pace=pace,
            batch=batch,
            stderr=self.dir / stderr,
        )

    def settle(self, reader: Worker, *, pause: float = 2.0) -> tuple[int, Verdict]:
        """Wait (up to 300 s, or until progress stalls) until every fact of the DAG
        has its effect while ``reader`` lives, then ``pause`` seconds more so that a
        late duplicate would show; the consumer must still live then. Stop it and
        judge its store; return the distinct effects seen and the verdict."""
        seen = wait_for_effects(self.store, len(self.dag), timeout=300, alive=[reader])
        time.sleep(pause)
        require(reader.alive(), f"the consumer died: {tail(self.log)}")
        reader.terminate()
        return seen, classify(self.store, self.dag)

    def seconds(self) -> float:
        """Seconds since the run started, rounded for the report."""
        return round(time.monotonic() - self.started, 1)

    def report(self, test: str, verdict: Verdict, **measured: Any) -> None:
        """:func:`report` for this run: its facts, messages and seconds so far, the
        verdict and what else the test ``measured``."""
        report(
            test,
            facts=len(self.dag),
            messages=len(self.order),
            verdict=verdict,
            seconds=self.seconds(),
            **measured,
        )


def start_run(prefix: str, name: str, facts: int) -> Run:
    """A :class:`Run` of ``facts`` facts (30 % of them sent twice) for the variant
    ``name``, in a work directory and on a topic named after ``prefix``."""
    path = work_dir(f"{prefix}-{name}")
    rng = random.Random(f"{prefix}-{name}-{time.time()}")
    seed = rng.randint(1, 10_000)
    dag, order = scenario(facts, seed, 0.3)
    return Run(
        dir=path,
        rng=rng,
        seed=seed,
        dag=dag,
        order=order,
        topic=unique(prefix),
        node=unique("node"),
        store=path / "node.db",
        log=path / "consumer.log",
        started=time.monotonic(),
    )


# -- results ------------------------------------------------------------------


def report(test: str, **measured: Any) -> None:
    """Append a result line to ``$FACTBUS_FAULT_REPORT`` (if set) and print it."""
    record = {"test": test, "scale": SCALE, **measured}
    for key, value in list(record.items()):
        if isinstance(value, Verdict):
            record[key] = asdict(value)
    line = json.dumps(record, sort_keys=True)
    print(line)
    path = os.environ.get("FACTBUS_FAULT_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a worker's log, for a failure message."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def require(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(message)
