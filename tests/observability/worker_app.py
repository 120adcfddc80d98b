"""The bus ``factbus worker`` runs in test_worker_metrics.py (settings from env)."""

from __future__ import annotations

import os

from factbus import Bus, Fact


def build_bus() -> Bus:
    bus = Bus(
        os.environ["OBS_APP_TRANSPORT"],
        "memory://",
        topic=os.environ["OBS_APP_TOPIC"],
        node="obs-worker",
    )

    @bus.handler("Obs.Work")
    def work(fact: Fact) -> None:
        pass

    return bus
