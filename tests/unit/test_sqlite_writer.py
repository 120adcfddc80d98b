"""The SQLite store's writer thread (docs/decisions.md, "SQLite store: the COMMIT's
thread"): with ``commit_thread=1`` each COMMIT runs there and the event loop runs
on while it does, no other call uses the connection meanwhile, a step's
deliveries are acked only once its COMMIT returned, a failed COMMIT surfaces as
on the loop, and a task cancelled while its COMMIT runs leaves the store as the
COMMIT's outcome says. By default the COMMIT runs on the loop thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlite_support import FAILS_AT_COMMIT, deferred_foreign_key

from factbus.dispatcher import Dispatcher
from factbus.envelope import CodecLimits, encode
from factbus.errors import ConfigError
from factbus.fact import Fact
from factbus.pipeline import Pipeline
from factbus.store import sqlite as sqlite_store
from factbus.store.base import FactState, StoreBatch
from factbus.store.sqlite import SqliteStore
from factbus.testing.store_suite import opened
from factbus.transport import Message
from factbus.transport.memory import MemoryDelivery, MemoryTransport


def _facts(count: int, tag: str = "w") -> list[Fact]:
    return [Fact("Writer.Fact", {"n": n, "tag": tag}) for n in range(count)]


def _logged(path: str, fact: Fact) -> bool:
    """Whether another connection sees ``fact`` in the log (committed)."""
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM factbus_log WHERE hash = ? AND type = ?", (fact.hash, fact.type)
        ).fetchone()
    return bool(row[0])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened(SqliteStore(f"sqlite:///{tmp_path}/node.db?commit_thread=1")) as store:
        yield store


@contextmanager
def writer_held(store: SqliteStore) -> Iterator[threading.Event]:
    """Keep the store's writer thread busy until the event is set (or the block
    ends): a COMMIT queued meanwhile waits, as one slowed by the disk would."""
    release = threading.Event()
    assert store._writer is not None
    busy = store._writer.submit(release.wait, 30)
    try:
        yield release
    finally:
        release.set()
        busy.result(timeout=30)


async def _until(condition: object, what: str) -> None:
    for _ in range(3000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("option", ["", "?commit_thread=1", "?commit_thread=0"])
async def test_commit_runs_in_the_writer_thread_when_told(tmp_path: Path, option: str) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/node.db{option}")
    await store.open()
    try:
        await _check_threads(store, in_writer=option == "?commit_thread=1")
    finally:
        await store.aclose()


async def _check_threads(store: SqliteStore, *, in_writer: bool) -> None:
    statements: list[tuple[int, str]] = []
    store.db.set_trace_callback(lambda sql: statements.append((threading.get_ident(), sql)))
    async with store.transaction() as tx:
        await tx.record(StoreBatch(handled=_facts(3)))
    store.db.set_trace_callback(None)
    loop_thread = threading.get_ident()
    begins = [thread for thread, sql in statements if sql.startswith("BEGIN")]
    commits = [thread for thread, sql in statements if sql == "COMMIT"]
    inserts = [thread for thread, sql in statements if sql.startswith("INSERT")]
    assert begins == [loop_thread]
    assert inserts and set(inserts) == {loop_thread}  # handlers' writes stay on the loop
    assert len(commits) == 1
    assert (commits[0] != loop_thread) is in_writer


def _wal_restarts(path: str) -> int:
    """How many times the WAL restarted from its beginning: the checkpoint sequence
    number in its header, which SQLite writes with a restarted WAL's first frame.
    (Read without a lock: SQLite locks the -shm file, not the WAL.)"""
    wal = Path(f"{path}-wal")
    if not wal.exists():
        return 0
    with wal.open("rb") as f:
        header = f.read(32)
    return int.from_bytes(header[12:16], "big") if len(header) == 32 else 0


async def _commit_threads(
    store: SqliteStore,
    steps: int,
    pause: float,
    tag: str = "step",
    statements: list[tuple[int, str]] | None = None,
) -> list[tuple[int, bool]]:
    """Record ``steps`` transactions of 20 facts, ``pause`` s apart; per COMMIT, the
    thread that ran it and whether it restarted the WAL. Every statement on the
    store's connection, with its thread, goes to ``statements``."""
    commits: list[int] = []
    seen = statements if statements is not None else []

    def trace(sql: str) -> None:
        seen.append((threading.get_ident(), sql))
        if sql == "COMMIT":
            commits.append(threading.get_ident())

    store.db.set_trace_callback(trace)
    out: list[tuple[int, bool]] = []
    handled = (await store.counts())["handled"]
    try:
        for n in range(steps):
            before = _wal_restarts(store.path)
            commits.clear()
            async with store.transaction() as tx:
                await tx.record(StoreBatch(handled=_facts(20, f"{tag}{n}")))
            [thread] = commits
            out.append((thread, _wal_restarts(store.path) != before))
            await asyncio.sleep(pause)  # the worker's checkpoint runs meanwhile
        assert (await store.counts())["handled"] == handled + 20 * steps
    finally:
        store.db.set_trace_callback(None)
    return out


