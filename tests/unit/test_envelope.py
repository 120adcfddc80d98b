"""The envelope codec: round trips, topological order, and one error class per rejection."""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from factbus import (
    CodecLimits,
    Fact,
    HashMismatch,
    InvalidValue,
    MalformedEnvelope,
    OversizedEnvelope,
    PredecessorCycle,
    TooDeep,
    UnknownVersion,
    decode,
    encode,
    envelope,
    topological,
)
from factbus.envelope import encode_one
from factbus.errors import EnvelopeError
from factbus.testing.scenario import random_dag


def chain(n: int) -> list[Fact]:
    facts: list[Fact] = []
    for i in range(n):
        facts.append(Fact("C", {"i": i}, {"prior": facts[-1]} if facts else {}))
    return facts


def test_round_trip_keeps_every_fact_and_hash() -> None:
    facts = random_dag(200, seed=3)
    assert [f.ref for f in decode(encode(facts))] == [f.ref for f in facts]


def test_an_envelope_of_one_fact_is_the_same_either_way() -> None:
    for fact in random_dag(20, seed=4, shape="chains"):
        body = encode_one(fact)
        assert body == encode([fact]) == b'{"v":1,"facts":[' + fact.wire_bytes() + b"]}"
        assert orjson.loads(body) == {"v": 1, "facts": [fact.to_wire()]}
        assert [f.ref for f in decode(body)] == [fact.ref]


def test_rich_values_round_trip() -> None:
    fact = Fact("R", {"f": 1.25, "u": "été 😀", "n": None, "l": [True, {"k": [1, 2.5e-9]}]})
    [back] = decode(encode([fact]))
    assert back.hash == fact.hash and back.fields["l"][1]["k"] == (1, 2.5e-9)


def test_topological_puts_predecessors_first_and_dedups() -> None:
    a, b, c = chain(3)
    assert topological([c, a, b, c, a]) == [a, b, c]
    long = chain(5000)  # deep chains must not hit the recursion limit
    assert topological(list(reversed(long))) == long


def doc(facts: list[Fact]) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(encode(facts))
    return loaded


def test_tampered_field_is_a_hash_mismatch() -> None:
    d = doc(chain(2))
    d["facts"][1]["fields"]["i"] = 99
    with pytest.raises(HashMismatch, match=r"facts\[1\] \(C\) claims hash"):
        decode(orjson.dumps(d))


