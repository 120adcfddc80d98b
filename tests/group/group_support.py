"""Shared pieces of the group-mode tests: a fresh PostgreSQL schema per test, and
the effect table that proves "once, in causal order" across workers.

The effect table is written by a transactional handler in the same transaction
as the fact's handled mark (see :func:`record_effect`): a fact handled twice
shows up as two rows, a fact handled before one of its predecessors as a row
with ``in_order = false``, a lost fact as a missing row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from factbus.fact import Fact


def env_int(name: str, default: int) -> int:
    """A size knob: ``FACTBUS_GROUP_<NAME>`` shrinks a test for quick local runs."""
    return int(os.environ.get(f"FACTBUS_GROUP_{name}", default))


@dataclass(frozen=True)
class EffectTable:
    """``<schema>.effects``: one row per handler run (no unique key, on purpose)."""

    schema: str

    @property
    def name(self) -> str:
        return f'"{self.schema}".effects'

    def create_sql(self) -> str:
        return (
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"; '
            f"CREATE TABLE IF NOT EXISTS {self.name} ("
            "hash text NOT NULL, type text NOT NULL, worker text NOT NULL, "
            "in_order boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()); "
            f"CREATE INDEX IF NOT EXISTS effects_hash ON {self.name} (hash)"
        )

    def insert_sql(self) -> str:
        # One round trip: the row says whether every predecessor's effect was
        # visible in this transaction when this fact's handler ran.
        return (
            f"INSERT INTO {self.name} (hash, type, worker, in_order) VALUES ($1, $2, $3, "
            f"(SELECT count(DISTINCT e.hash) FROM {self.name} e WHERE e.hash = ANY($4::text[]))"
            f" = cardinality($4::text[]))"
        )

    async def create(self, pg_url: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(self.create_sql())
        finally:
            await conn.close()

    async def verdict(self, pg_url: str, expected: Sequence[Fact]) -> Verdict:
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch(
                f"SELECT hash, count(*) AS n, bool_and(in_order) AS ok, "
                f"array_agg(DISTINCT worker) AS workers FROM {self.name} GROUP BY hash"
            )
        finally:
            await conn.close()
        seen = {row["hash"]: row for row in rows}
        wanted = {fact.hash for fact in expected}
        workers: dict[str, int] = {}
        for row in rows:
            for worker in row["workers"]:
                workers[worker] = workers.get(worker, 0) + 1
        return Verdict(
            facts=len(wanted),
            handled=sum(1 for h in wanted if h in seen),
            lost=sum(1 for h in wanted if h not in seen),
            duplicated=sum(row["n"] - 1 for row in rows),
            out_of_order=sum(1 for row in rows if not row["ok"]),
            unexpected=sum(1 for h in seen if h not in wanted),
            by_worker=workers,
        )

    async def count(self, conn: asyncpg.Connection) -> int:
        value: int = await conn.fetchval(f"SELECT count(DISTINCT hash) FROM {self.name}")
        return value


@dataclass(frozen=True)
class Verdict:
    facts: int
    handled: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    by_worker: dict[str, int]

    @property
    def perfect(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.out_of_order == 0
            and self.unexpected == 0
            and self.handled == self.facts
        )


async def record_effect(
    conn: asyncpg.Connection, table: EffectTable, worker: str, fact: Fact
) -> None:
    """The transactional handler's body: insert this fact's effect row."""
    preds = sorted({ref.hash for ref in fact.predecessor_refs()})
    await conn.execute(table.insert_sql(), fact.hash, fact.type, worker, preds)
