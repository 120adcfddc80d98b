"""Test kits shipped with factbus, for its own tests and for third-party adapters.

- :mod:`factbus.testing.conformance`: the transport conformance suite
  (:class:`TransportConformance`); needs pytest and pytest-asyncio.
- :mod:`factbus.testing.store_suite`: the store suite (:class:`StoreConformance`).
- :mod:`factbus.testing.scenario`: fact graphs, hostile delivery orders and a
  causal checker.
- :mod:`factbus.testing.shop`: the shop example's sidecar views (demo,
  benchmark, tests).
- :mod:`factbus.testing.brokers`: the URLs of factbus's own test brokers
  (``FACTBUS_TEST_*_URL``; skip, or fail in CI, when one does not answer) and
  the clean-up of a test topic's broker objects.
"""
