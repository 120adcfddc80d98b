"""Fact hashes: the DESIGN.md vectors, JavaScript number formatting, refusals,
and a byte-for-byte cross-check against the real jinaga.js (tests/js)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factbus import (
    CodecLimits,
    Fact,
    FactRef,
    HashMismatch,
    InvalidFact,
    InvalidValue,
    TooDeep,
    decode,
    encode,
    envelope,
    topological,
)
from factbus import fact as fact_module
from factbus.canonical import js_number
from factbus.errors import EnvelopeError
from factbus.testing.scenario import random_dag

JS_DIR = Path(__file__).resolve().parents[1] / "js"

AIRLINE = "uXcsBceLFAkZdRD71Ztvc+QwASayHA0Zg7wC2mc3zl28N1hKTbGBfBA2OnEHAWo+0yYVeUnABMn9MCRH8cRHWg=="
DAY = "cQaErYsizavFrTIGjD1C0g3shMG/uq+hVUXzs/kCzcvev9gPrVDom3pbrszUsmeRelNv8bRdIvOb6AbaYrVC7w=="
FLIGHT = "PyXT7pCvBq7Vw63kEZGgbIVJxqA7jhoO+QbmeM3YC9laayG0gjln58khyOd4D/cmxXzocPaIuwXGWusVJxqEjQ=="


def skylane() -> tuple[Fact, Fact, Fact]:
    airline = Fact("Skylane.Airline", {"identifier": "value"})
    day = Fact("Skylane.Airline.Day", {"date": "2021-07-04T00:00:00.000Z"}, {"airline": airline})
    flight = Fact("Skylane.Flight", {"flightNumber": 4247}, {"airlineDay": day})
    return airline, day, flight


def test_design_vectors() -> None:
    airline, day, flight = skylane()
    assert (airline.hash, day.hash, flight.hash) == (AIRLINE, DAY, FLIGHT)
    assert len(flight.hash) == 88


def test_float_that_is_an_integer_hashes_like_the_integer() -> None:
    _, day, flight = skylane()
    assert Fact("Skylane.Flight", {"flightNumber": 4247.0}, {"airlineDay": day}).hash == flight.hash


def test_predecessor_as_ref_equals_predecessor_as_fact() -> None:
    airline, day, _ = skylane()
    by_ref = Fact(
        "Skylane.Airline.Day", {"date": "2021-07-04T00:00:00.000Z"}, {"airline": airline.ref}
    )
    assert by_ref.hash == day.hash
    assert by_ref.ancestors_given == ()
    assert day.ancestors_given == (airline,)


def test_identity_is_type_and_hash() -> None:
    a = Fact("A", {"x": 1})
    b = Fact("B", {"x": 1})
    assert a.hash == b.hash  # the type is not hashed
    assert a.ref != b.ref and a != b
    assert a.ref == FactRef("A", a.hash) and a == Fact("A", {"x": 1})


def test_field_and_list_order() -> None:
    a = Fact("T", {"a": 1, "b": 2})
    assert a.hash == Fact("T", {"b": 2, "a": 1}).hash
    assert Fact("T", {"l": [1, 2]}).hash != Fact("T", {"l": [2, 1]}).hash


def test_predecessor_lists_are_sorted_and_empty_lists_count() -> None:
    x, y = Fact("P", {"i": 1}), Fact("P", {"i": 2})
    assert Fact("T", {}, {"p": [x, y]}).hash == Fact("T", {}, {"p": [y, x]}).hash
    assert Fact("T", {}, {"p": []}).hash != Fact("T", {}).hash
    assert Fact("T", {}, {"p": [x]}).hash != Fact("T", {}, {"p": x}).hash


def test_canonical_form_is_jinaga_shaped() -> None:
    airline, day, _ = skylane()
    assert day.canonical == (
        b'{"fields":{"date":"2021-07-04T00:00:00.000Z"},"predecessors":{"airline":'
        b'{"hash":"' + AIRLINE.encode() + b'","type":"Skylane.Airline"}}}'
    )
    assert airline.canonical == b'{"fields":{"identifier":"value"},"predecessors":{}}'


def test_keys_are_escaped_like_json_stringify() -> None:
    fact = Fact("T", {'a"b': 1, "c\\d": 'x"y', "e\nf\x01": None})
    assert fact.canonical == (
        b'{"fields":{"a\\"b":1,"c\\\\d":"x\\"y","e\\nf\\u0001":null},"predecessors":{}}'
    )
    # Both writers (fast orjson, and Python for astral keys) escape the same way.
    slow = Fact("T", {'a"b': 1, "\U0001f600": None})
    assert slow.canonical == b'{"fields":{"a\\"b":1,"\xf0\x9f\x98\x80":null},"predecessors":{}}'


def test_null_is_a_value() -> None:
    assert Fact("T", {"x": None}).canonical == b'{"fields":{"x":null},"predecessors":{}}'
    assert Fact("T", {"x": None}).hash != Fact("T", {"x": {}}).hash
    assert Fact("T", {"x": None}).hash != Fact("T", {}).hash


def test_facts_are_immutable() -> None:
    fact = Fact("T", {"nested": {"l": [1, 2]}})
    with pytest.raises(TypeError):
        fact.fields["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        fact.fields["nested"]["y"] = 2
    assert fact.fields["nested"]["l"] == (1, 2)
    with pytest.raises(AttributeError):
        fact.type = "U"  # type: ignore[misc]


def test_caller_mutation_does_not_change_the_fact() -> None:
    fields: dict[str, Any] = {"l": [1]}
    fact = Fact("T", fields)
    before = fact.hash
    fields["l"].append(2)
    assert fact.fields["l"] == (1,)
    assert Fact("T", {"l": [1]}).hash == before


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (4247.0, "4247"),
        (0.1, "0.1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (1.5e300, "1.5e+300"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.2345e-7, "1.2345e-7"),
        (0.000123, "0.000123"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2**53 + 0.0, "9007199254740992"),
        (0.30000000000000004, "0.30000000000000004"),
        (100.5, "100.5"),
        (-2.5e-10, "-2.5e-10"),
    ],
)
def test_js_number(value: float, text: str) -> None:
    assert js_number(value) == text


@pytest.mark.parametrize(
    ("fields", "where", "why"),
    [
        ({"x": math.nan}, "fields.x", "not a finite number"),
        ({"x": [1, math.inf]}, "fields.x[1]", "not a finite number"),
        ({"x": -math.inf}, "fields.x", "not a finite number"),
        ({"s": "a\ud800b"}, "fields.s", "lone surrogate"),
        ({"n": {1: "a"}}, "fields.n", "not a string"),
        ({"big": 2**53}, "fields.big", "safe range"),
        ({"small": -(2**53)}, "fields.small", "safe range"),
        ({"b": b"bytes"}, "fields.b", "type bytes"),
        (
            {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            "fields.deep",
            "deeper",
        ),
    ],
)
def test_refusals_name_field_and_reason(fields: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(InvalidFact) as caught:
        Fact("T", fields)
    assert caught.value.field.startswith(where)
    assert why in caught.value.reason


def test_empty_type_and_bad_predecessors_are_refused() -> None:
    with pytest.raises(InvalidFact, match="type"):
        Fact("", {})
    with pytest.raises(InvalidFact, match=r"predecessors\.p"):
        Fact("T", {}, {"p": "not a fact"})
    with pytest.raises(InvalidFact, match="88-character"):
        Fact("T", {}, {"p": FactRef("T", "short")})


def test_safe_integer_bounds_are_accepted() -> None:
    Fact("T", {"max": 2**53 - 1, "min": -(2**53 - 1)})


# -- cross-check against jinaga.js ------------------------------------------------

# Keys with quotes, backslashes and control characters are escaped by
# JSON.stringify (jinaga.js 6.11); they are drawn often on purpose.
_keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from('"\\\x00\x1f\n\t\x7f'),
    max_size=8,
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_fields = st.dictionaries(_keys, _values, max_size=6)


@st.composite
def _facts(draw: st.DrawFn) -> Fact:
    parents = [Fact("P", {"i": i}) for i in range(draw(st.integers(0, 3)))]
    preds: dict[str, Any] = {}
    if parents:
        preds["one"] = parents[0]
        preds["many"] = draw(st.permutations(parents))
    return Fact(draw(st.sampled_from(["T", "Ünï.Côdé", "A.B"])), draw(_fields), preds)


def _node_hashes(facts: list[Fact]) -> list[str]:
    if not (JS_DIR / "node_modules" / "jinaga").exists() or shutil.which("node") is None:
        message = "jinaga.js is not installed: run `make test` (npm install in tests/js)"
        if os.environ.get("FACTBUS_CI"):
            pytest.fail(message)
        pytest.skip(message)
    wire = [_jinaga_record(fact) for fact in facts]
    done = subprocess.run(
        ["node", str(JS_DIR / "hash.js")],
        input=json.dumps(wire, ensure_ascii=False).encode(),
        capture_output=True,
        check=True,
        cwd=JS_DIR,
    )
    return done.stdout.decode().split()


def _jinaga_record(fact: Fact) -> dict[str, Any]:
    wire = fact.to_wire()
    return {
        "type": fact.type,
        "fields": _plain(wire["fields"]),
        "predecessors": wire["predecessors"],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_facts(), min_size=1, max_size=40))
def test_hashes_match_jinaga_js(facts: list[Fact]) -> None:
    assert _node_hashes(facts) == [fact.hash for fact in facts]


def test_float_edge_cases_match_jinaga_js() -> None:
    floats = [0.1, 1e21, 1e-7, 123e-20, 5e-324, 2.5, -0.0, 1e16, 1.7976931348623157e308]
    floats += [
        struct.unpack("<d", struct.pack("<Q", bits))[0] for bits in range(1, 2**64, 2**58 + 12345)
    ]
    floats = [f for f in floats if math.isfinite(f)]
    facts = [Fact("F", {"x": f, "l": [f, -f]}) for f in floats]
    assert _node_hashes(facts) == [fact.hash for fact in facts]


def test_escaped_keys_and_nulls_match_jinaga_js() -> None:
    nasty = ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", 'a"\\b', "\t\r\b\f"]
    facts = [Fact("K", {key: None, "n": [None, {key: None}]}) for key in nasty]
    facts.append(Fact("K", dict.fromkeys(nasty, 1) | {"\U0001f600": None}))
    facts.append(Fact("K", {"x": None}, {'ro"le\\': facts[0], "\n": [facts[1], facts[2]]}))
    assert _node_hashes(facts) == [fact.hash for fact in facts]


def test_astral_keys_sort_like_javascript() -> None:
    # U+1F600 is D83D DE00 in UTF-16: JavaScript sorts it before U+FFFD; code points sort after.
    fact = Fact("T", {"\U0001f600": 1, "\ufffd": 2, "a": 3})
    assert fact.canonical.decode().index("\ufffd") > fact.canonical.decode().index("\U0001f600")
    assert _node_hashes([fact]) == [fact.hash]


# -- the receive path's plain decode (envelope._decode_plain) ----------------------
# decode() verifies most envelopes with one orjson.dumps per fact and no walk of
# the values (the full path walks and freezes them). Both must agree on every
# fact, and the plain path must never accept what the full path refuses.


def _same_fact(got: Fact, want: Fact) -> None:
    assert got.ref == want.ref
    assert _plain(got.fields) == _plain(want.fields)
    assert got.predecessors == want.predecessors
    assert got.canonical == want.canonical
    assert got.wire_bytes() == want.wire_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_facts(), min_size=1, max_size=6))
def test_plain_decode_agrees_with_the_full_path_and_jinaga_js(facts: list[Fact]) -> None:
    body = encode(topological(facts))
    plain = envelope._decode_plain(body, len(body), 32)
    full = envelope._decode_full(body, CodecLimits())
    if plain is not None:
        assert len(plain) == len(full)
        for got, want in zip(plain, full, strict=True):
            _same_fact(got, want)
    decoded = decode(encode(topological(facts)))
    assert _node_hashes(decoded) == [fact.hash for fact in decoded]


def test_plain_decode_takes_typical_facts() -> None:
    facts = random_dag(300, seed=5, shape="mixed", payload=20)
    facts = [
        f for f in facts if not any(v == int(v) for v in f.fields.values() if type(v) is float)
    ]
    for fact in facts:
        body = encode([fact])
        plain = envelope._decode_plain(body, len(body), 32)
        assert plain is not None, fact
        _same_fact(plain[0], fact)
    nested = Fact("N", {"l": [1, 2.5, {"a": [None, "x"]}], "o": {"k": "v"}})
    [got] = decode(encode([nested]))
    assert got.fields["l"] == (1, 2.5, got.fields["l"][2])
    assert dict(got.fields["l"][2]) == {"a": (None, "x")}
    with pytest.raises(TypeError):
        got.fields["o"]["k"] = "w"  # type: ignore[index]
    _same_fact(got, nested)


def _nest(levels: int) -> Any:
    """``levels`` lists, one inside the other, around a 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _careless_body(fields: Any, fact_type: str = "T") -> bytes:
    """An envelope whose hash a sender computed over orjson's own output (sorted
    keys by code point, Python/orjson number layout): not what jinaga.js hashes."""
    canonical = orjson.dumps({"fields": fields, "predecessors": {}}, option=orjson.OPT_SORT_KEYS)
    claimed = base64.b64encode(hashlib.sha512(canonical).digest()).decode()
    fact = {"type": fact_type, "hash": claimed, "fields": fields, "predecessors": {}}
    return orjson.dumps({"v": 1, "facts": [fact]})


