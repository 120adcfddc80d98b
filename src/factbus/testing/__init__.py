"""Test kits shipped with factbus, for its own tests and for third-party adapters.

- :mod:`factbus.testing.conformance`: the transport conformance suite
  (:class:`TransportConformance`); needs pytest and pytest-asyncio.
- :mod:`factbus.testing.store_suite`: the store suite (:class:`StoreConformance`).
- :mod:`factbus.testing.scenario`: fact graphs, hostile delivery orders and a
  causal checker.
- :mod:`factbus.testing.shop`: the shop example's sidecar views (demo,
  benchmark, tests).
- :mod:`factbus.testing.brokers`: the URLs of factbus's own test brokers
  (``FACTBUS_TEST_*_URL``; skip, or fail in CI, when one does not answer), a
  group's queue made ahead of publishing, and the clean-up of what a test made
  on them (a topic's broker objects, a PostgreSQL schema).
- :mod:`factbus.testing.commands`: factbus's commands in subprocesses: one run
  to its end, a sidecar until it listens, ``factbus worker`` with its log lines
  collected and waited for.
- :mod:`factbus.testing.polling`: :func:`~factbus.testing.polling.eventually`,
  a check awaited until it holds.
- :mod:`factbus.testing.node_process`: the other side, a bus run as a test's
  worker script (``ready``/``stats``/``closed`` lines, ``kill -9`` of itself).
"""
