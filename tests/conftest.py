"""Shared fixtures. Broker URLs come from FACTBUS_TEST_* variables (see
scripts/brokers.sh env); in CI (FACTBUS_CI=1) a broker test that cannot reach its
broker fails instead of skipping: :mod:`factbus.testing.brokers`."""

from __future__ import annotations

from factbus.testing.brokers import DEFAULT_URLS, broker_url

__all__ = ["DEFAULT_URLS", "broker_url"]