# Fields whose canonical form orjson lays out otherwise than JavaScript
# (integral and tiny floats, keys beyond the BMP in UTF-16 order).
ORJSON_LAYOUT_FIELDS: list[dict[str, Any]] = [
    {"x": 37.0},
    {"x": -0.0},
    {"x": 4.8e-6},
    {"x": 1e16},
    {"x": 18446744073709551615.0},
    {"l": [1, 37.0]},
    {"o": {"deep": [4.8e-6]}},
    {"\U0001f600": 1, "\ufffd": 2},
    {"o": {"\U0001f600": 1, "\ufffd": 2}},
]


@pytest.mark.parametrize("fields", ORJSON_LAYOUT_FIELDS)
def test_a_hash_over_orjsons_layout_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(HashMismatch):
        decode(_careless_body(fields))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"x": 2**53}, InvalidValue),
        ({"x": -(2**53)}, InvalidValue),
        ({"l": [2**60]}, InvalidValue),
        ({"x": 2**64 - 1}, InvalidValue),
        ({"d": _nest(32)}, TooDeep),
    ],
)
def test_values_orjson_writes_but_facts_refuse_are_refused(
    fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        decode(_careless_body(fields))


def test_depth_limit_is_exact_on_the_plain_path() -> None:
    ok = Fact("D", {"d": _nest(31)})
    [got] = decode(encode([ok]))
    assert got.ref == ok.ref
    with pytest.raises(TooDeep):
        decode(encode([ok]), CodecLimits(max_depth=31))
    flat = encode([Fact("F", {"a": 1})])
    assert decode(flat, CodecLimits(max_depth=1))[0].fields == {"a": 1}
    with pytest.raises(TooDeep):
        decode(flat, CodecLimits(max_depth=0))


# -- the native helper (factbus_native, built from native/ by `make`) ----------------
# One native call per body must accept only what the full path accepts, with the
# same facts, hashes, canonical bytes and wire bytes; anything else is a doubt
# (None) and the Python paths decide exactly as without it. These tests use the
# extension directly, so they also run under FACTBUS_NATIVE=0 (which only keeps
# decode() from using it); where it is not built they skip, and fail in CI.


def native_module() -> Any:
    """``factbus_native``, set up as :mod:`factbus.envelope` sets it up."""
    try:
        module = importlib.import_module("factbus_native")
    except ImportError:
        message = "factbus_native is not built (cargo + `make .venv/.installed` build it)"
        if os.environ.get("FACTBUS_CI"):
            pytest.fail(message)
        pytest.skip(message)
    module.setup(Fact, FactRef, fact_module._TYPES, fact_module._NO_PREDECESSORS)
    return module


_LIMITS = CodecLimits()


def pure_decode(body: bytes, limits: CodecLimits = _LIMITS) -> list[Fact]:
    """decode() without the native helper: the plain path, else the full path."""
    facts = envelope._decode_plain(body, limits.max_bytes, limits.max_depth)
    return facts if facts is not None else envelope._decode_full(body, limits)


def native_decode(body: bytes, limits: CodecLimits = _LIMITS) -> list[Fact]:
    """decode() with the native helper first, whatever FACTBUS_NATIVE says."""
    facts = native_module().decode(body, limits.max_bytes, limits.max_depth)
    return facts if facts is not None else pure_decode(body, limits)


def outcome(decoder: Any, body: bytes, limits: CodecLimits = _LIMITS) -> Any:
    """Everything a caller can see of decoding ``body``: the facts (identity,
    fields, predecessors, canonical and wire bytes), or the error's class and text."""
    try:
        facts = decoder(body, limits)
    except EnvelopeError as error:
        return type(error), str(error)
    return [
        (f.ref, _plain(f.fields), dict(f.predecessors), f.canonical, f.wire_bytes()) for f in facts
    ]


def _native_may_doubt(value: Any) -> bool:
    """Values the native helper leaves to the full path although it accepts them:
    negative zero and integral floats beyond 2^53 (serde_json reads ``-0`` and
    integers beyond 64 bits as such floats, orjson otherwise)."""
    if type(value) is float:
        return (value == 0 and math.copysign(1, value) < 0) or (
            value.is_integer() and abs(value) >= 2**53
        )
    if isinstance(value, tuple | list):
        return any(map(_native_may_doubt, value))
    if hasattr(value, "values"):
        return any(map(_native_may_doubt, value.values()))
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_facts(), min_size=1, max_size=6))
def test_native_decode_agrees_with_the_full_path_and_jinaga_js(facts: list[Fact]) -> None:
    native = native_module()
    body = encode(topological(facts))
    full = envelope._decode_full(body, CodecLimits())
    got = native.decode(body, len(body), 32)
    if any(_native_may_doubt(f.fields) for f in full):
        assert got is None
    else:
        # Floats of every layout, astral and escaped keys, nested values: all taken.
        assert got is not None, body
        assert len(got) == len(full)
        for mine, want in zip(got, full, strict=True):
            _same_fact(mine, want)
        assert _node_hashes(got) == [fact.hash for fact in got]
    forms = native.canonical_forms(body, 32)
    if forms is not None:
        assert forms == [(f.canonical, f.hash) for f in full]


