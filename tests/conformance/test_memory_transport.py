"""The memory transport passes the same conformance suite as the broker adapters."""

from __future__ import annotations

from factbus.testing.conformance import TransportConformance


class TestMemoryTransport(TransportConformance):
    url = "memory://conformance"
    timeout = 10.0
