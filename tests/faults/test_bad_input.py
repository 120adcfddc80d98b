"""Fuzz every transport with bad envelopes mixed with good ones: the consumer never
crashes, every good fact is handled once, every bad envelope is dead-lettered with
the reason that fits it.

Hypothesis draws batches of envelope *recipes*; the test turns each into bytes
(good facts get a unique number so that none is a duplicate of another), sends
the batch with ``Transport.publish`` and waits until the consumer bus has
handled the good facts and rejected the rest. At the end it reads the topic's
dead letters (``read_dead_letters``) and matches them, body by body, against
what was sent: same count, and each reason code among those the recipe allows.

Bad kinds: random bytes; truncated envelopes; JSON that is not an object;
envelopes of the wrong shape (a missing, empty or mistyped member, a bad
predecessor reference); tampered facts (a field, a predecessor or the claimed
hash changed); oversized envelopes (above the consumer's 16 KiB limit); values
nested too deep (above the fact limit of 32 and above the JSON parser's limit);
``NaN``/``Infinity``/``1e400`` as raw JSON text; lone surrogates as ``\\ud800``
escapes (in values and keys); integers outside JavaScript's safe range;
predecessor cycles; facts out of topological order; unknown versions.
Duplicate keys (a member named twice, the last copy valid) are checked by
``test_duplicate_keys_are_dead_lettered`` on the memory transport: the codec
decides, whatever the broker.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from fault_harness import report, scaled, transport_url
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from factbus import Bus, Fact, FactRef
from factbus.envelope import encode
from factbus.testing.brokers import unique
from factbus.transport import Message, Transport, open_transport

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

LIMIT = 16 * 1024
"""The consumer's max_envelope_bytes in these tests."""
PER_EXAMPLE = 60
BAD_TARGET = scaled(10_000, 600)
"""Bad envelopes sent through each transport, at least."""
EXAMPLES = 1 + BAD_TARGET * 6 // 5 // PER_EXAMPLE
"""Batches per transport: about four bad envelopes in five (more if that fell short)."""

MALFORMED = frozenset({"malformed"})
NOT_FINITE = frozenset({"malformed", "invalid-value"})
"""orjson refuses NaN, Infinity and lone surrogates while parsing (``malformed``);
a decoder that parsed them would have to refuse them as ``invalid-value``."""


# -- recipes ---------------------------------------------------------------------

safe_text = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | safe_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
    max_leaves=8,
)


@dataclass(frozen=True)
class Recipe:
    kind: str
    value: Any = None
    choice: int = 0
    size: int = 0
    blob: bytes = b""


BAD_KINDS = (
    "garbage",
    "truncated",
    "not-object",
    "wrong-shape",
    "tampered",
    "oversized",
    "too-deep",
    "too-deep-parser",
    "not-finite",
    "lone-surrogate",
    "unsafe-int",
    "cycle",
    "misordered",
    "unknown-version",
)