def test_native_decode_takes_typical_facts_with_the_flags_the_full_path_sets() -> None:
    native = native_module()
    facts = random_dag(300, seed=5, shape="mixed", payload=20)
    facts += [
        Fact("W", {"whole": 4247.0, "tiny": 4.8e-6, "e": 1.5e-7, "zero": 0.0}),
        Fact("K", {"\U0001f600": 1, "\ufffd": [2, {"\U0001f601": 3.5}]}, {"r\U0001f600": facts[0]}),
    ]
    bodies = [encode([fact]) for fact in facts]
    decoded, doubts = native.decode_bodies(bodies, 1 << 20, 32)
    assert doubts == [] and all(got is not None for got in decoded)
    for got, fact in zip(decoded, facts, strict=True):
        full = envelope._decode_full(encode([fact]), CodecLimits())[0]
        assert got[0]._writer & 3 == full._writer & 3  # the canonical writer's flags
        _same_fact(got[0], fact)
        _same_fact(got[0], full)
    assert _node_hashes([got[0] for got in decoded[-2:]]) == [f.hash for f in facts[-2:]]


@pytest.mark.parametrize(
    "fields",
    [
        *ORJSON_LAYOUT_FIELDS,
        {"x": 2**53},
        {"l": [2**60]},
        {"d": _nest(32)},
    ],
)
def test_native_doubts_what_the_full_path_refuses(fields: dict[str, Any]) -> None:
    body = _careless_body(fields)
    assert native_module().decode(body, len(body), 32) is None
    assert outcome(native_decode, body) == outcome(pure_decode, body)
    assert outcome(pure_decode, body)[0] in (HashMismatch, InvalidValue, TooDeep)