async def test_the_commit_that_restarts_the_wal_runs_in_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past WAL_BOUND the worker's checkpoint copies the whole WAL (a pass while
    nothing is committed); the next COMMIT restarts the WAL, and SQLite syncs its
    new header in it: that COMMIT runs in the writer thread, the others on the
    loop (the default store; sizes scaled down: a checkpoint every 2 commits, a
    bound of 8 frames)."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(sqlite_store, "WAL_BOUND", 8)
    store = SqliteStore(f"sqlite:///{tmp_path}/node.db")
    await store.open()
    try:
        commits = await _commit_threads(store, 40, pause=0.03)
    finally:
        await store.aclose()
    loop_thread = threading.get_ident()
    restarting = [thread for thread, restarted in commits if restarted]
    assert len(restarting) >= 2, commits  # the WAL restarted, and more than once
    assert loop_thread not in restarting
    # Every other COMMIT stayed on the loop (nothing else was predicted to restart).
    assert all(thread == loop_thread for thread, restarted in commits if not restarted)


async def test_the_store_s_own_checkpoint_runs_in_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the worker's checkpoint leaves frames past WAL_BOUND (here: another
    connection reads an old snapshot, so no checkpoint may copy past it), the
    store finishes the checkpoint on its own connection, in the writer thread,
    between two transactions; once it copies everything (the reader gone), the
    COMMIT that restarts the WAL runs there too, every other on the loop."""
    # No checkpoint after the first transaction: one racing the reader's BEGIN
    # could copy the whole WAL before the reader pins its frames (then the WAL
    # restarts while "held"); from the reader's snapshot on, one after each COMMIT.
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 10**9)
    monkeypatch.setattr(sqlite_store, "WAL_BOUND", 0)
    store = SqliteStore(f"sqlite:///{tmp_path}/node.db")
    await store.open()
    statements: list[tuple[int, str]] = []
    reader = sqlite3.connect(store.path, isolation_level=None)
    try:
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=_facts(20, "first")))
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM factbus_log").fetchall()  # holds its snapshot
        monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 1)
        held = await _commit_threads(store, 10, 0.02, "held", statements)
        reader.execute("COMMIT")
        released = await _commit_threads(store, 10, 0.02, "released", statements)
    finally:
        reader.close()
        await store.aclose()
    loop_thread = threading.get_ident()
    checkpoints = [thread for thread, sql in statements if "wal_checkpoint" in sql]
    assert checkpoints, "the store never finished a checkpoint"
    assert loop_thread not in checkpoints
    assert not any(restarted for _, restarted in held)  # the reader kept the WAL
    assert any(restarted for _, restarted in released)
    commits = held + released
    assert all((thread != loop_thread) == restarted for thread, restarted in commits), commits


async def test_the_loop_runs_on_while_a_commit_waits(store: SqliteStore) -> None:
    first, second = _facts(2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def record() -> None:
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=[first]))

    ticker = asyncio.create_task(tick())
    try:
        with writer_held(store) as release:
            writing = asyncio.create_task(record())
            await _until(lambda: store._pending is not None, "the COMMIT to be queued")
            before = ticks
            # Another task's look-up waits for the writer (one thread at a time).
            looking = asyncio.create_task(store.states([first.ref, second.ref]))
            await asyncio.sleep(0.05)
            assert ticks > before + 10  # the loop ran other tasks meanwhile
            assert not writing.done() and not looking.done()
            assert not _logged(store.path, first)
            release.set()
            await writing
            assert await looking == {first.ref: FactState.HANDLED}
    finally:
        ticker.cancel()
    assert _logged(store.path, first)


@pytest.mark.parametrize("option", ["", "?commit_thread=1"])
async def test_a_failed_commit_surfaces_and_leaves_nothing(tmp_path: Path, option: str) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/node.db{option}")
    await store.open()
    try:
        await _check_failed_commit(store)
    finally:
        await store.aclose()


def test_commit_thread_takes_a_boolean() -> None:
    with pytest.raises(ConfigError, match="commit_thread"):
        SqliteStore("sqlite:///x.db?commit_thread=sometimes")


async def _check_failed_commit(store: SqliteStore) -> None:
    deferred_foreign_key(store.db)
    facts = _facts(5)
    committed: list[bool] = []
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        async with store.transaction() as tx:
            tx.after_commit(lambda: committed.append(True))
            tx.connection.execute(FAILS_AT_COMMIT)
            await tx.record(StoreBatch(handled=facts))
    assert committed == []
    assert not store.db.in_transaction
    assert await store.states([f.ref for f in facts]) == {}
    assert not any(_logged(store.path, f) for f in facts)
    async with store.transaction() as tx:  # the store goes on
        await tx.record(StoreBatch(handled=facts))
    assert all(_logged(store.path, f) for f in facts)


async def test_cancelled_while_committing_keeps_what_was_committed(store: SqliteStore) -> None:
    facts = _facts(4, "cancel")
    committed: list[bool] = []

    async def record() -> None:
        async with store.transaction() as tx:
            tx.after_commit(lambda: committed.append(True))
            await tx.record(StoreBatch(handled=facts))

    with writer_held(store) as release:
        writing = asyncio.create_task(record())
        await _until(lambda: store._pending is not None, "the COMMIT to be queued")
        writing.cancel()
        await asyncio.sleep(0.02)
        assert not writing.done()  # it waits for the COMMIT's outcome first
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await writing
    # The COMMIT went through: the facts are handled, in the log once, and the
    # index knows them (recording them again appends nothing).
    assert committed == [True]
    assert all(_logged(store.path, f) for f in facts)
    async with store.transaction() as tx:
        await tx.record(StoreBatch(handled=facts))
    assert (await store.counts())["handled"] == len(facts)
    assert set((await store.states([f.ref for f in facts])).values()) == {FactState.HANDLED}


async def test_cancelled_while_a_failing_commit_runs_leaves_nothing(store: SqliteStore) -> None:
    store.db.execute("PRAGMA foreign_keys=ON")
    store.db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store.db.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    facts = _facts(3, "fail")

    async def record() -> None:
        async with store.transaction() as tx:
            tx.connection.execute("INSERT INTO child VALUES (7)")
            await tx.record(StoreBatch(handled=facts))

    with writer_held(store) as release:
        writing = asyncio.create_task(record())
        await _until(lambda: store._pending is not None, "the COMMIT to be queued")
        writing.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await writing
    assert not store.db.in_transaction
    assert await store.states([f.ref for f in facts]) == {}
    assert (await store.counts())["handled"] == 0


class _Probe:
    """A real memory delivery whose ack first checks, through another connection,
    that the step's facts are committed."""

    def __init__(self, delivery: MemoryDelivery, path: str, facts: list[Fact]) -> None:
        self._delivery = delivery
        self._path = path
        self._facts = facts
        self.committed_at_ack: bool | None = None

    @property
    def body(self) -> bytes:
        return self._delivery.body

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._delivery.headers)

    @property
    def redelivered(self) -> bool:
        return self._delivery.redelivered

    async def ack(self) -> None:
        self.committed_at_ack = all(_logged(self._path, f) for f in self._facts)
        await self._delivery.ack()

    async def nack(self, requeue: bool = True) -> None:
        await self._delivery.nack(requeue)