@pytest.mark.parametrize(
    ("body", "error", "text"),
    [
        (b"{not json", MalformedEnvelope, "not valid JSON"),
        (b"[]", MalformedEnvelope, "top level must be an object"),
        (b'{"v": 2, "facts": []}', UnknownVersion, "version 2"),
        (b'{"facts": []}', UnknownVersion, "version None"),
        (b'{"v": 1, "facts": []}', MalformedEnvelope, "non-empty list"),
        (b'{"v": 1, "facts": [1]}', MalformedEnvelope, r"facts\[0\] must be an object"),
        (b'{"v": 1, "facts": [{"type": "T", "hash": "x"}]}', MalformedEnvelope, "88-character"),
        (b'{"v": 1, "facts": [{"type": "", "hash": "x"}]}', MalformedEnvelope, "type"),
        (b"[" * 2000 + b"]" * 2000, TooDeep, "nesting"),
    ],
)
def test_malformed_envelopes(body: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        decode(body)


_SOME_HASH = "A" * 86 + "=="


@pytest.mark.parametrize(
    ("predecessors", "text"),
    [
        ({"p": 1}, r"facts\[0\]\.predecessors\.p must be a reference object"),
        ({"p": [{"hash": _SOME_HASH}]}, r"facts\[0\]\.predecessors\.p needs a string type"),
        ({"p": {"type": "U", "hash": "x"}}, r"facts\[0\]\.predecessors\.p\.hash must be 88"),
    ],
)
def test_malformed_predecessor_reference(predecessors: dict[str, Any], text: str) -> None:
    wire = {"type": "T", "hash": _SOME_HASH, "predecessors": predecessors}
    with pytest.raises(MalformedEnvelope, match=text):
        decode(orjson.dumps({"v": 1, "facts": [wire]}))


def test_oversized_envelope() -> None:
    body = encode([Fact("Big", {"pad": "x" * 5000})])
    with pytest.raises(OversizedEnvelope, match="exceeds the limit of 1000"):
        decode(body, CodecLimits(max_bytes=1000))


def test_too_deep_value() -> None:
    value: Any = 1
    for _ in range(10):
        value = [value]
    body = encode([Fact("Deep", {"v": value})])
    with pytest.raises(TooDeep, match="deeper than the limit of 5"):
        decode(body, CodecLimits(max_depth=5))


def test_invalid_values_that_json_can_carry() -> None:
    fact = Fact("T", {"n": 1})
    d = doc([fact])
    d["facts"][0]["fields"]["n"] = 2**60
    with pytest.raises(InvalidValue, match="safe range"):
        decode(orjson.dumps(d))


def test_lone_surrogate_is_refused() -> None:
    fact = Fact("T", {"s": "ok"})
    body = encode([fact]).replace(b'"ok"', b'"\\ud800"')
    with pytest.raises((InvalidValue, MalformedEnvelope)):
        decode(body)


def test_cycle_and_misordered_envelopes() -> None:
    a, b = chain(2)
    d = doc([a, b])
    # make a claim b as predecessor: a cycle among claimed identities
    d["facts"][0]["predecessors"] = {"next": {"type": "C", "hash": b.hash}}
    with pytest.raises(PredecessorCycle, match="each other's ancestors"):
        decode(orjson.dumps(d))
    misordered = {"v": 1, "facts": list(reversed(doc([a, b])["facts"]))}
    with pytest.raises(MalformedEnvelope, match="topological order"):
        decode(orjson.dumps(misordered))
    selfish = doc([a])
    selfish["facts"][0]["predecessors"] = {"me": {"type": "C", "hash": a.hash}}
    with pytest.raises(PredecessorCycle, match="names itself"):
        decode(orjson.dumps(selfish))


def test_every_rejection_has_its_own_code() -> None:
    codes = {
        e.code
        for e in (
            MalformedEnvelope,
            UnknownVersion,
            OversizedEnvelope,
            TooDeep,
            InvalidValue,
            HashMismatch,
            PredecessorCycle,
        )
    }
    assert len(codes) == 7


def test_duplicate_keys_are_malformed() -> None:
    fact = Fact("T", {"a": 1})
    body = encode([fact]).replace(b'"fields":{"a":1}', b'"fields":{"a":1,"a":1}')
    with pytest.raises(MalformedEnvelope, match="duplicate JSON key"):
        decode(body)
    spaced = encode([fact]).replace(b'"v":1,', b'"v": 1, ')  # not orjson's bytes, but fine
    assert decode(spaced)[0].ref == fact.ref


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # A key written with a space before its colon, then again (the last wins in orjson).
        (b'"fields":{"a":1}', b'"fields":{"a" :1,"a":1}'),
        (b'"fields":{"a":1}', b'"fields":{"a":1, "a" : 1}'),
        (b'"type":"T",', b'"type" :"T","type":"T",'),
        (b'"v":1,', b'"v" :1,"v":1,'),
        (b'{"hash":"', b'{"type" :"P","hash":"'),
    ],
)
def test_duplicate_keys_are_found_however_they_are_spaced(old: bytes, new: bytes) -> None:
    # The plain decode path counts colons against the keys it parsed; a key
    # hidden from that count (a space before its colon) must not hide a duplicate.
    fact = Fact("T", {"a": 1}, {"p": Fact("P", {})})
    body = encode([fact])
    assert old in body
    with pytest.raises(MalformedEnvelope, match="duplicate JSON key"):
        decode(body.replace(old, new, 1))


def test_received_references_hash_as_the_local_fact_whatever_their_wire_layout() -> None:
    # decode reuses the wire form of the predecessors for the hash only when it
    # is exactly what is hashed; a list out of hash order or a reference with
    # an extra key must still give the hash jinaga.js gives (the sorted refs).
    parents = [Fact("P", {"i": i}) for i in range(4)]
    child = Fact("C", {"x": 1.5, "whole": 2.0}, {"parents": parents, "first": parents[0]})
    wire = child.to_wire()
    wire["predecessors"]["parents"].reverse()
    wire["predecessors"]["first"]["note"] = "not hashed"
    body = orjson.dumps({"v": 1, "facts": [wire]})
    [back] = decode(body)
    assert back.hash == child.hash and back.predecessors == child.predecessors
    assert back.canonical == child.canonical and back.fields == {"x": 1.5, "whole": 2.0}
    wire["predecessors"]["parents"].pop()
    with pytest.raises(HashMismatch):
        decode(orjson.dumps({"v": 1, "facts": [wire]}))


