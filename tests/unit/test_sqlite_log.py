"""The SQLite store's fact log (schema 2): the in-memory identity index, its
confirmation against the log, other connections' writes, and the migration of
a schema 1 file (docs/decisions.md, "SQLite store: a fact log")."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlite_support import FAILS_AT_COMMIT, deferred_foreign_key

from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef
from factbus.store import sqlite as sqlite_store
from factbus.store.base import FactState, ParkedFact, StoreBatch, fact_to_bytes
from factbus.store.sqlite import CHECKPOINT_EVERY, SCHEMA_1, SCHEMA_VERSION, SqliteStore
from factbus.testing.store_suite import opened


def _fact(n: int, fact_type: str = "Log.Fact") -> Fact:
    return Fact(fact_type, {"n": n})


async def _record(store: SqliteStore, batch: StoreBatch) -> None:
    async with store.transaction() as tx:
        await tx.record(batch)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened(SqliteStore(f"sqlite:///{tmp_path}/node.db")) as store:
        yield store


def _log_rows(path: str) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT hash, type FROM factbus_log ORDER BY id").fetchall()


async def test_a_handled_fact_is_appended_once(store: SqliteStore) -> None:
    a, b = _fact(1), _fact(2)
    await _record(store, StoreBatch(handled=[a, b, a]))
    await _record(store, StoreBatch(handled=[b, a]))
    assert _log_rows(store.path) == [(a.hash, a.type), (b.hash, b.type)]
    assert (await store.counts())["handled"] == 2


async def test_same_hash_of_another_type_is_its_own_fact(store: SqliteStore) -> None:
    # The type is not hashed: these two facts share a hash and an index key.
    a, other = Fact("Log.A", {"n": 1}), Fact("Log.B", {"n": 1})
    assert a.hash == other.hash
    await _record(store, StoreBatch(handled=[a]))
    assert await store.states([other.ref]) == {}
    await _record(store, StoreBatch(handled=[other, a]))
    assert await store.states([a.ref, other.ref]) == {
        a.ref: FactState.HANDLED,
        other.ref: FactState.HANDLED,
    }
    assert len(_log_rows(store.path)) == 2
    await store.aclose()
    await store.open()  # rebuilt from the log: both found again
    assert len(await store.states([a.ref, other.ref])) == 2
    assert (await store.counts())["handled"] == 2


async def test_new_facts_sharing_a_hash_in_one_step_are_both_appended(
    store: SqliteStore,
) -> None:
    # The step's new facts are appended in one go unless two share an index key:
    # then each is confirmed on its own (and nothing of the first try stays).
    a, other = Fact("Log.A", {"n": 7}), Fact("Log.B", {"n": 7})
    fresh = [_fact(n) for n in range(300)]  # more than one multi-row INSERT
    await _record(store, StoreBatch(handled=[*fresh[:150], a, other, *fresh[150:]]))
    rows = _log_rows(store.path)
    assert len(rows) == 302
    assert set(rows) == {(f.hash, f.type) for f in [*fresh, a, other]}
    assert len(await store.states([f.ref for f in [*fresh, a, other]])) == 302
    await store.aclose()
    await store.open()
    assert len(await store.states([f.ref for f in [*fresh, a, other]])) == 302
    assert (await store.counts())["handled"] == 302


async def test_a_shared_prefix_is_not_a_match(store: SqliteStore) -> None:
    a = _fact(1)
    await _record(store, StoreBatch(handled=[a]))
    lookalike = FactRef(a.type, a.hash[:22] + "A" * (len(a.hash) - 22))
    assert lookalike.hash != a.hash
    assert await store.states([lookalike, a.ref]) == {a.ref: FactState.HANDLED}


async def test_facts_sharing_an_index_key_by_chance_stay_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index key is a 64-bit string hash: a collision is all but impossible,
    # so a key of 64 values stands in for one, and every path that meets a key
    # held by another row (a step's new facts, a later step, a duplicate, the
    # rebuild on open, another connection's rows) must still tell the facts apart.
    monkeypatch.setattr(sqlite_store, "_key", lambda fact_hash: ord(fact_hash[0]))
    url = f"sqlite:///{tmp_path}/node.db"
    store, other = SqliteStore(url), SqliteStore(url)
    await store.open()
    await other.open()
    try:
        facts = [_fact(n) for n in range(400)]
        await _record(store, StoreBatch(handled=facts[:150]))
        await _record(store, StoreBatch(handled=[*facts[100:250], facts[0]]))
        await _record(other, StoreBatch(handled=facts[250:300]))
        fresh = [f.ref for f in facts[300:]]
        assert await store.states([f.ref for f in facts]) == dict.fromkeys(
            [f.ref for f in facts[:300]], FactState.HANDLED
        )
        await _record(store, StoreBatch(handled=facts))
        assert await store.states(fresh) == dict.fromkeys(fresh, FactState.HANDLED)
        rows = _log_rows(store.path)
        assert sorted(rows) == sorted((f.hash, f.type) for f in facts)
        await store.aclose()
        await store.open()  # rebuilt from the log, every key shared many times
        assert (await store.counts())["handled"] == 400
        assert len(await store.states([f.ref for f in facts])) == 400
        await _record(store, StoreBatch(handled=facts[::-1]))
        assert len(_log_rows(store.path)) == 400
    finally:
        await other.aclose()
        await store.aclose()


async def test_log_ids_left_to_sqlite_are_kept_if_not_the_expected(
    store: SqliteStore,
) -> None:
    # SQLite gives appended rows the largest rowid plus one, which the index
    # expects; should another tool cut rows off the log's end, the ids SQLite
    # gives are lower, and the rows move up to the ids the index was given.
    old = [_fact(n) for n in range(4)]
    await _record(store, StoreBatch(handled=old))
    with sqlite3.connect(store.path) as other:
        other.execute("DELETE FROM factbus_log WHERE id > 2")
    a, b = _fact(10), Fact("Log.Other", {"n": 10})  # b: same hash, another type
    await _record(store, StoreBatch(handled=[a]))
    await _record(store, StoreBatch(handled=[b, old[0], _fact(11)]))
    rows = _log_rows(store.path)
    assert rows[:3] == [(f.hash, f.type) for f in [*old[:2], a]]
    assert sorted(rows[3:]) == sorted([(b.hash, b.type), (_fact(11).hash, "Log.Fact")])
    wanted = [a.ref, b.ref, _fact(11).ref, old[0].ref, old[3].ref]
    assert await store.states(wanted) == dict.fromkeys(wanted[:4], FactState.HANDLED)
    await store.aclose()
    await store.open()
    assert await store.states(wanted) == dict.fromkeys(wanted[:4], FactState.HANDLED)


async def test_rows_appended_after_a_cut_log_end_reach_the_other_connections(
    tmp_path: Path,
) -> None:
    # Another connection on the file (a worker and a sidecar share one) indexes
    # the rows above the highest id it knows of; should another tool cut rows
    # off the log's end, a row appended next must still get an id above every
    # id it knew of, or that connection never indexes it and takes its fact
    # for a new one (handled again, appended twice).
    url = f"sqlite:///{tmp_path}/node.db"
    async with opened(SqliteStore(url)) as store, opened(SqliteStore(url)) as other:
        old = [_fact(n) for n in range(4)]
        await _record(store, StoreBatch(handled=old))
        assert await other.states([old[3].ref]) == {old[3].ref: FactState.HANDLED}
        with sqlite3.connect(store.path) as db:
            db.execute("DELETE FROM factbus_log WHERE id > 2")
        a, b = _fact(10), _fact(11)
        await _record(store, StoreBatch(handled=[a]))
        await _record(store, StoreBatch(handled=[old[0], b]))  # the checked path
        assert await other.states([a.ref, b.ref, old[3].ref]) == {
            a.ref: FactState.HANDLED,
            b.ref: FactState.HANDLED,
        }
        await _record(other, StoreBatch(handled=[a, b, _fact(12)]))
        assert _log_rows(store.path) == [(f.hash, f.type) for f in [*old[:2], a, b, _fact(12)]]
        assert await store.states([_fact(12).ref]) == {_fact(12).ref: FactState.HANDLED}


async def test_rolled_back_writes_leave_no_index_entry(store: SqliteStore) -> None:
    a, b = _fact(1), _fact(2)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=[a]))
            raise RuntimeError("handler crashed")
    async with store.transaction() as tx:
        with pytest.raises(RuntimeError):
            async with tx.savepoint():
                await tx.record(StoreBatch(handled=[b]))
                raise RuntimeError("undone")
        await tx.record(StoreBatch(handled=[_fact(3)]))
    assert await store.states([a.ref, b.ref]) == {}
    await _record(store, StoreBatch(handled=[a, b]))
    assert await store.states([a.ref, b.ref]) == {
        a.ref: FactState.HANDLED,
        b.ref: FactState.HANDLED,
    }
    assert len(_log_rows(store.path)) == 3


async def test_a_failed_commit_leaves_no_index_entry(store: SqliteStore) -> None:
    deferred_foreign_key(store.db)
    a = _fact(1)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        async with store.transaction() as tx:
            tx.connection.execute(FAILS_AT_COMMIT)
            await tx.record(StoreBatch(handled=[a]))
    assert not store.db.in_transaction
    assert await store.states([a.ref]) == {}
    await _record(store, StoreBatch(handled=[a]))
    assert await store.states([a.ref]) == {a.ref: FactState.HANDLED}
    assert len(_log_rows(store.path)) == 1


async def test_another_connection_s_writes_are_seen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/node.db"
    first, second = SqliteStore(url), SqliteStore(url)
    await first.open()
    await second.open()
    try:
        a, b, c = _fact(1), _fact(2), _fact(3)
        await _record(first, StoreBatch(handled=[a]))
        await _record(second, StoreBatch(handled=[b], parked=[ParkedFact(c, frozenset({a.ref}))]))
        # first learns b (and c parked) at its next look-up, and appends after b
        assert await first.states([b.ref, c.ref]) == {
            b.ref: FactState.HANDLED,
            c.ref: FactState.PARKED,
        }
        await _record(first, StoreBatch(handled=[c, b]))
        assert await second.states([c.ref]) == {c.ref: FactState.HANDLED}
        assert (await second.counts()) == {"handled": 3, "parked": 0, "published": 0}
        assert len(_log_rows(first.path)) == 3
        # a fact with the hash of one first knows, of another type (its prefix is taken)
        twin = Fact("Log.Twin", {"n": 1})
        assert twin.hash == a.hash
        await _record(second, StoreBatch(handled=[twin]))
        assert await first.states([twin.ref, a.ref]) == {
            twin.ref: FactState.HANDLED,
            a.ref: FactState.HANDLED,
        }
    finally:
        await first.aclose()
        await second.aclose()


async def test_parked_then_handled_moves_to_the_log(store: SqliteStore) -> None:
    a, b = _fact(1), _fact(2, "Log.Kid")
    await _record(store, StoreBatch(parked=[ParkedFact(b, frozenset({a.ref}))]))
    with sqlite3.connect(store.path) as db:  # the schema 1 view still answers
        assert db.execute("SELECT type, state FROM factbus_facts").fetchall() == [("Log.Kid", 2)]
    await _record(store, StoreBatch(handled=[a, b]))
    assert await store.parked() == []
    assert await store.waiting_on([a.ref]) == []
    assert await store.counts() == {"handled": 2, "parked": 0, "published": 0}
    with sqlite3.connect(store.path) as db:
        assert sorted(db.execute("SELECT type, state FROM factbus_facts")) == [
            ("Log.Fact", 1),
            ("Log.Kid", 1),
        ]


async def test_keep_bodies_loads_handled_facts(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/node.db?keep_bodies=1")
    await store.open()
    try:
        a, b = _fact(1), _fact(2)
        await _record(store, StoreBatch(handled=[a], parked=[ParkedFact(b, frozenset())]))
        assert await store.load([a.ref, b.ref, _fact(3).ref]) == {a.ref: a, b.ref: b}
    finally:
        await store.aclose()


async def test_a_schema_1_store_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    handled = [_fact(n) for n in range(5)]
    root, kid, ready = _fact(100), _fact(101, "Log.Kid"), _fact(102, "Log.Kid")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        db.execute("INSERT INTO factbus_meta VALUES ('schema', '1'), ('owner', ?)", ("node 'n'",))
        db.executemany(
            "INSERT INTO factbus_facts VALUES (?, ?, 1, 0, NULL)",
            [(f.hash, f.type) for f in handled],
        )
        db.executemany(
            "INSERT INTO factbus_facts VALUES (?, ?, 2, ?, ?)",
            [(kid.hash, kid.type, 7, fact_to_bytes(kid)), (ready.hash, ready.type, 3, b"")],
        )
        db.execute(
            "UPDATE factbus_facts SET body = ? WHERE hash = ?", (fact_to_bytes(ready), ready.hash)
        )
        db.execute(
            "INSERT INTO factbus_waiting VALUES (?, ?, ?, ?)",
            (root.hash, root.type, kid.hash, kid.type),
        )
        db.execute("INSERT INTO factbus_published VALUES (?, ?)", (root.hash, root.type))
        db.execute("INSERT INTO factbus_positions VALUES ('log:t', 42)")
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        states = await store.states([f.ref for f in [*handled, root, kid, ready]])
        assert states == {
            **{f.ref: FactState.HANDLED for f in handled},
            kid.ref: FactState.PARKED,
            ready.ref: FactState.PARKED,
        }
        assert [p.fact for p in await store.parked()] == [ready, kid]  # by seq
        assert await store.ready_parked() == [ready]
        assert [(p.fact, p.missing) for p in await store.waiting_on([root.ref])] == [
            (kid, frozenset({root.ref}))
        ]
        assert await store.counts() == {"handled": 5, "parked": 2, "published": 1}
        assert await store.position("log:t") == 42
        await store.own("node 'n'")
        await _record(store, StoreBatch(handled=[root, kid, handled[0]]))
        assert await store.ready_parked() == [ready]
        assert (await store.counts())["handled"] == 7
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM factbus_meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        kinds = dict(db.execute("SELECT name, type FROM sqlite_master WHERE name LIKE 'factbus_%'"))
        assert kinds["factbus_facts"] == "view"
        assert "factbus_facts_parked" not in kinds
        assert db.execute("SELECT COUNT(*) FROM factbus_facts WHERE state = 1").fetchone() == (7,)
    again = SqliteStore(f"sqlite:///{path}")  # opening a migrated file again changes nothing
    await again.open()
    try:
        assert (await again.counts())["handled"] == 7
    finally:
        await again.aclose()


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE factbus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO factbus_meta VALUES ('schema', '99')")
    with pytest.raises(ConfigError, match="schema 99 is newer than this factbus knows"):
        await SqliteStore(f"sqlite:///{path}").open()
    with sqlite3.connect(path) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
    assert "factbus_log" not in names


async def test_wal_checkpoints_run_beside_the_commits(store: SqliteStore) -> None:
    """The store's COMMITs never checkpoint; every CHECKPOINT_EVERY commits a worker
    thread copies the WAL into the database file."""

    def file_size() -> int:
        return Path(store.path).stat().st_size

    size_before = file_size()
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    steps = [[_fact(n * 50 + i) for i in range(50)] for n in range(CHECKPOINT_EVERY)]
    for facts in steps[:-1]:
        await _record(store, StoreBatch(handled=facts))
    await asyncio.sleep(0.2)
    assert file_size() == size_before  # all still in the WAL
    await _record(store, StoreBatch(handled=steps[-1]))
    deadline = time.monotonic() + 30
    while file_size() < size_before + 100_000:  # 3,200 log rows copied
        assert time.monotonic() < deadline, "no checkpoint ran"
        await asyncio.sleep(0.05)
    assert (await store.counts())["handled"] == 50 * CHECKPOINT_EVERY


async def test_the_wal_stays_bounded_under_back_to_back_commits(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits without a pause: the worker's checkpoint never copies the last
    commit, so the store finishes it past WAL_BOUND and the WAL restarts (sizes
    scaled down here: 4 commits per checkpoint, a bound of 50 frames)."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(sqlite_store, "WAL_BOUND", 50)

    def wal_size() -> int:
        return Path(f"{store.path}-wal").stat().st_size

    sizes = []
    for n in range(600):
        await _record(store, StoreBatch(handled=[_fact(n * 40 + i) for i in range(40)]))
        sizes.append(wal_size())
    # Never restarted, the WAL would grow by the same few frames per commit all along
    # (as over the first three commits, before any checkpoint ran).
    unbounded = sizes[0] + (sizes[3] - sizes[0]) / 3 * 599
    assert max(sizes) < unbounded * 0.75, (max(sizes), unbounded)
    assert (await store.counts())["handled"] == 600 * 40
