"""`factbus demo`, the README's first command: it converges, and its summary reads whole.

Run as a user runs it (`python -m factbus demo`, output to a pipe, which rich renders
80 columns wide, as on an 80-column terminal): exit 0, the convergence line, and no
header or value cut short with an ellipsis.
"""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_converges_and_its_summary_fits_80_columns() -> None:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "factbus", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "converged: 3 nodes handled all" in " ".join(out.split()), out
    summary = out[out.index("Summary") :]
    assert "…" not in summary, summary
    assert max(len(line) for line in summary.splitlines()) <= 80, summary
    rows = [line.split() for line in summary.splitlines() if line.strip().startswith("node-")]
    assert [row[0] for row in rows] == ["node-a", "node-b", "node-c"], summary
    # handled, duplicates, parked, out of order, digest, revenue, shipped: the same on each
    assert len({tuple(row[2:]) for row in rows}) == 1, summary