def test_a_received_fact_keeps_no_view_and_no_canonical_bytes_until_asked() -> None:
    from factbus.bench.floor import memory_per_fact

    facts = random_dag(300, seed=5)
    bodies = [encode([f]) for f in facts]
    # Measured as `factbus bench` reports it (decoded, wire bytes computed).
    per_fact = memory_per_fact(bodies)
    # 100 B of payload, mostly independent facts: the bound is 1.2 KB;
    # orjson's 4 KB output buffers kept per fact would show up far above it.
    assert 0 < per_fact < 2000, per_fact
    assert [g.ref for body in bodies for g in decode(body)] == [f.ref for f in facts]


# -- the native helper: which path runs, and decode_each with and without it ------


def _native_expected() -> bool:
    if os.environ.get("FACTBUS_NATIVE", "").strip() == "0":
        return False
    if os.environ.get("FACTBUS_CI"):
        return True  # CI builds it (make .venv/.installed): a broken build fails here
    return importlib.util.find_spec("factbus_native") is not None


def test_the_native_helper_is_in_use_where_it_is_built() -> None:
    assert envelope.NATIVE is _native_expected()


def test_factbus_native_0_forces_the_python_path() -> None:
    code = "import factbus.envelope as e; print(e.NATIVE, e._native is None)"
    env = {**os.environ, "FACTBUS_NATIVE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True, text=True
    )
    assert done.stdout.split() == ["False", "True"]


def _seen(facts: list[Fact]) -> list[Any]:
    return [(f.ref, f.canonical, f.wire_bytes(), dict(f.predecessors)) for f in facts]


def test_decode_each_gives_the_same_facts_and_errors_on_every_path() -> None:
    facts = random_dag(200, seed=9, shape="mixed", payload=30)
    bodies = [encode(topological([f, *facts[max(0, i - 3) : i]])) for i, f in enumerate(facts)]
    bad = doc(chain(2))
    bad["facts"][1]["fields"]["i"] = 99
    bodies[7] = orjson.dumps(bad)  # hash mismatch
    bodies[50] = b"{not json"
    bodies[51] = encode([Fact("T", {"a": 1})]).replace(
        b'"fields":{"a":1}', b'"fields":{"a":1,"a":1}'
    )
    bodies[120] = encode([Fact("W", {"x": 37.0, "y": -0.0})])  # doubted natively, accepted
    limits = CodecLimits()
    got, errors = envelope.decode_each(iter(bodies), limits)
    want: list[list[Fact]] = []
    want_errors: dict[int, str] = {}
    for i, body in enumerate(bodies):
        plain = envelope._decode_plain(body, limits.max_bytes, limits.max_depth)
        try:
            want.append(plain if plain is not None else envelope._decode_full(body, limits))
        except EnvelopeError as error:
            want_errors[i] = f"{type(error).__name__}: {error}"
            want.append([])
    assert [_seen(g) for g in got] == [_seen(w) for w in want]
    assert {i: f"{type(e).__name__}: {e}" for i, e in errors.items()} == want_errors
    assert sorted(want_errors) == [7, 50, 51]


def test_a_natively_decoded_fact_behaves_as_any_received_fact() -> None:
    parent = Fact("P", {"i": 1})
    fact = Fact("N", {"l": [1, 2.5, {"a": [None, "x"]}], "o": {"k": "v"}, "w": 2.0}, {"p": parent})
    [got] = decode(encode([fact]))
    assert got == fact and hash(got) == hash(fact) and got.ref == fact.ref
    assert got.fields["l"] == (1, 2.5, got.fields["l"][2])
    assert dict(got.fields["l"][2]) == {"a": (None, "x")}
    with pytest.raises(TypeError):
        got.fields["o"]["k"] = "w"  # type: ignore[index]
    assert got.canonical == fact.canonical and got.wire_bytes() == fact.wire_bytes()
    assert got.predecessors == {"p": parent.ref} and list(got.predecessor_refs()) == [parent.ref]
    assert got.ancestors_given == () and got.type == "N"
    # Natively decoded facts and references hold no cycle: the collector skips them.
    assert gc.is_tracked(got) is not envelope.NATIVE
    assert gc.is_tracked(got.ref) is not envelope.NATIVE
