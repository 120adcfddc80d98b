"""End-to-end benchmarks: factbus against the raw broker client on the same broker.

``factbus bench --transport URL`` (see :mod:`factbus.commands.bench`) drives
:func:`run_bench`: facts are published, received, verified, deduplicated,
causally ordered and handled by a trivial handler on a :class:`~factbus.Bus`,
and in the same run a raw client moves the same envelope bodies over the same
broker (the baseline). Every figure is reported next to the baseline's.

Modules: :mod:`.workload` (what is published), :mod:`.baseline` (one raw
client per transport), :mod:`.publisher` (publisher tasks and processes),
:mod:`.runner` (phases and measurement), :mod:`.result` (figures, JSON) and
:mod:`.report` (table and plot).
"""

from __future__ import annotations

from factbus.bench.result import BenchResult, Latency
from factbus.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "BenchResult", "Latency", "run_bench"]