@st.composite
def recipes(draw: st.DrawFn, kinds: tuple[str, ...]) -> Recipe:
    # About one good envelope for every four bad ones.
    kind = draw(st.sampled_from(("good",) * max(1, len(kinds) // 4) + kinds))
    return Recipe(
        kind,
        value=draw(json_values) if kind in ("good", "tampered", "not-object") else None,
        choice=draw(st.integers(0, 1000)),
        size=draw(st.integers(1, 20_000)),
        blob=draw(st.binary(max_size=64)) if kind == "garbage" else b"",
    )


@dataclass
class Made:
    body: bytes
    codes: frozenset[str] = frozenset()
    """Reason codes allowed for a bad envelope; empty for a good one."""
    good: list[Fact] = field(default_factory=list)


def fake_hash(seed: str) -> str:
    return base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()


def good_fact(n: int, run: str, value: Any, **preds: Fact) -> Fact:
    return Fact("Fuzz.Good", {"n": n, "run": run, "v": value}, preds)


def wire(fact: Fact) -> dict[str, Any]:
    return orjson.loads(encode([fact]))["facts"][0]  # type: ignore[no-any-return]


def envelope(*facts: dict[str, Any], v: Any = 1) -> bytes:
    return orjson.dumps({"v": v, "facts": list(facts)})


def make(recipe: Recipe, n: int, run: str) -> Made:
    """Bytes for one recipe; ``n`` makes its facts unique."""
    kind, choice = recipe.kind, recipe.choice
    fact = good_fact(n, run, recipe.value)
    if kind == "good":
        if choice % 4 == 0:  # a fact with its predecessor in the same envelope
            child = Fact("Fuzz.Good", {"n": -n, "run": run}, {"parent": fact})
            return Made(encode([fact, child]), good=[fact, child])
        return Made(encode([fact]), good=[fact])
    maker = _MAKERS[kind]
    return maker(recipe, fact, n, run)


def _garbage(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    blob = recipe.blob
    if blob.lstrip().startswith(b"{"):
        blob = b"!" + blob
    return Made(blob, MALFORMED | {"too-deep"})


def _truncated(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    body = encode([fact])
    return Made(body[: 1 + recipe.choice % (len(body) - 1)], MALFORMED)


def _not_object(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    value = recipe.value if not isinstance(recipe.value, dict) else [recipe.value]
    return Made(orjson.dumps(value), MALFORMED)


_SHAPES: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
    lambda w: {"v": 1},
    lambda w: {"v": 1, "facts": []},
    lambda w: {"v": 1, "facts": w},
    lambda w: {"v": 1, "facts": "facts"},
    lambda w: {"v": 1, "facts": [[w]]},
    lambda w: {"v": 1, "facts": [{**w, "type": ""}]},
    lambda w: {"v": 1, "facts": [{**w, "type": 7}]},
    lambda w: {"v": 1, "facts": [{k: x for k, x in w.items() if k != "type"}]},
    lambda w: {"v": 1, "facts": [{**w, "hash": w["hash"][:-1]}]},
    lambda w: {"v": 1, "facts": [{**w, "hash": None}]},
    lambda w: {"v": 1, "facts": [{**w, "fields": [1, 2]}]},
    lambda w: {"v": 1, "facts": [{**w, "fields": "f"}]},
    lambda w: {"v": 1, "facts": [{**w, "predecessors": []}]},
    lambda w: {"v": 1, "facts": [{**w, "predecessors": {"p": "T#abc"}}]},
    lambda w: {"v": 1, "facts": [{**w, "predecessors": {"p": {"type": "T"}}}]},
    lambda w: {"v": 1, "facts": [{**w, "predecessors": {"p": [{"type": "", "hash": "h"}]}}]},
]


def _wrong_shape(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    shape = _SHAPES[recipe.choice % len(_SHAPES)]
    return Made(orjson.dumps(shape(wire(fact))), MALFORMED)


def _tampered(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    w = wire(fact)
    how = recipe.choice % 4
    if how == 0:
        w["fields"] = {**w["fields"], "n": n + 1}
    elif how == 1:
        w["hash"] = fake_hash(f"{run}-{n}")
    elif how == 2:
        w["fields"] = {**w["fields"], "extra": recipe.value}
    else:
        parent = good_fact(-n, run, None)
        child = wire(Fact("Fuzz.Good", {"n": n, "run": run}, {"parent": parent}))
        child["predecessors"]["parent"]["hash"] = fake_hash(f"other-{run}-{n}")
        return Made(envelope(wire(parent), child), frozenset({"hash-mismatch"}))
    return Made(envelope(w), frozenset({"hash-mismatch"}))


def _oversized(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    big = good_fact(n, run, "x" * (LIMIT + recipe.size))
    return Made(encode([big]), frozenset({"oversized"}))


def _nested(depth: int, as_list: bool) -> bytes:
    if as_list:
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"d":' * depth + b"1" + b"}" * depth


def _too_deep(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    depth = 40 + recipe.choice % 200
    value = _nested(depth, recipe.choice % 2 == 0)
    body = _with_value(fact, value)
    return Made(body, frozenset({"too-deep"}))


def _too_deep_parser(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    depth = 1030 + recipe.size % 1000  # above orjson's limit (1024), below 16 KiB
    return Made(_with_value(fact, _nested(depth, recipe.choice % 2 == 0)), frozenset({"too-deep"}))


def _with_value(fact: Fact, raw: bytes) -> bytes:
    """The envelope of ``fact`` with field ``v`` replaced by raw JSON text."""
    w = wire(fact)
    w["fields"] = {**w["fields"], "v": "@@V@@"}
    return envelope(w).replace(b'"@@V@@"', raw, 1)


_NOT_FINITE = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"[NaN]"]
_SURROGATES = [rb'"\ud800"', rb'"\udfff"', rb'"a\udc00b"', rb'"\ud800\ud800"', rb'["\udbff"]']


def _not_finite(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    return Made(_with_value(fact, _NOT_FINITE[recipe.choice % len(_NOT_FINITE)]), NOT_FINITE)


def _lone_surrogate(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    raw = _SURROGATES[recipe.choice % len(_SURROGATES)]
    if recipe.choice % 3 == 0:  # in a key instead of a value
        body = envelope(wire(fact)).replace(b'"run"', raw, 1)
    else:
        body = _with_value(fact, raw)
    return Made(body, NOT_FINITE)


def _unsafe_int(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    value = 2**53 + recipe.size * 7919 + recipe.choice
    sign = b"-" if recipe.choice % 2 else b""
    return Made(_with_value(fact, sign + str(value).encode()), frozenset({"invalid-value"}))


def _cycle(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    k = 1 + recipe.choice % 4
    hashes = [fake_hash(f"cycle-{run}-{n}-{i}") for i in range(k)]
    facts = [
        {
            "type": "Fuzz.Cycle",
            "hash": hashes[i],
            "fields": {"i": i},
            "predecessors": {"next": {"type": "Fuzz.Cycle", "hash": hashes[(i + 1) % k]}},
        }
        for i in range(k)
    ]
    return Made(envelope(*facts), frozenset({"cycle"}))


def _misordered(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    child = Fact("Fuzz.Good", {"n": -n, "run": run}, {"parent": fact})
    return Made(envelope(wire(child), wire(fact)), MALFORMED)


_VERSIONS: list[Any] = [0, 2, 99, -1, "1", 1.5, True, None, [1], {"v": 1}, "missing"]


def _unknown_version(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    version = _VERSIONS[recipe.choice % len(_VERSIONS)]
    if version == "missing":
        return Made(orjson.dumps({"facts": [wire(fact)]}), frozenset({"unknown-version"}))
    return Made(envelope(wire(fact), v=version), frozenset({"unknown-version"}))


def _duplicate_key(recipe: Recipe, fact: Fact, n: int, run: str) -> Made:
    """An envelope whose JSON names a member twice; the last copy is the valid one, so
    a last-wins parser accepts it while a first-wins parser reads other content."""
    w = wire(fact)
    body = envelope(w)
    how = recipe.choice % 5
    if how == 0:
        body = body.replace(b'{"v":1,', b'{"v":2,"v":1,', 1)
    elif how == 1:
        body = body.replace(b'"facts":[', b'"facts":[{"type":"Evil"}],"facts":[', 1)
    elif how == 2:
        body = body.replace(b'"hash":', b'"hash":"' + fake_hash(run).encode() + b'","hash":', 1)
    elif how == 3:
        body = body.replace(b'"fields":{', b'"fields":{"n":' + str(n + 1).encode() + b",", 1)
    else:
        body = body.replace(b'"fields":{', b'"fields":{"run":"other",', 1)
    return Made(body, MALFORMED)


_MAKERS: dict[str, Callable[[Recipe, Fact, int, str], Made]] = {
    "duplicate-key": _duplicate_key,
    "garbage": _garbage,
    "truncated": _truncated,
    "not-object": _not_object,
    "wrong-shape": _wrong_shape,
    "tampered": _tampered,
    "oversized": _oversized,
    "too-deep": _too_deep,
    "too-deep-parser": _too_deep_parser,
    "not-finite": _not_finite,
    "lone-surrogate": _lone_surrogate,
    "unsafe-int": _unsafe_int,
    "cycle": _cycle,
    "misordered": _misordered,
    "unknown-version": _unknown_version,
}


# -- the run ---------------------------------------------------------------------


@dataclass
class Corpus:
    """What Hypothesis drew, made into bytes: sent as is through every transport."""

    batches: list[list[Made]] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    bad: list[Made] = field(default_factory=list)
    good: set[FactRef] = field(default_factory=set)


def draw_corpus(kinds: tuple[str, ...], examples: int, target: int = 0) -> Corpus:
    """Draw ``examples`` batches (more until ``target`` bad envelopes)."""
    run = uuid.uuid4().hex[:8]
    counter = itertools.count(1)
    corpus = Corpus()

    def collect(batch: list[Recipe]) -> None:
        made = [make(recipe, next(counter), run) for recipe in batch]
        for recipe, m in zip(batch, made, strict=True):
            if m.codes:
                corpus.bad.append(m)
                corpus.by_kind[recipe.kind] += 1
            corpus.good.update(f.ref for f in m.good)
        corpus.batches.append(made)

    batches = st.lists(recipes(kinds), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE)
    while True:
        # One Hypothesis run draws many batches; another one only if the batches
        # drawn held fewer bad envelopes than the target.
        settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(batches)(collect))()
        missing = target - len(corpus.bad)
        if missing <= 0:
            return corpus
        examples = 2 + missing // (PER_EXAMPLE // 2)


@dataclass
class Node:
    """One consumer bus on one transport, and what it did."""

    name: str
    url: str
    topic: str = field(default_factory=lambda: unique("fuzz"))
    handled: Counter[FactRef] = field(default_factory=Counter)
    letters: list[Any] = field(default_factory=list)
    seconds: float = 0.0


async def send_and_wait(
    bus: Bus, sender: Transport, node: Node, made: list[Made], timeout: float = 120
) -> None:
    """Publish one batch; return when the consumer settled it (the checks come later)."""
    rejected_before, received_before = bus.stats.rejected, bus.stats.messages
    bad = sum(1 for m in made if m.codes)
    messages = [Message(m.body, uuid.uuid4().hex, None, {"x-fuzz": "1"}) for m in made]
    await sender.publish(node.topic, messages)
    wanted = {f.ref for m in made for f in m.good}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bus.stats.rejected - rejected_before >= bad and all(r in node.handled for r in wanted):
            return
        if bus.stats.messages - received_before >= len(messages):
            # Everything arrived but not as expected: let the step finish, check later.
            await bus.drain(timeout)
            return
        await asyncio.sleep(0.01)
    raise AssertionError(
        f"{node.name}: after {timeout}s only {bus.stats.messages - received_before} of "
        f"{len(messages)} messages arrived (stats {bus.stats.as_dict()})"
    )


async def feed(node: Node, corpus: Corpus) -> None:
    """Send the whole corpus through one transport, batch by batch."""
    started = time.monotonic()
    bus = Bus(
        node.url,
        "memory://",
        topic=node.topic,
        node=unique("fuzz-node"),
        max_envelope_bytes=LIMIT,
        retry_attempts=1,
    )
    bus.handler("Fuzz.Good")(lambda fact: node.handled.update([fact.ref]))
    sender = open_transport(node.url)
    async with bus:
        await sender.connect()
        try:
            for made in corpus.batches:
                await send_and_wait(bus, sender, node, made)
            node.letters = await bus.transport.read_dead_letters(node.topic, len(corpus.bad) + 1000)
            await bus.transport.purge_dead_letters(node.topic)
        finally:
            await sender.aclose()
    node.seconds = time.monotonic() - started


def check(node: Node, corpus: Corpus, test: str) -> list[str]:
    """What went wrong on one transport (empty: nothing)."""
    reasons: dict[bytes, list[str]] = defaultdict(list)
    for letter in node.letters:
        reasons[letter.body].append(letter.reason)
    wrong: list[str] = []
    for made in corpus.bad:
        got = reasons.get(made.body)
        if not got:
            wrong.append(f"not dead-lettered: {made.body[:120]!r}")
            continue
        reason = got.pop()
        if reason.split(":", 1)[0] not in made.codes:
            wrong.append(
                f"reason {reason[:100]!r} not in {sorted(made.codes)} for {made.body[:80]!r}"
            )
    extra = sum(len(v) for v in reasons.values())
    duplicated = sum(n - 1 for n in node.handled.values() if n > 1)
    lost = len(corpus.good - set(node.handled))
    unexpected = len(set(node.handled) - corpus.good)
    report(
        test,
        transport=node.name,
        bad_envelopes=len(corpus.bad),
        by_kind=dict(corpus.by_kind),
        good_facts=len(corpus.good),
        dead_letters=len(node.letters),
        wrong=len(wrong),
        unexpected_letters=extra,
        lost=lost,
        duplicated=duplicated,
        unexpected_handled=unexpected,
        seconds=round(node.seconds, 1),
    )
    problems = [f"{node.name}: {w}" for w in wrong[:5]]
    if len(wrong) > 5:
        problems.append(f"{node.name}: ... {len(wrong)} bad envelopes mishandled in all")
    if extra:
        problems.append(f"{node.name}: {extra} dead letters that were not sent as bad")
    if lost or duplicated or unexpected:
        problems.append(
            f"{node.name}: good facts lost {lost}, duplicated {duplicated}, "
            f"handled though not good {unexpected}"
        )
    return problems


def fuzz(names: list[str], corpus: Corpus, test: str) -> list[str]:
    """Send ``corpus`` through every transport at once; return every problem."""
    nodes = [Node(name, transport_url(name)) for name in names]

    async def everywhere() -> None:
        await asyncio.gather(*(feed(node, corpus) for node in nodes))

    asyncio.run(everywhere())
    return [problem for node in nodes for problem in check(node, corpus, test)]


def test_fuzzed_envelopes_are_dead_lettered() -> None:
    """One corpus of at least BAD_TARGET bad envelopes through each transport,
    concurrently (each spends most of its time waiting for its broker)."""
    corpus = draw_corpus(BAD_KINDS, EXAMPLES, BAD_TARGET)
    assert len(corpus.bad) >= BAD_TARGET
    assert set(corpus.by_kind) == set(BAD_KINDS)
    problems = fuzz(["memory", "amqp", "kafka", "redis"], corpus, "fuzz-bad-envelopes")
    assert not problems, "\n".join(problems)


def test_duplicate_keys_are_dead_lettered() -> None:
    corpus = draw_corpus(("duplicate-key",), scaled(20, 5), scaled(500, 100))
    problems = fuzz(["memory"], corpus, "fuzz-duplicate-keys")
    assert not problems, "\n".join(problems)
