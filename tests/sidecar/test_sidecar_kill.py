"""kill -9 a sidecar while it projects: the tables end exactly as the fact set says.

A sidecar node (``sidecar_worker.py project``: Bus + Views on SQLite, over
RabbitMQ) is killed with SIGKILL at least ``KILLS`` times while a publisher
sends ``FACTS``-odd shop facts (shuffled, a quarter duplicated, no ancestors:
many wait parked): at random instants, or by itself inside the transaction
right after the view writes, or right after a commit before the acks. After the
last restart it drains, and every table must equal the direct computation from
the fact set, the archive must hold each fact once, and the store must mark
each handled.

Sizes: ``FACTBUS_SIDECAR_KILL_SEEDS`` (default 480 shop seeds, about 10,500
facts) and ``FACTBUS_SIDECAR_KILL_KILLS`` (default 10).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sidecar_worker import kill_fact_set
from views_support import TABLES, expected_rows

from factbus.testing.brokers import broker_url, unique, with_options

pytestmark = [pytest.mark.faults, pytest.mark.broker("amqp"), pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
WORKER = HERE / "sidecar_worker.py"
SEEDS = int(os.environ.get("FACTBUS_SIDECAR_KILL_SEEDS", "480"))
KILLS = int(os.environ.get("FACTBUS_SIDECAR_KILL_KILLS", "10"))


class Proc:
    """A worker subprocess; stdout goes to a file of its own (polled for ``ready``)."""

    def __init__(self, *args: str, log: Path) -> None:
        self.out = log.with_name(f"{log.stem}-{uuid.uuid4().hex[:6]}.out")
        with log.open("ab") as err, self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def ready(self, timeout: float = 60) -> bool:
        """Wait for ``ready``; False if the process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready" in self.out.read_text():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise AssertionError("worker not ready in time")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def table_rows(path: Path, table: str, columns: list[str]) -> list[dict[str, Any]]:
    import orjson

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY hash').fetchall()
    finally:
        db.close()
    return [
        {
            c: orjson.loads(v) if c.endswith("_candidates") else v
            for c, v in zip(columns, row, strict=True)
        }
        for row in rows
    ]


def counts(path: Path) -> tuple[int, int, int]:
    if not path.exists():
        return 0, 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        archived = db.execute("SELECT COUNT(*) FROM factbus_sidecar_facts").fetchone()[0]
        distinct = db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT hash, type FROM factbus_sidecar_facts)"
        ).fetchone()[0]
        handled = db.execute("SELECT COUNT(*) FROM factbus_facts WHERE state = 1").fetchone()[0]
    except sqlite3.OperationalError:
        return 0, 0, 0
    finally:
        db.close()
    return int(archived), int(distinct), int(handled)


def test_kill9_sidecar_ends_with_the_exact_rows(tmp_path: Path) -> None:
    url = with_options(broker_url("amqp"), "heartbeat=2&connect_timeout=5&reconnect_delay=0.5")
    facts = kill_fact_set(SEEDS)
    assert len(facts) >= 10_000 or "FACTBUS_SIDECAR_KILL_SEEDS" in os.environ
    expected = expected_rows(facts)
    topic, node = unique("sidecar-kill"), unique("sc")
    store = tmp_path / "sidecar.db"
    log = tmp_path / "sidecar.log"
    rng = random.Random(f"{topic}")
    project = ["project", "--transport", url, "--store", str(store), "--topic", topic]
    project += ["--node", node]

    current = Proc(*project, log=log)
    assert current.ready(), log.read_text()[-3000:]
    publisher = Proc(
        "publish",
        "--transport",
        url,
        "--topic",
        topic,
        "--seeds",
        str(SEEDS),
        "--pace",
        str(KILLS * 2.0),
        log=tmp_path / "publisher.log",
    )
    kills = self_kills = 0
    while kills < KILLS:
        if rng.random() < 0.3:
            current.kill9()
            kills += 1
            point = rng.choice(["flush", "commit"])
            current = Proc(*project, "--die-at", f"{point}:{rng.randint(1, 15)}", log=log)
            current.ready()
            with contextlib.suppress(subprocess.TimeoutExpired):
                current.proc.wait(timeout=20)  # else not reached (idle): killed from outside
            if current.proc.returncode == -9:
                self_kills += 1
                current = Proc(*project, log=log)
            continue
        time.sleep(rng.uniform(0.3, 1.8))
        assert current.proc.poll() is None, log.read_text()[-3000:]
        current.kill9()
        kills += 1
        current = Proc(*project, log=log)
        if rng.random() < 0.5:
            current.ready()

    published = publisher.proc.wait(timeout=600)
    assert published == 0, (tmp_path / "publisher.log").read_text()[-3000:]
    assert current.ready(), log.read_text()[-3000:]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and counts(store)[1] < len(facts):
        assert current.proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2.0)  # redeliveries of the last kill would show now
    current.proc.terminate()
    assert current.proc.wait(60) == 0, log.read_text()[-3000:]

    archived, distinct, handled = counts(store)
    print(f"facts={len(facts)} kills={kills} self_kills={self_kills} archived={archived}")
    assert (archived, distinct, handled) == (len(facts), len(facts), len(facts))
    columns = {
        "orders": ["hash", "number", "customer", "tag", "status", "status_candidates"],
        "customers": ["hash", "name"],
        "open_orders": ["hash", "number"],
    }
    for table in TABLES:
        assert table_rows(store, table, columns[table]) == expected[table], table
