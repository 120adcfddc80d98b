"""`factbus worker`'s progress lines when not on a terminal (logs, `kubectl logs`).

A line every --progress-every seconds says how many facts were handled per second
since the line before: 500 facts handled in a burst between two lines read as
500 / (seconds between them), not as the last second's rate (~0 after the burst,
which the live terminal line's moving average would give).
"""

from __future__ import annotations

import argparse
import io
import re
import time

from factbus.commands.worker import Supervisor


def _rate(line: str) -> int:
    match = re.search(r"\| ([\d,]+) handled/s \| handled ([\d,]+) ", line)
    assert match, line
    return int(match.group(1).replace(",", ""))


def test_log_lines_give_the_rate_since_the_previous_line() -> None:
    out = io.StringIO()
    args = argparse.Namespace(workers=2, progress="log", progress_every=0.3)
    supervisor = Supervisor(args, out=out)

    before_first = time.monotonic()
    supervisor._render()  # the first line comes at once: nothing handled yet
    after_first = time.monotonic()
    supervisor.slots[0].current["handled"] = 300
    supervisor.slots[1].current["handled"] = 200
    time.sleep(0.4)
    before_second = time.monotonic()
    supervisor._render()
    after_second = time.monotonic()
    supervisor._render()  # not due yet: no line
    time.sleep(0.4)
    supervisor._render()  # due, nothing handled since: 0/s

    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert _rate(lines[0]) == 0
    assert "handled 500 " in lines[1]
    # 500 facts over the time between the two lines, whatever it was exactly
    slowest, fastest = 500 / (after_second - before_first), 500 / (before_second - after_first)
    assert int(slowest) <= _rate(lines[1]) <= round(fastest), (lines[1], slowest, fastest)
    assert _rate(lines[1]) >= 500 / 2  # the burst shows (the moving average gave ~0 here)
    assert _rate(lines[2]) == 0
