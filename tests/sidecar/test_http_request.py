"""What ``POST /facts`` and outbox rows accept, and how each refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from factbus.fact import Fact, FactRef
from factbus.sidecar.api import RequestError, decode_json, parse_fact, parse_facts_request

CUSTOMER = Fact("Shop.Customer", {"email": "ada@example.com"})


def test_nested_and_referenced_predecessors_give_the_library_hash() -> None:
    order = Fact("Shop.Order", {"number": 7}, {"customer": CUSTOMER})
    status = Fact("Shop.Order.Status", {"value": "paid"}, {"order": order, "prior": []})
    body = {
        "facts": [
            {
                "type": "Shop.Order.Status",
                "fields": {"value": "paid"},
                "predecessors": {
                    "order": {
                        "type": "Shop.Order",
                        "fields": {"number": 7},
                        "predecessors": {
                            "customer": {"type": CUSTOMER.type, "hash": CUSTOMER.hash}
                        },
                    },
                    "prior": [],
                },
            }
        ]
    }
    parsed = parse_facts_request(body)
    assert [f.hash for f in parsed.facts] == [status.hash]
    assert parsed.facts[0].ancestors_given[0].hash == order.hash
    assert parsed.references == {CUSTOMER.ref: "facts[0].predecessors.order.predecessors.customer"}


def test_a_reference_to_a_fact_of_the_same_request_is_not_external() -> None:
    body = {
        "facts": [
            {"type": CUSTOMER.type, "fields": {"email": "ada@example.com"}},
            {
                "type": "Shop.Order",
                "fields": {"number": 1},
                "predecessors": {"customer": {"type": CUSTOMER.type, "hash": CUSTOMER.hash}},
            },
        ]
    }
    assert parse_facts_request(body).references == {}


def test_a_claimed_hash_must_match() -> None:
    good = {"type": CUSTOMER.type, "hash": CUSTOMER.hash, "fields": {"email": "ada@example.com"}}
    assert parse_fact(good).facts == [CUSTOMER]
    with pytest.raises(RequestError) as caught:
        parse_fact({**good, "fields": {"email": "eve@example.com"}})
    assert (caught.value.code, caught.value.field) == ("hash-mismatch", "fact.hash")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ([], "invalid-request", None),
        ({"facts": []}, "invalid-request", "facts"),
        ({"facts": [], "extra": 1}, "invalid-request", "extra"),
        ({"facts": [1]}, "invalid-fact", "facts[0]"),
        ({"facts": [{"fields": {}}]}, "invalid-fact", "facts[0].type"),
        ({"facts": [{"type": "T", "field": {}}]}, "invalid-fact", "facts[0].field"),
        ({"facts": [{"type": "T", "fields": []}]}, "invalid-fact", "facts[0].fields"),
        ({"facts": [{"type": "T", "fields": {"n": 2**60}}]}, "invalid-value", "facts[0].fields.n"),
        (
            {"facts": [{"type": "T", "fields": {"a": {"b": "\ud800"}}}]},
            "invalid-value",
            "facts[0].fields.a.b",
        ),
        (
            {"facts": [{"type": "T", "predecessors": {"p": "x"}}]},
            "invalid-fact",
            "facts[0].predecessors.p",
        ),
        (
            {"facts": [{"type": "T", "predecessors": {"p": [{"type": "U", "hash": "short"}]}}]},
            "invalid-reference",
            "facts[0].predecessors.p[0].hash",
        ),
    ],
)
def test_refusals_name_the_field(body: Any, code: str, field: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_facts_request(body)
    assert caught.value.status == 400
    assert (caught.value.code, caught.value.field) == (code, field)
    if field:
        assert field in caught.value.message


def test_malformed_json() -> None:
    with pytest.raises(RequestError) as caught:
        decode_json(b'{"facts": [')
    assert caught.value.code == "malformed-json"
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(RequestError) as caught:
        decode_json(b'{"facts": [{"type": "T", "fields": {"n": 1, "n": 2}}]}')
    assert caught.value.code == "malformed-json"
    assert "'n'" in caught.value.message


def test_reference_shape_is_exactly_type_and_hash() -> None:
    ref = {"type": CUSTOMER.type, "hash": CUSTOMER.hash}
    parsed = parse_fact({"type": "Shop.Order", "predecessors": {"customer": ref}})
    assert parsed.references == {
        FactRef(CUSTOMER.type, CUSTOMER.hash): "fact.predecessors.customer"
    }
