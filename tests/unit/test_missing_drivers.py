"""Every broker adapter imported without its client library raises MissingDriver,
which names the extra to install (one test for all adapters: each runs in a fresh
interpreter in which the driver's import fails)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from factbus.errors import MissingDriver


@pytest.mark.parametrize(
    ("driver", "adapter", "extra"),
    [
        ("aio_pika", "factbus_amqp", "amqp"),
        ("confluent_kafka", "factbus_kafka", "kafka"),
        ("kombu", "factbus_kombu", "kombu"),
    ],
)
def test_missing_driver_names_the_extra(driver: str, adapter: str, extra: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{driver!r}] = None\n"
        "from factbus.errors import MissingDriver\n"
        "try:\n"
        f"    import {adapter}\n"
        "except MissingDriver as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"pip install 'factbus[{extra}]'" in result.stdout
    assert issubclass(MissingDriver, ImportError)
