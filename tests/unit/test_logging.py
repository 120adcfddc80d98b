"""Logging writes to ``sys.stderr`` as it is at each line, not at configure time."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog

from factbus.logging import configure_logging


def test_lines_follow_a_swapped_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("info", json=True)
    log = structlog.get_logger("factbus.test")
    log.info("before the swap")  # binds and caches the logger, as real code does
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.info("first", n=1)
    monkeypatch.setattr(sys, "stderr", second)
    log.warning("second", n=2)
    log.debug("filtered out")
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["first"]
    lines = [json.loads(line) for line in second.getvalue().splitlines()]
    assert [(line["event"], line["n"], line["level"]) for line in lines] == [
        ("second", 2, "warning")
    ]


def test_unknown_level_is_named() -> None:
    with pytest.raises(ValueError, match="'loud'"):
        configure_logging("loud")
