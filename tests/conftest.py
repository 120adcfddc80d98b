"""Shared fixtures. Broker URLs come from FACTBUS_TEST_* variables (see
scripts/brokers.sh env); in CI (FACTBUS_CI=1) a broker test that cannot reach its
broker fails instead of skipping: :mod:`factbus.testing.brokers`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from factbus.testing.brokers import DEFAULT_URLS, broker_url
from factbus.transport import Transport

__all__ = ["DEFAULT_URLS", "broker_url", "connected"]

T = TypeVar("T", bound=Transport)


@pytest.fixture
async def transports() -> AsyncIterator[list[Transport]]:
    """The transports a test opened (it appends them): each is closed after the test,
    whatever it left them in (errors on closing are ignored)."""
    made: list[Transport] = []
    yield made
    for transport in made:
        with contextlib.suppress(Exception):
            await transport.aclose()


async def connected(transports: list[T], transport: T) -> T:
    """``transport``, put in ``transports`` (the fixture's list: closed after the
    test, also when ``connect`` fails) and then connected."""
    transports.append(transport)
    await transport.connect()
    return transport
