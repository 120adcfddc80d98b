"""Garbage-collector settings of the processes factbus owns.

``factbus worker`` (each worker process) and ``factbus sidecar`` call
:func:`freeze_after_start` once their bus has started: every object alive then
(modules, classes, functions, the bus, its transport and store, ~30,000-40,000
objects) moves to the cyclic collector's permanent generation, so a full
(generation-2) collection no longer walks them. In a Kafka consumer such a
collection took 11-25 ms of CPU on the event-loop thread, every fact waiting
for it; frozen, 2-15 ms (docs/decisions.md, "Garbage collection").

A library must not change an embedding application's collector silently:
:class:`~factbus.Bus` never calls this. An application that embeds a bus may
call it itself after start-up (README.md, "Command line"; docs/decisions.md, "Garbage collection").
``FACTBUS_GC_FREEZE=0`` turns it off in factbus's own processes.
"""

from __future__ import annotations

import gc
import os

ENV = "FACTBUS_GC_FREEZE"
"""Set to ``0`` to keep factbus's own processes from freezing (default: freeze)."""


def freeze_after_start() -> bool:
    """Collect once, then freeze every object alive (:func:`gc.freeze`), unless
    :data:`ENV` is ``0``. Returns whether it froze. Frozen objects are never
    collected, so call it once, after start-up, when what is alive stays alive;
    objects created later are collected as usual."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    gc.collect()  # garbage of the start-up is not frozen with the rest
    gc.freeze()
    return True
