"""The bus that ``test_error_contract`` runs under ``factbus worker error_app:build_bus``.

``ERROR_APP_TRANSPORT``, ``ERROR_APP_TOPIC`` and ``ERROR_APP_GROUP`` say where it
consumes; it handles facts of type ``Test.ErrorContract`` (doing nothing) into
a memory store.
"""

from __future__ import annotations

import os

from factbus import Bus, Fact


def build_bus() -> Bus:
    env = os.environ
    bus = Bus(
        env["ERROR_APP_TRANSPORT"],
        "memory://",
        topic=env["ERROR_APP_TOPIC"],
        group=env["ERROR_APP_GROUP"],
        node="errors",
    )

    @bus.handler("Test.ErrorContract")
    def handle(fact: Fact) -> None:
        return None

    return bus
