"""The AMQP transport's own properties marshalling writes exactly pamqp's bytes.

:class:`factbus_amqp.transport.MessageProperties` marshals the properties
``publish`` sets (text headers, delivery mode, message id) in one pass; the
broker must receive the same content header as pamqp's generic marshal would
write, and what it does not handle must go to pamqp unchanged (same bytes, same
errors).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp.header import ContentHeader

from factbus_amqp.transport import MessageProperties, _properties

HASH = "q3cSfTFQGpxGu0x0yyiqcaD7rK1iKG4sWj5fFczPUS4RWTgT6wHV3LQj6x8ZfJLGq0cfxE1Y3XQx2rDr4pFyHA=="

CASES: list[dict[str, Any]] = [
    {"message_id": HASH, "delivery_mode": 2, "headers": None},
    {
        "message_id": HASH,
        "delivery_mode": 2,
        "headers": {"x-factbus-producer": "node-1", "x-factbus-published-at": "1764490000.1"},
    },
    # names sorted, non-ASCII text, an empty value, a long value (4-byte length)
    {
        "message_id": "é-id",
        "delivery_mode": 1,
        "headers": {"z": "last", "a": "", "ü-name": "wert ✓", "traceparent": "0" * 70_000},
    },
    {"message_id": "m", "delivery_mode": None, "headers": {"k": "v"}},
    {"message_id": None, "delivery_mode": 2, "headers": {"k": "v"}},
    {"message_id": "", "delivery_mode": 2, "headers": {}},
    {"message_id": "x" * 255, "delivery_mode": 2, "headers": {"n" * 128: "v"}},
    # left to pamqp: a name over 128 bytes (truncated), values that are not text,
    # another property set
    {"message_id": "m", "delivery_mode": 2, "headers": {"n" * 129: "v"}},
    {"message_id": "m", "delivery_mode": 2, "headers": {"count": 3, "flag": True}},
    {
        "message_id": "m",
        "delivery_mode": 2,
        "headers": {"k": "v"},
        "timestamp": datetime(2026, 11, 30, tzinfo=UTC),
        "content_type": "application/json",
    },
]


@pytest.mark.parametrize("fields", CASES, ids=range(len(CASES)))
def test_same_bytes_as_pamqp(fields: dict[str, Any]) -> None:
    ours = MessageProperties(**fields)
    theirs = spec.Basic.Properties(**fields)
    assert ours.marshal() == theirs.marshal()
    header = ContentHeader(properties=ours, body_size=347).marshal()
    assert header == ContentHeader(properties=theirs, body_size=347).marshal()
    # and the broker's side reads back what was set
    decoded = ContentHeader()
    decoded.unmarshal(header)
    for name in ("message_id", "delivery_mode", "headers"):
        expected = fields.get(name)
        if name == "headers" and expected is not None:
            expected = {k[:128]: v for k, v in expected.items()}
        if name == "message_id" and expected == "":
            expected = None
        assert getattr(decoded.properties, name) == expected


def test_publish_properties_are_persistent_with_the_message_id() -> None:
    properties = _properties(HASH, {"x-factbus-producer": "node-1"})
    assert isinstance(properties, MessageProperties)
    assert properties.marshal() == (
        spec.Basic.Properties(
            message_id=HASH, delivery_mode=2, headers={"x-factbus-producer": "node-1"}
        ).marshal()
    )


def test_a_message_id_too_long_fails_as_in_pamqp() -> None:
    fields = {"message_id": "x" * 256, "delivery_mode": 2, "headers": None}
    with pytest.raises(TypeError, match="maximum length") as theirs:
        spec.Basic.Properties(**fields).marshal()
    with pytest.raises(TypeError, match="maximum length") as ours:
        MessageProperties(**fields).marshal()
    assert str(ours.value) == str(theirs.value)
