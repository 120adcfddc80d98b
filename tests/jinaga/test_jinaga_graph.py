"""The graph codec (application/x-jinaga-graph-v1) and the JSON save format:
round trips, byte-level agreement with the real jinaga.js serializer and
deserializer (tests/js/graph.js), precise errors, and a fuzz test showing that
bad graphs only ever raise JinagaFormatError.

FACTBUS_FUZZ_EXAMPLES (default 1500) sets the number of fuzz examples per
fuzz test; the counts are printed (run with -s to see them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from graph_fuzz import GRAPH_TOKENS, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factbus import Fact
from factbus.jinaga.graph import (
    JinagaFormatError,
    fact_record,
    parse_graph,
    parse_save_json,
    write_graph,
)
from factbus.testing.brokers import unavailable

JS_DIR = Path(__file__).resolve().parents[1] / "js"
FUZZ_EXAMPLES = int(os.environ.get("FACTBUS_FUZZ_EXAMPLES", "1500"))


def chain() -> list[Fact]:
    root = Fact("Shop.Store", {"identifier": "north"})
    order = Fact("Shop.Order", {"number": 7, "note": None}, {"store": root})
    line = Fact("Shop.Line", {"sku": 'q"x', "qty": 2.5}, {"order": order, "stores": [root]})
    return [root, order, line]


def node(mode: str, data: bytes) -> bytes:
    if not (JS_DIR / "node_modules" / "jinaga").exists() or shutil.which("node") is None:
        unavailable("jinaga.js is not installed: run `make tests/js/node_modules/.installed`")
    done = subprocess.run(
        ["node", str(JS_DIR / "graph.js"), mode],
        input=data,
        capture_output=True,
        check=True,
        cwd=JS_DIR,
    )
    return done.stdout


def js_records(facts: list[Fact]) -> bytes:
    return json.dumps(
        [{k: v for k, v in fact_record(f).items() if k != "hash"} for f in facts],
        ensure_ascii=False,
    ).encode()


def test_round_trip_and_order() -> None:
    facts = chain()
    text = write_graph(reversed(facts))
    assert parse_graph(text) == facts  # written predecessors first whatever the input order
    assert [f.hash for f in parse_graph(text)] == [f.hash for f in facts]
    assert text.startswith(b'"Shop.Store"\n{}\n{"identifier":"north"}\n\n')


def test_repeated_fact_is_read_once_and_blank_lines_are_skipped() -> None:
    root = chain()[0]
    text = write_graph([root]) + b"\n\n" + write_graph([root])
    assert parse_graph(text) == [root]
    crlf = write_graph([root]).replace(b"\n", b"\r\n")
    assert parse_graph(crlf) == [root]


def test_write_refuses_a_missing_predecessor() -> None:
    _, order, _ = chain()
    with pytest.raises(ValueError, match="not in the graph"):
        write_graph([order])


def test_signatures_and_public_keys_are_read_and_dropped() -> None:
    root = chain()[0]
    text = (
        b'PK0\n"-----BEGIN PUBLIC KEY-----abc"\n\n'
        + write_graph([root])[:-1]
        + b'PK0\n"c2lnbmF0dXJl"\n\n'
    )
    assert parse_graph(text) == [root]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"Shop\n{}\n{}\n\n", "line 1: a fact type (JSON string) is not valid JSON"),
        (b'""\n{}\n{}\n\n', "line 1: a fact type must be a non-empty JSON string"),
        (b'"T"\n\n', "line 2: expected the predecessor indexes"),
        (b'"T"\n[]\n{}\n\n', "line 2: the predecessor indexes must be a JSON object"),
        (b'"T"\n{"p": 0}\n{}\n\n', "line 2: predecessor 'p' index 0 does not name an earlier fact"),
        (b'"T"\n{}\n{"a":1}\n\n"U"\n{"p":[0,1]}\n{}\n\n', "line 6: predecessor 'p' index 1"),
        (b'"T"\n{}\n{"p":"0"}\n\n"U"\n{"p":"0"}\n{}\n\n', "index '0'"),
        (b'"T"\n{}\n[1]\n\n', "line 3: the fields must be a JSON object"),
        (b'"T"\n{}\n{"n":NaN}\n\n', "line 3: the fields (JSON object) is not valid JSON"),
        (b'"T"\n{}\n{"n":1e999}\n\n', "line 3: the fields (JSON object) is not valid JSON"),
        (b'"T"\n{}\n' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"\n\n", "line 3: T: fields.a"),
        (b'"T"\n{}\n{}\nPK0\n"sig"\n\n', "line 4: public key PK0 has not been declared"),
        (b'"T"\n{}\n{}\nnot a key\n\n', "line 4: expected a public key reference"),
        (b'"T"\n{}\n{}\nPK0', "line 4: public key PK0 has not been declared"),
        (b'PK1\n"k"\n\n', "line 1: public key PK1 is out of order (expected PK0)"),
        (b'PK0\n"k"\nextra\n', "line 3: expected a blank line after the public key"),
        (b"PKx\n", "line 1: expected a public key reference PKn"),
        (b"PK0\n5\n\n", "line 2: a public key must be a JSON string"),
        (b'PK0\n"k"\n\n"T"\n{}\n{}\nPK0\n7\n\n', "line 8: a signature must be a JSON string"),
    ],
)
def test_bad_graphs_name_line_and_problem(body: bytes, message: str) -> None:
    with pytest.raises(JinagaFormatError) as caught:
        parse_graph(body)
    assert message in str(caught.value)


def test_unsafe_integers_are_read_as_javascript_reads_them() -> None:
    # JSON.stringify(2 ** 53) is "9007199254740992": a double in JavaScript.
    (fact,) = parse_graph(b'"T"\n{}\n{"n":9007199254740992,"l":[-9007199254740993]}\n\n')
    assert fact == Fact("T", {"n": 2.0**53, "l": [-(2.0**53)]})


def test_limits() -> None:
    root = chain()[0]
    with pytest.raises(JinagaFormatError, match="exceeds the limit of 10"):
        parse_graph(write_graph([root]), max_bytes=10)
    two = write_graph([root, Fact("T", {"i": 2})])
    with pytest.raises(JinagaFormatError, match="more than 1 facts"):
        parse_graph(two, max_facts=1)


def test_save_json_recomputes_hashes() -> None:
    facts = chain()
    body = json.dumps({"facts": [fact_record(f) for f in reversed(facts)]}).encode()
    assert parse_save_json(body) == facts  # topologically ordered
    tampered = [fact_record(f) for f in facts]
    tampered[1]["fields"]["number"] = 8
    with pytest.raises(JinagaFormatError, match=r"facts\[1\] \(Shop.Order\) claims hash"):
        parse_save_json(json.dumps({"facts": tampered}).encode())
    for bad, message in [
        (b"[]", '"facts" list'),
        (b"{", "not valid JSON"),
        (b'{"facts": [1]}', r"facts[0] must be an object"),
        (b'{"facts": [{"type": "T", "hash": "h", "fields": []}]}', "fields must be an object"),
        (b'{"facts": [{"type": "T", "hash": "h", "predecessors": {"p": 1}}]}', "reference object"),
        (b'{"facts": [{"type": "T", "hash": "h", "predecessors": {"p": {"type": "T"}}}]}', "hash"),
    ]:
        with pytest.raises(JinagaFormatError) as caught:
            parse_save_json(bad)
        assert message in str(caught.value)


# -- cross-check with the real jinaga.js ---------------------------------------

_keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from('"\\\n\x00'), max_size=6
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
)
_fields = st.dictionaries(
    _keys,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    ),
    max_size=4,
)


@st.composite
def _graphs(draw: st.DrawFn) -> list[Fact]:
    facts: list[Fact] = []
    for _ in range(draw(st.integers(1, 6))):
        preds: dict[str, Any] = {}
        if facts:
            preds["one"] = draw(st.sampled_from(facts))
            preds["many"] = draw(st.lists(st.sampled_from(facts), max_size=3, unique=True))
        facts.append(Fact(draw(st.sampled_from(["T", "A.B"])), draw(_fields), preds))
    return list(dict.fromkeys(facts))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_graphs())
def test_jinaga_js_reads_our_graphs_and_we_read_its_graphs(facts: list[Fact]) -> None:
    ours = write_graph(facts)
    theirs = node("write", js_records(facts))
    assert parse_graph(theirs) == facts  # same facts, same hashes as jinaga.js computed
    read_back = json.loads(node("read", ours))
    assert [(r["type"], r["hash"]) for r in read_back] == [(f.type, f.hash) for f in facts]


# -- fuzz ------------------------------------------------------------------------

_SEED = write_graph(chain()) + b'PK0\n"k"\n\n"T"\n{"a":0}\n{"x":[1,{"y":null}]}\nPK0\n"s"\n\n'
_counts = {"valid": 0, "refused": 0}


_tokens = st.sampled_from(GRAPH_TOKENS)
_edits = st.lists(
    st.tuples(
        st.integers(0, 2), st.integers(0, 10_000), _tokens | st.binary(min_size=1, max_size=4)
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(_edits)
def test_fuzz_mutated_graphs_never_crash(edits: list[tuple[int, int, bytes]]) -> None:
    body = mutate(_SEED, edits)
    try:
        facts = parse_graph(body)
    except JinagaFormatError:
        _counts["refused"] += 1
        return
    _counts["valid"] += 1
    assert parse_graph(write_graph(facts)) == facts  # what is accepted is well formed


@settings(max_examples=FUZZ_EXAMPLES // 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")))
def test_fuzz_random_bytes_never_crash(body: bytes) -> None:
    try:
        parse_graph(body)
        parse_save_json(body)
    except JinagaFormatError:
        pass


def test_fuzz_counts_reported() -> None:
    # Runs after the fuzz tests in file order; prints what they tried.
    print(f"\ngraph fuzz: {_counts['valid']} mutated graphs accepted, {_counts['refused']} refused")
    assert _counts["valid"] + _counts["refused"] > 0
