"""Shared fixtures. Broker URLs come from FACTBUS_TEST_* variables (see
scripts/brokers.sh env); in CI (FACTBUS_CI=1) a broker test that cannot reach its
broker fails instead of skipping: :mod:`factbus.testing.brokers`.

What the tests make on the brokers is removed after each test: the run keeps a
journal of every name ``unique()`` made and every broker ``broker_url()`` gave
(:mod:`factbus.testing.names`, also written by the workers and apps tests start);
``_sweep_test`` removes, on the brokers a test used, every queue, exchange, topic,
group, key, schema or database whose name contains a name made while it ran
(:mod:`factbus.testing.sweep`), and ``_sweep_run`` what is left at the end of the
run (names made outside a test, e.g. by a module-scoped fixture; Kafka groups that
still had members). A clean-up failure is an error of the test's teardown (the
test's own outcome is kept); the journal of a run that could not remove
everything stays for ``make brokers-clean``. ``FACTBUS_TEST_SWEEP=0`` keeps what
the tests made (to look at it after a failure), and the journal with it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import pytest

from factbus.testing.brokers import DEFAULT_URLS, broker_url
from factbus.testing.names import Entries, Journal
from factbus.testing.sweep import containing, sweep_now
from factbus.transport import Transport

__all__ = ["DEFAULT_URLS", "broker_url", "connected"]

T = TypeVar("T", bound=Transport)

_journal: Journal | None = None
_swept: set[str] = set()
"""Names a test's sweep removed everything of (not swept again at the end)."""


def _sweeping() -> bool:
    return os.environ.get("FACTBUS_TEST_SWEEP", "1") != "0"


def pytest_configure(config: pytest.Config) -> None:
    """Start the run's journal before collection (a module may make names on import)."""
    global _journal
    _journal = Journal.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the journal's lock; the file stays if ``_sweep_run`` did not remove it
    and it names something (a run that only collected names nothing)."""
    if _journal is not None:
        _journal.close(remove=not _journal.read().names)


@pytest.fixture(autouse=True, scope="session")
def _sweep_run() -> Iterator[None]:
    """At the end of the run: sweep the names no test's sweep covered from every
    broker the run used; remove the journal if nothing is left."""
    yield
    if _journal is None or not _sweeping():
        return
    entries = _journal.read()
    left = entries.names - _swept
    if left and entries.brokers:
        swept = sweep_now(entries.brokers, containing(left))
        # A worker killed by the last tests stays a member of its Kafka group until
        # the broker's session timeout: wait for that, a minute at most.
        deadline = time.monotonic() + 60
        while swept.busy and not swept.failed and time.monotonic() < deadline:
            time.sleep(2)
            swept = sweep_now(entries.brokers, containing(left))
        swept.check(busy_is_failure=True)
    _journal.close(remove=True)


@pytest.fixture(autouse=True)
def _sweep_test() -> Iterator[None]:
    """After the test (and every fixture it used) ended: remove what the names it
    made made on the brokers it used. Kafka groups still with members (a killed
    worker's) are left to ``_sweep_run``."""
    if _journal is None or not _sweeping():
        yield
        return
    start = _journal.offset()
    yield
    made: Entries = _journal.read(start)
    if not made.names or not made.brokers:
        return
    swept = sweep_now(made.brokers, containing(made.names))
    if not swept.failed and not swept.busy:
        _swept.update(made.names)
    swept.check(busy_is_failure=False)


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
