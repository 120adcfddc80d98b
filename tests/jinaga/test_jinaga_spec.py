"""The specification subset: parsing the exact text the real jinaga.js writes
(tests/js/spec.js), splitting it into the same feeds jinaga.js's own feed
builder makes, refusing what is outside the subset with a 400-worthy message,
and feed ids that carry their feed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factbus.fact import FactRef
from factbus.jinaga.feeds import (
    archive_tag,
    build_feeds,
    feed_id,
    parse_bookmark,
    parse_feed_id,
    write_bookmark,
)
from factbus.jinaga.spec import (
    ExistentialCondition,
    Label,
    PathCondition,
    Role,
    SpecificationError,
    SpecificationSyntaxError,
    UnsupportedSpecification,
    describe,
    describe_specification,
    parse_request,
)
from factbus.testing.brokers import unavailable

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SUPPORTED = ["successors", "notExists", "exists", "twoSteps", "projection", "predecessor"]


@cache
def jinaga_specs() -> dict[str, Any]:
    if not (JS_DIR / "node_modules" / "jinaga").exists() or shutil.which("node") is None:
        unavailable("jinaga.js is not installed: run `make tests/js/node_modules/.installed`")
    done = subprocess.run(
        ["node", str(JS_DIR / "spec.js")], capture_output=True, check=True, cwd=JS_DIR
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_specifications_split_into_jinaga_feeds(name: str) -> None:
    spec = jinaga_specs()[name]
    request = parse_request(spec["request"])
    assert [describe_specification(f.specification) for f in build_feeds(request)] == spec["feeds"]
    assert describe(request).startswith(spec["request"].split("\n")[0])


def test_parsed_structure() -> None:
    request = parse_request(jinaga_specs()["projection"]["request"])
    assert request.start == FactRef(**jinaga_specs()["__start"])
    spec = request.specification
    assert spec.given == Label("p1", "Shop.Store")
    (order,) = spec.matches
    assert order.unknown == Label("u1", "Shop.Order")
    path, condition = order.conditions
    assert path == PathCondition((Role("store", "Shop.Store"),), "p1", ())
    assert isinstance(condition, ExistentialCondition) and not condition.exists
    assert condition.matches[0].unknown == Label("u2", "Shop.Order.Cancelled")
    (lines,) = spec.children
    assert lines.name == "lines" and lines.matches[0].unknown.type == "Shop.Line"
    predecessor = parse_request(jinaga_specs()["predecessor"]["request"]).specification
    assert predecessor.matches[0].paths == (
        PathCondition((), "p1", (Role("order", "Shop.Order"),)),
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nested", "not supported: factbus serves existential conditions one level deep"),
        ("twoGivens", "specifications with 2 givens (p1, p2) are not supported"),
    ],
)
def test_outside_the_subset_is_refused_saying_so(name: str, message: str) -> None:
    with pytest.raises(UnsupportedSpecification) as caught:
        parse_request(jinaga_specs()[name]["request"])
    assert message in caught.value.message


HASH = "A" * 86 + "=="


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("", SpecificationSyntaxError, "expected '('"),
        ("(s: T) {}", SpecificationSyntaxError, "the given 's' has no declaration"),
        (f"let s: U = #{HASH}\n(s: T) {{}}", SpecificationSyntaxError, "declared as U"),
        ("let s: T = #abc\n(s: T) {}", SpecificationSyntaxError, "88 characters"),
        ('let s: T = {"a": 1}\n(s: T) {}', UnsupportedSpecification, "only fact references"),
        (
            f"let s: T = #{HASH}\n(s: T [ E {{ x: X [ x->s: T = s ] }} ]) {{}}",
            UnsupportedSpecification,
            "conditions on the given 's'",
        ),
        (
            f"let s: T = #{HASH}\n(s: T) {{ x: X [ x->r: T = y ] }}",
            SpecificationSyntaxError,
            "the label 'y' has not been defined",
        ),
        (
            f"let s: T = #{HASH}\n(s: T) {{ x: X [ y->r: T = s ] }}",
            SpecificationSyntaxError,
            "must appear on the left side",
        ),
        (f"let s: T = #{HASH}\n(s: T) {{ x: X [ ] }}", SpecificationSyntaxError, "no conditions"),
        (
            f"let s: T = #{HASH}\n(s: T) {{ s: X [ s->r: T = s ] }}",
            SpecificationSyntaxError,
            "already used",
        ),
        (
            f"let s: T = #{HASH}\n(s: T) {{ x: X [ !E {{ y: Y [ y->x: X = x ] }} ] }}",
            UnsupportedSpecification,
            "has no path condition",
        ),
        (
            f"let s: T = #{HASH}\n(s: T) {{ x: X [ x->r: T = s !E {{ y: Y [ y->r: T = s ] }} ] }}",
            SpecificationSyntaxError,
            "must be based on 'x'",
        ),
        (
            f"let s: T = #{HASH}\n(s: T) {{ x: X [ x->r: T = s ] }} trailing",
            SpecificationSyntaxError,
            "expected the end of the specification",
        ),
        ("x" * 70_000, SpecificationSyntaxError, "exceeds the limit"),
    ],
)
def test_bad_text_is_refused_precisely(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_request(text)
    assert message in str(caught.value)


def test_feed_ids_carry_their_feed_and_refuse_others() -> None:
    request = parse_request(jinaga_specs()["projection"]["request"])
    for feed in build_feeds(request):
        ident = feed_id(feed)
        assert ident.replace("-", "").replace("_", "").isalnum()  # URL-safe, no padding
        assert parse_feed_id(ident) == feed
    for bad in ["", "!!!", "eJzLSM3JyVcozy_KSQEAGgQEXQ", "A" * 20_000]:
        with pytest.raises(SpecificationSyntaxError):
            parse_feed_id(bad)


def test_bookmarks() -> None:
    tag, other = archive_tag("sidecar-a"), archive_tag("sidecar-b")
    assert tag != other and tag == archive_tag("sidecar-a")
    assert parse_bookmark("", tag) == 0
    assert parse_bookmark(write_bookmark(42, tag), tag) == 42
    assert parse_bookmark(write_bookmark(42, other), tag) == 0  # another replica's: start over
    for bad in ["42", "-1.x", "x", "1" * 30 + "." + tag, "٣." + tag]:
        with pytest.raises(SpecificationSyntaxError):
            parse_bookmark(bad, tag)


def test_deep_child_specifications_are_refused_not_crashing() -> None:
    child = "c{i} = {{ u{i}: T [ u{i}->r: T = p1 ] }} => {{ "
    text = f"let p1: T = #{HASH}\n(p1: T) {{ u: T [ u->r: T = p1 ] }} => {{ "
    text += "".join(child.format(i=i) for i in range(1000)) + "} " * 1001  # < 64 KiB
    with pytest.raises(UnsupportedSpecification, match="nested deeper than 16"):
        parse_request(text)


# -- fuzz: POST /feeds bodies -------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("FACTBUS_FUZZ_EXAMPLES", "1500"))
_spec_counts = {"parsed": 0, "refused": 0}
_spec_tokens = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        "!E",
        "E",
        "->",
        "=",
        "=>",
        ":",
        ",",
        "(",
        ")",
        "#",
        "let ",
        "\n",
        "u1",
        "p1",
        "Shop.Order",
        "x->r: T = p1",
        "@",
        ".",
        " ",
        "\x00",
        "é",
        HASH,
    ]
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from([*SUPPORTED, "nested", "twoGivens"]),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5000), _spec_tokens), max_size=5),
)
def test_fuzz_specification_text_only_raises_specification_errors(
    name: str, edits: list[tuple[int, int, str]]
) -> None:
    text = jinaga_specs()[name]["request"]
    for kind, pos, token in edits:
        pos %= len(text) + 1
        if kind == 0:
            text = text[:pos] + token + text[pos:]
        elif kind == 1:
            text = text[:pos] + text[pos + len(token) :]
        else:
            text = text[:pos] + token + text[pos + len(token) :]
    try:
        request = parse_request(text)
    except SpecificationError:
        _spec_counts["refused"] += 1
        return
    _spec_counts["parsed"] += 1
    for feed in build_feeds(request):  # what parses can be split and carried in an id
        assert parse_feed_id(feed_id(feed)) == feed


def test_spec_fuzz_counts_reported() -> None:
    print(f"\nspec fuzz: {_spec_counts['parsed']} parsed, {_spec_counts['refused']} refused")
    assert _spec_counts["parsed"] + _spec_counts["refused"] > 0
