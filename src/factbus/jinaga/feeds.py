"""Feeds: a specification split as jinaga.js expects, evaluated over the sidecar's archive.

A jinaga.js client sends a specification to ``POST /feeds`` and gets back
feed ids; it then reads each feed (``GET /feeds/{id}?b=bookmark``) for
references to the facts in each result tuple, loads the ones it lacks and
evaluates the specification itself, locally. So a feed must deliver every
fact the client needs to get the right answer, including the facts that make
a ``!E`` condition false. :func:`build_feeds` splits a specification the way
jinaga.js's own feed builder does:

- an ``E`` condition's matches are joined into the feed (its facts come too);
- a ``!E`` condition gives an extra feed, the tuple joined with the
  condition's matches (the *negating* facts), and the condition stays on the
  main feed;
- each child specification in the projection gives a feed that extends the
  final one.

A feed id is the feed's own specification text, compressed and base64url
encoded (:func:`feed_id` / :func:`parse_feed_id`): the server keeps no
per-feed state, so ids survive restarts and work on every replica.

Bookmarks are the archive's cursor (its ``seq``) and a tag naming the
archive (:func:`write_bookmark`), so a bookmark from another replica starts
over instead of skipping facts. A
read with bookmark ``b`` returns the tuples that contain a fact archived
after ``b`` (all tuples for an empty bookmark) and the cursor at the time of
the read; the archive is read before the tuples are evaluated, so a fact
archived meanwhile is returned now or on the next read, never lost.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from factbus.fact import Fact, FactRef
from factbus.jinaga.spec import (
    ChildSpecification,
    ExistentialCondition,
    Match,
    PathCondition,
    Request,
    Specification,
    SpecificationSyntaxError,
    describe,
    parse_request,
)

PAGE: Final = 1000
MAX_FEED_ID_CHARS: Final = 16 * 1024
MAX_FEED_TEXT: Final = 64 * 1024
MAX_SEQ: Final = 2**63 - 1
"""The largest archive cursor a bookmark may carry (``seq`` is a 64-bit integer)."""


class Archive(Protocol):
    """What feeds read: factbus.sidecar.archive.FactArchive (SIDECAR_INTERFACES.md)."""

    async def get(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]: ...

    async def closure(self, refs: Collection[FactRef]) -> list[Fact]: ...

    async def page(self, after: int, limit: int) -> tuple[list[Fact], int]: ...

    async def successors(self, ref: FactRef, role: str, fact_type: str) -> list[FactRef]: ...

    async def count(self) -> int: ...


# -- building feeds -------------------------------------------------------------


def build_feeds(request: Request) -> list[Request]:
    """The feeds of a (supported) specification, each a specification without children."""
    spec = request.specification
    feeds: list[tuple[Match, ...]] = []
    final = _add_matches((), spec.matches, feeds)
    feeds.append(final)
    _add_children(final, spec.children, feeds)
    # As jinaga.js does, leave out feeds that only walk to predecessors: the
    # client already holds every predecessor of its given.
    unique = [matches for matches in dict.fromkeys(feeds) if _seeks_successors(matches)]
    return [Request(Specification(spec.given, matches), request.start) for matches in unique]


def _seeks_successors(matches: tuple[Match, ...]) -> bool:
    return any(path.roles_left for match in matches for path in match.paths)


def _add_matches(
    feed: tuple[Match, ...], matches: Sequence[Match], feeds: list[tuple[Match, ...]]
) -> tuple[Match, ...]:
    for match in matches:
        feed = (*feed, Match(match.unknown, match.paths))
        for condition in match.existentials:
            # One level deep (spec.py): the condition's matches hold paths only.
            if condition.exists:
                feed = _add_matches(feed, condition.matches, feeds)
            else:
                feeds.append(_add_matches(feed, condition.matches, feeds))
                feed = _with_condition(feed, match.unknown.name, condition)
    return feed


def _with_condition(
    feed: tuple[Match, ...], name: str, condition: ExistentialCondition
) -> tuple[Match, ...]:
    out = list(feed)
    for i in range(len(out) - 1, -1, -1):
        if out[i].unknown.name == name:
            out[i] = Match(out[i].unknown, (*out[i].conditions, condition))
            break
    return tuple(out)


def _add_children(
    final: tuple[Match, ...],
    children: Sequence[ChildSpecification],
    feeds: list[tuple[Match, ...]],
) -> None:
    for child in children:
        extended = _add_matches(final, child.matches, feeds)
        feeds.append(extended)
        _add_children(extended, child.children, feeds)


# -- feed ids ----------------------------------------------------------------------


def feed_id(feed: Request) -> str:
    """A URL-safe id that carries the feed itself (see the module docstring)."""
    packed = zlib.compress(describe(feed).encode("utf-8"), 9)
    return base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def parse_feed_id(text: str) -> Request:
    """The feed an id carries.

    :raises SpecificationSyntaxError: not an id this server wrote.
    """
    if len(text) > MAX_FEED_ID_CHARS:
        raise SpecificationSyntaxError(f"feed id of {len(text)} characters is too long")
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_FEED_TEXT)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("truncated or too large")
        description = raw.decode("utf-8")
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise SpecificationSyntaxError(
            f"unknown feed id (not one this server issued: {exc})"
        ) from None
    return parse_request(description)


# -- evaluation --------------------------------------------------------------------

Tuple = dict[str, FactRef]


@dataclass
class _Reader:
    """Archive reads for one evaluation, each asked once."""

    archive: Archive
    facts: dict[FactRef, Fact | None] = field(default_factory=dict)
    successor_cache: dict[tuple[FactRef, str, str], list[FactRef]] = field(default_factory=dict)

    async def predecessors(self, ref: FactRef, role: str, fact_type: str) -> list[FactRef]:
        if ref not in self.facts:
            found = await self.archive.get([ref])
            self.facts[ref] = found.get(ref)
        fact = self.facts[ref]
        if fact is None:
            return []
        value = fact.predecessors.get(role)
        if value is None:
            return []
        refs = [value] if isinstance(value, FactRef) else list(value)
        return [r for r in refs if r.type == fact_type]

    async def successors(self, ref: FactRef, role: str, fact_type: str) -> list[FactRef]:
        key = (ref, role, fact_type)
        if key not in self.successor_cache:
            self.successor_cache[key] = await self.archive.successors(ref, role, fact_type)
        return self.successor_cache[key]


async def evaluate(archive: Archive, feed: Request) -> list[Tuple]:
    """The result tuples of a feed (label -> fact), in archive order."""
    reader = _Reader(archive)
    spec = feed.specification
    return await _run(reader, spec.matches, [{spec.given.name: feed.start}])


async def _run(reader: _Reader, matches: Sequence[Match], tuples: list[Tuple]) -> list[Tuple]:
    for match in matches:
        extended: list[Tuple] = []
        for row in tuples:
            first, *rest = match.paths
            for candidate in await _follow(reader, match, first, row):
                ok = True
                for path in rest:
                    if candidate not in await _follow(reader, match, path, row):
                        ok = False
                        break
                if not ok:
                    continue
                bound = {**row, match.unknown.name: candidate}
                for condition in match.existentials:
                    found = await _run(reader, condition.matches, [bound])
                    if bool(found) != condition.exists:
                        ok = False
                        break
                if ok:
                    extended.append(bound)
        tuples = extended
        if not tuples:
            break
    return tuples


async def _follow(reader: _Reader, match: Match, path: PathCondition, row: Tuple) -> list[FactRef]:
    """Facts of the match's type that satisfy ``path`` given ``row``, in archive order."""
    current = [row[path.label_right]]
    for role in path.roles_right:
        nxt: list[FactRef] = []
        for ref in current:
            nxt.extend(await reader.predecessors(ref, role.name, role.predecessor_type))
        current = list(dict.fromkeys(nxt))
    # Walk the left roles backwards: u->l1: T1->l2: T2 means u.l1 is a T1 whose l2 is a T2.
    types = [match.unknown.type] + [r.predecessor_type for r in path.roles_left]
    for i in range(len(path.roles_left) - 1, -1, -1):
        role = path.roles_left[i]
        nxt = []
        for ref in current:
            if ref.type == role.predecessor_type:
                nxt.extend(await reader.successors(ref, role.name, types[i]))
        current = list(dict.fromkeys(nxt))
    return [ref for ref in current if ref.type == match.unknown.type]