def _hashed(fields_text: bytes, preds_text: bytes = b"{}") -> bytes:
    """An envelope of one fact of type ``T`` written by hand, with the hash the
    full path computes for it where it can compute one (else any hash): so that
    what is at stake is the text itself, not the hash."""
    claimed = AIRLINE
    try:
        fields, wire_preds = orjson.loads(fields_text), orjson.loads(preds_text)
        preds = {
            role: [FactRef(r["type"], r["hash"]) for r in v]
            if isinstance(v, list)
            else FactRef(v["type"], v["hash"])
            for role, v in wire_preds.items()
        }
        claimed = Fact("T", fields, preds).hash
    except (orjson.JSONDecodeError, InvalidFact, TypeError, KeyError, AttributeError):
        pass
    return (
        b'{"v":1,"facts":[{"type":"T","hash":"'
        + claimed.encode()
        + b'","fields":'
        + fields_text
        + b',"predecessors":'
        + preds_text
        + b"}]}"
    )


_REF = b'{"type":"P","hash":"' + AIRLINE.encode() + b'"}'
_REF2 = b'{"type":"P","hash":"' + DAY.encode() + b'"}'

# Bodies written by hand: each either decodes the same with and without the
# native helper, or is refused with the same error and message.
_ODD_FIELDS = [
    b'{"a":1}',
    b'{"a":-0}',
    b'{"a":-0.0}',
    b'{"a":0}',
    b'{"a":1.0}',
    b'{"a":1E2}',
    b'{"a":1e-400}',
    b'{"a":1e400}',
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":9007199254740991}',
    b'{"a":-9007199254740991}',
    b'{"a":9007199254740992}',
    b'{"a":-9007199254740992}',
    b'{"a":18446744073709551616}',
    b'{"a":123456789012345678901234567890}',
    b'{"a":0.1000000000000000055511151231257827}',
    b'{"a":01}',
    b'{"a":1.}',
    b'{"a":.5}',
    b'{"a":+1}',
    b'{"a":"\\ud800"}',
    b'{"a":"\\udc00x"}',
    b'{"a":"\\ud83d\\ude00"}',
    b'{"a":"\xff"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"tab\there"}',
    b'{"a":"\\u0000\\u001f\\"\\\\\\/"}',
    b'{"a\\u0000":1,"a":2}',
    b'{"a":1,"a":1}',
    b'{"a":1,"b":{"c":1,"c":2}}',
    b'{"a" :1,"a":1}',
    b'{"\\u0061":1,"a":1}',
    b'{"a":[1,2,]}',
    b'{"a":1,}',
    b'{"a":1 /* c */}',
    b'{ "a" : [ 1 , { "b" : null } ] }',
    b'{"\xf0\x9f\x98\x80":1,"\xef\xbf\xbd":2}',
    b'{"a":true,"b":false,"c":null,"d":[],"e":{}}',
    b"[1]",
    b'"text"',
    b"null",
]

