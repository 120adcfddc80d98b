"""What the SQLite store's unit tests share."""

from __future__ import annotations

import sqlite3

FAILS_AT_COMMIT = "INSERT INTO child VALUES (42)"
"""Executed in a transaction of a database prepared by :func:`deferred_foreign_key`,
it makes that transaction's COMMIT fail (``sqlite3.IntegrityError``, FOREIGN KEY)."""


def deferred_foreign_key(db: sqlite3.Connection) -> None:
    """A transactional handler's tables with a deferred foreign key: a row that
    breaks it is accepted until the COMMIT, which then fails."""
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