# -- reading a feed -----------------------------------------------------------------


def archive_tag(node_name: str) -> str:
    """A short tag naming one archive (its sidecar's node), carried in bookmarks."""
    digest = hashlib.sha256(node_name.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[:6]).decode("ascii")


def write_bookmark(cursor: int, tag: str) -> str:
    """``<cursor>.<tag>``: cursors of one archive mean nothing to another replica's."""
    return f"{cursor}.{tag}"


def parse_bookmark(text: str, tag: str) -> int:
    """An archive cursor from a bookmark; 0 (the start) for '' or another archive's bookmark.

    A bookmark written by another replica (another archive, other ``seq``
    numbers) starts the feed over: the client gets references it may hold
    already, never misses one.

    :raises SpecificationSyntaxError: not a bookmark a sidecar wrote.
    """
    if text == "":
        return 0
    cursor, dot, their_tag = text.partition(".")
    digits = cursor.isascii() and cursor.isdigit() and len(cursor) <= 19
    if not (dot and digits) or int(cursor) > MAX_SEQ:
        raise SpecificationSyntaxError(f"bookmark {text[:40]!r} is not one this server issued")
    return int(cursor) if their_tag == tag else 0


async def read_feed(archive: Archive, feed: Request, bookmark: int) -> tuple[list[FactRef], int]:
    """References in the feed's tuples that are new since ``bookmark``, and the next bookmark.

    With bookmark 0 every tuple is new. References come tuple by tuple, each once.
    """
    new: set[FactRef] = set()
    if bookmark:
        cursor = await _pages(archive, bookmark, new)
    else:
        # Only the end is needed. seq starts at 1 and only grows (FactArchive), so
        # the last fact's seq is at least the count: start just before it.
        cursor = await _pages(archive, max(await archive.count() - 1, 0), None)
    references: dict[FactRef, None] = {}
    for row in await evaluate(archive, feed):
        if bookmark == 0 or any(ref in new for ref in row.values()):
            references.update(dict.fromkeys(row.values()))
    return list(references), cursor


async def _pages(archive: Archive, after: int, collect: set[FactRef] | None) -> int:
    """Page the archive from ``after`` to its end; the end cursor (``after`` if nothing)."""
    cursor = after
    while True:
        facts, nxt = await archive.page(cursor, PAGE)
        if collect is not None:
            collect.update(f.ref for f in facts)
        if not facts or nxt <= cursor:
            return cursor
        cursor = nxt