_ODD_PREDS = [
    b'{"p":' + _REF + b"}",
    b'{"p":[' + _REF + b"," + _REF2 + b"]}",
    b'{"p":[' + _REF2 + b"," + _REF + b"]}",
    b'{"p":[' + _REF + b"," + _REF + b"]}",
    b'{"p":[]}',
    b'{"":' + _REF + b"}",
    b'{"p":' + _REF + b',"p":' + _REF + b"}",
    b'{"p":{"type":"P","hash":"' + AIRLINE.encode() + b'","x":1}}',
    b'{"p":{"type":"P","hash":"' + AIRLINE.encode() + b'","type":"P"}}',
    b'{"p":{"type":"","hash":"' + AIRLINE.encode() + b'"}}',
    b'{"p":{"type":"P","hash":"short"}}',
    b'{"p":{"type":"P","hash":"' + "é".encode() * 44 + b'"}}',
    b'{"p":{"type":"P"}}',
    b'{"p":1}',
    b'{"p":[1]}',
    b"[]",
]


def _odd_bodies() -> list[bytes]:
    bodies = [_hashed(fields) for fields in _ODD_FIELDS]
    bodies += [_hashed(b"{}", preds) for preds in _ODD_PREDS]
    good = encode([Fact("T", {"a": 1})])
    bodies += [
        good.replace(b'"hash":"', b'"hash":"x', 1),  # bad hash
        good.replace(b"1}", b"2}", 1),  # tampered field
        b"\xef\xbb\xbf" + good,  # BOM
        good + b" ",
        b" \n" + good,
        good + b"x",
        good.replace(b'"v":1', b'"v":1.0'),
        good.replace(b'"v":1', b'"v":true'),
        good.replace(b'"v":1', b'"v":2'),
        good.replace(b'"v":1,', b'"v":1,"v":1,'),
        good.replace(b'"v":1,', b'"v":1,"x":0,'),
        good.replace(b'"v":1,', b""),
        b'{"v":1,"facts":[]}',
        b'{"v":1,"facts":{}}',
        good.replace(b'"type":"T",', b""),
        good.replace(b'"type":"T"', b'"type":""'),
        good.replace(b'"type":"T"', b'"type":1'),
        good.replace(b',"predecessors":{}', b""),
        good.replace(b'"fields":{"a":1},', b""),
        good.replace(b'"predecessors":{}', b'"predecessors":{},"extra":1'),
        good.replace(b'"type":"T",', b'"type":"T","type":"T",'),
        good.replace(b'"fields":{"a":1}', b'"fields":null'),
        good.replace(b'"fields":{"a":1}', b'"fields":[]'),
    ]
    a, b = Fact("C", {"i": 0}), Fact("C", {"i": 1}, {"prior": Fact("C", {"i": 0})})
    pair = orjson.loads(encode([a, b]))
    bodies.append(encode([a, b]))
    bodies.append(encode([a, a, b]))
    bodies.append(orjson.dumps({"v": 1, "facts": pair["facts"][::-1]}))  # misordered
    selfish = orjson.loads(encode([a]))
    selfish["facts"][0]["predecessors"] = {"me": {"type": "C", "hash": a.hash}}
    bodies.append(orjson.dumps(selfish))
    cycle = orjson.loads(encode([a, b]))
    cycle["facts"][0]["predecessors"] = {"next": {"type": "C", "hash": b.hash}}
    bodies.append(orjson.dumps(cycle))
    bodies.append(encode([Fact("D", {"d": _nest(31)})]))
    bodies.append(b"[" * 2000 + b"]" * 2000)
    return bodies


