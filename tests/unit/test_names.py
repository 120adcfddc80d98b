"""The run journal (factbus.testing.names): a run's journal is never taken for a
finished run's (which ``make brokers-clean`` sweeps and deletes) while the run
lives, not even while :meth:`Journal.start` is making it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from factbus.testing import names
from factbus.testing.names import Journal, finished_journals


@pytest.fixture
def keep_env() -> Any:
    """Journal.start exports its path: give the suite's own journal back after."""
    before = os.environ.get(names.ENV)
    yield
    if before is None:
        os.environ.pop(names.ENV, None)
    else:
        os.environ[names.ENV] = before


def test_a_live_journal_is_not_finished_and_a_closed_one_is(tmp_path: Path, keep_env: Any) -> None:
    journal = Journal.start(tmp_path)
    assert [j.path for j in finished_journals(tmp_path)] == []
    journal.close(remove=False)
    assert [j.path for j in finished_journals(tmp_path)] == [journal.path]


def test_a_journal_being_started_is_never_seen_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_env: Any
) -> None:
    """A clean-up listing the journals at the moment start() takes its lock (the
    real flock; only the moment is chosen) must not see the new journal: seen
    unlocked, it would be swept as finished and deleted, and the run would go on
    with a journal no lock protects."""
    real_flock = fcntl.flock
    seen: list[list[Path]] = []

    def flock(file: Any, operation: int) -> None:
        monkeypatch.setattr(fcntl, "flock", real_flock)  # the listing's own locks
        # start() is about to lock its journal: list from "another run" now.
        seen.append([j.path for j in finished_journals(tmp_path)])
        real_flock(file, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    journal = Journal.start(tmp_path)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert seen == [[]], f"a journal being started was taken for a finished run's: {seen}"
        assert journal.path.exists()
        assert [p.name for p in tmp_path.iterdir()] == [journal.path.name]
    finally:
        journal.close(remove=True)
