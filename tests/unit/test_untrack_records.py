"""``factbus_native.untrack_records``: librdkafka's consumed records taken out of
the cyclic garbage collector's lists, and nothing else (docs/decisions.md,
"Kafka records out of the cyclic collector's lists").

The records here are made with ``confluent_kafka.Message(...)`` (the driver's
constructor for tests), the same C type ``Consumer.consume`` returns; the
Kafka conformance suite checks records consumed from the broker. These tests
call the extension directly, so they also run under ``FACTBUS_NATIVE=0``; where
it is not built they skip, and fail in CI.
"""

from __future__ import annotations

import gc
import importlib
import os
import subprocess
import sys
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from factbus import Fact, encode, envelope
from factbus.envelope import decode_each
from factbus_kafka import _driver


def native_module() -> Any:
    try:
        return importlib.import_module("factbus_native")
    except ImportError:
        message = "factbus_native is not built (cargo + `make .venv/.installed` build it)"
        if os.environ.get("FACTBUS_CI"):
            pytest.fail(message)
        pytest.skip(message)


class Payload:
    """A value the collector tracks and could free if it wrongly thought it unreachable."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = [text, text.upper()]


def _records(count: int) -> list[Message]:
    return [
        Message(
            topic="t",
            partition=i % 3,
            offset=i,
            key=f"k-{i}".encode(),
            value=f"v-{i}".encode(),
            headers=[("x-n", str(i).encode()), ("x-none", None)],
        )
        for i in range(count)
    ]


def test_only_exact_records_are_untracked_and_they_read_as_before() -> None:
    native = native_module()

    class Sub(Message):  # a subclass (Message is a base type): left as it is
        pass

    records = _records(5)
    sub = Sub(value=b"s")
    other = [1, 2]
    mixed: list[Any] = [*records, sub, other, b"bytes", None]
    assert all(gc.is_tracked(o) for o in [*records, sub, other])
    assert native.untrack_records(mixed, Message) == 5
    assert [gc.is_tracked(r) for r in records] == [False] * 5
    assert gc.is_tracked(sub) and gc.is_tracked(other)
    assert native.untrack_records(mixed, Message) == 5  # idempotent
    assert native.untrack_records([], Message) == 0
    for _ in range(3):
        gc.collect()
    for i, record in enumerate(records):
        assert record.value() == f"v-{i}".encode() and record.key() == f"k-{i}".encode()
        assert (record.partition(), record.offset(), record.topic()) == (i % 3, i, "t")
        assert record.headers() == [("x-n", str(i).encode()), ("x-none", None)]
        assert record.error() is None
        assert _driver.decode_record_headers(record) == {
            "x-n": str(i),
            "x-none": "",
            "x-factbus-message-id": f"k-{i}",
        }


def test_the_collector_frees_nothing_an_untracked_record_holds_and_its_dealloc_frees_all() -> None:
    """What only an untracked record refers to is reachable for the collector
    (its reference counts as one from outside), so full collections leave it be;
    dropping the record frees it as before."""
    native = native_module()
    payload = Payload("kept")
    headers = [("h", b"1"), ("payload", payload)]  # a tracked list inside the record
    record = Message(value=payload, headers=headers, error=KafkaError(KafkaError._PARTITION_EOF))
    del headers  # now only the record refers to its headers list
    holders = len(gc.get_referrers(payload))
    before = sys.getrefcount(payload)
    native.untrack_records([record], Message)
    assert not gc.is_tracked(record)
    for _ in range(3):
        gc.collect()
    assert record.value() is payload and payload.parts == ["kept", "KEPT"]
    assert record.headers() == [("h", b"1"), ("payload", payload)]
    assert record.error() is not None and record.error().code() == KafkaError._PARTITION_EOF
    # The record's own references are still counted once each, none dropped.
    assert sys.getrefcount(payload) == before
    # The untracked record is no longer among the payload's referrers the collector
    # lists (it lists tracked objects only): that is what "untracked" means.
    assert len(gc.get_referrers(payload)) == holders - 1
    refs = sys.getrefcount(payload)
    del record
    assert sys.getrefcount(payload) == refs - 2  # the record's value and its headers' tuple
    assert len(gc.get_referrers(payload)) == holders - 2


def test_other_record_types_are_refused() -> None:
    native = native_module()
    fake = type("confluent_kafka.cimpl.Message", (), {})  # a Python class of that name
    for item in ([1], Fact("X", {"l": [1]}), fake()):
        tracked = gc.is_tracked(item)
        with pytest.raises(TypeError, match=r"confluent_kafka\.cimpl\.Message records only"):
            native.untrack_records([item], type(item))
        assert gc.is_tracked(item) is tracked
    with pytest.raises(TypeError, match=r"not confluent_kafka\.cimpl\.Message \(a class defined"):
        native.untrack_records([], fake)


def test_the_adapter_untracks_with_the_native_helper_only() -> None:
    assert (_driver.untrack_records is not None) is envelope.NATIVE
    code = "import factbus_kafka._driver as d; print(d.untrack_records is None)"
    env = {**os.environ, "FACTBUS_NATIVE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True, text=True
    )
    assert done.stdout.split() == ["True"]
    if envelope.NATIVE:
        records = _records(3)
        assert _driver.untrack_records(records) == 3
        assert not any(gc.is_tracked(r) for r in records)


def test_decode_each_hands_its_per_envelope_lists_over_untracked_natively() -> None:
    """The native decode's list per envelope holds only (untracked) facts and is
    never added to, so it is not tracked either; the Python paths' lists are."""
    bodies = [encode([Fact("U", {"i": i})]) for i in range(4)]
    bodies.append(b"not json")
    decoded, errors = decode_each(bodies)
    assert [len(facts) for facts in decoded] == [1, 1, 1, 1, 0] and list(errors) == [4]
    assert [gc.is_tracked(facts) for facts in decoded[:4]] == [not envelope.NATIVE] * 4
    gc.collect()
    assert [facts[0].fields["i"] for facts in decoded[:4]] == [0, 1, 2, 3]