@pytest.mark.parametrize("body", _odd_bodies())
def test_native_and_pure_paths_agree_on_odd_bodies(body: bytes) -> None:
    assert outcome(native_decode, body) == outcome(pure_decode, body)
    for limits in (CodecLimits(max_depth=1), CodecLimits(max_depth=31), CodecLimits(max_bytes=60)):
        assert outcome(native_decode, body, limits) == outcome(pure_decode, body, limits)


@pytest.mark.parametrize(
    "body",
    [
        encode([Fact("T", {"a": 1})]).replace(b'"hash":"', b'"hash":"x', 1),
        _hashed(b'{"a":NaN}'),
        _hashed(b'{"a":"\\ud800"}'),
        _hashed(b'{"a":1,"a":1}'),
        _hashed(b'{"a":9007199254740992}'),
        _careless_body({"d": _nest(32)}),
        encode([Fact("T", {"a": 1})]).replace(b'"v":1,', b""),
    ],
)
def test_native_refuses_nothing_itself(body: bytes) -> None:
    # Bad hash, NaN, a lone surrogate, a duplicate key, an unsafe integer, depth,
    # bad structure: a doubt, so the full path names the problem.
    assert native_module().decode(body, len(body), 32) is None
    refused = outcome(native_decode, body)
    assert refused == outcome(pure_decode, body)
    assert issubclass(refused[0], EnvelopeError)


