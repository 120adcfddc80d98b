"""freeze_after_start: what factbus's own processes do to the collector after start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from factbus.gc_freeze import ENV, freeze_after_start


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's collector as it was


def test_freezes_what_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    kept = [[i] for i in range(100)]
    assert gc.get_freeze_count() == 0
    assert freeze_after_start() is True
    assert gc.get_freeze_count() >= len(kept)


def test_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0")
    assert freeze_after_start() is False
    assert gc.get_freeze_count() == 0