async def test_a_step_acks_its_deliveries_only_after_its_commit(store: SqliteStore) -> None:
    await _check_acks_after_commit(store)


async def test_a_step_whose_commit_restarts_the_wal_acks_only_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default store (COMMITs on the loop) once a checkpoint copied the whole
    WAL: the next step's COMMIT restarts the WAL in the writer thread, and the
    step acks its deliveries only once it returned."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 1)
    async with opened(SqliteStore(f"sqlite:///{tmp_path}/node.db")) as store:
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=_facts(20, "before")))
        await _until(lambda: store._restart_due, "a checkpoint to copy the whole WAL")
        before = _wal_restarts(store.path)
        await _check_acks_after_commit(store)
        assert _wal_restarts(store.path) == before + 1


async def _check_acks_after_commit(store: SqliteStore) -> None:
    """A pipeline step over 40 deliveries whose COMMIT waits for the writer thread
    (held): the handlers ran, nothing is acked; released: each delivery is acked
    with the step's facts committed (as another connection sees them)."""
    topic = f"writer-{uuid.uuid4().hex[:8]}"
    transport = MemoryTransport(f"memory://{topic}")
    await transport.connect()
    subscription = await transport.subscribe(topic, "g")
    facts = _facts(40, topic)
    await transport.publish(topic, [Message(encode([f]), {}) for f in facts])
    batch = await subscription.next_batch(100, timeout=5)
    assert len(batch) == len(facts)
    probes = [_Probe(d, store.path, facts) for d in batch]
    dispatcher = Dispatcher()
    handled: list[Fact] = []
    dispatcher.register("Writer.Fact", handled.append)
    pipeline = Pipeline(
        topic=topic,
        transport=transport,
        store=store,
        dispatcher=dispatcher,
        limits=CodecLimits(),
    )
    with writer_held(store) as release:
        stepping = asyncio.create_task(pipeline.step(probes))  # type: ignore[arg-type]
        await _until(lambda: len(handled) == len(facts), "the handlers")
        await asyncio.sleep(0.05)
        assert [p.committed_at_ack for p in probes] == [None] * len(probes)  # none acked yet
        release.set()
        await stepping
    assert [p.committed_at_ack for p in probes] == [True] * len(probes)
    assert subscription.unacked == {}
    await transport.aclose()