_MUTATIONS = st.sampled_from(
    [
        *(b'"', b"\\", b"{", b"}", b"[", b"]", b":", b",", b"0", b"9", b"e", b".", b"-", b" "),
        *(b"\x00", b"\xff", b"\xf0", b"n", b"t", b"\\u", b"\\ud800", b""),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), _MUTATIONS, st.integers(0, 3))
def test_native_and_pure_paths_agree_on_mutated_bodies(at: int, text: bytes, cut: int) -> None:
    fact = Fact(
        "M",
        {"n": 12, "f": 2.5, "w": 3.0, "s": 'x"y', "l": [1, {"k": None}], "u": "é😀"},
        {"p": Fact("P", {}), "q": [Fact("Q", {"i": 1}), Fact("Q", {"i": 2})]},
    )
    body = encode([fact])
    at %= len(body)
    mutated = body[:at] + text + body[at + cut :]
    assert outcome(native_decode, mutated) == outcome(pure_decode, mutated)


def test_native_setup_refuses_classes_it_cannot_fill() -> None:
    native = native_module()

    class OtherSlots:
        __slots__ = ("_fields", "_ref")

    with pytest.raises(TypeError, match="__slots__"):
        native.setup(OtherSlots, FactRef, fact_module._TYPES, fact_module._NO_PREDECESSORS)
    with pytest.raises(TypeError, match="tuple subclass"):
        native.setup(Fact, OtherSlots, fact_module._TYPES, fact_module._NO_PREDECESSORS)
    native_module()  # set up again as factbus.envelope set it up
    body = encode([Fact("T", {"a": 1})])
    assert native.decode(body, len(body), 32)[0].fields == {"a": 1}
