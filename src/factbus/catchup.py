"""Catch-up from a peer: pull every fact a peer's sidecar keeps into this node.

A node that starts late on a broker that keeps no history (RabbitMQ queues,
kombu, memory), or after the broker lost part of it (Kafka retention), gets the
facts it missed from a peer that has them: the peer's sidecar exports its fact
archive, in handling (so topological) order, with a stable cursor::

    GET <peer>/facts?after=<cursor>&limit=<n>
    -> {"facts": [wire fact, ...], "next": "<cursor>"}

:func:`catch_up` reads those pages, from the cursor this node's store kept for
that peer (from the start the first time), until a page comes back empty. Each
page is verified as an envelope is (every hash recomputed, values checked, order
checked) and settled through the bus's pipeline exactly like received
envelopes: dedup, causal order, handlers, dead letters. The peer's ``next``
cursor is recorded in the same store transaction as the page's facts (key
``catch-up:<peer>``), so a node killed during catch-up resumes at the first page
it had not committed, and no fact is handled twice.

HTTP runs on the standard library (``urllib``) in a worker thread, one page
ahead of the pipeline: no extra dependency for a client this small.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from factbus.envelope import CodecLimits, decode
from factbus.errors import EnvelopeError, FactbusError
from factbus.fact import Fact
from factbus.urls import redact

if TYPE_CHECKING:
    from factbus.pipeline import Pipeline

log = structlog.get_logger("factbus.catchup")

PAGE_LIMIT = 1000
"""Facts asked for per page (the peer may send fewer; S2's sidecar serves at most 5000)."""
HTTP_TIMEOUT = 60.0
"""Seconds one page request may take."""
MAX_POSITION = 2**63 - 1
"""The largest cursor kept as a position: a peer's export cursor is its archive's
64-bit ``seq``, and the stores keep positions as 64-bit integers."""


class CatchUpError(FactbusError):
    """A peer could not be caught up from: unreachable, an HTTP error, a page
    that is not the export format (a ``next`` cursor of digits past 64 bits
    included), or a fact whose hash does not verify. Pages
    settled before it stay settled; the failing page changed nothing."""


@dataclass(frozen=True, slots=True)
class CatchUpReport:
    """What one catch-up from one peer did."""

    peer: str
    pages: int
    facts: int
    """Facts received from the peer (each verified)."""
    handled: int
    """Of those, facts this node had not handled before (its handlers ran)."""
    cursor: str
    """The peer's cursor after the last page (where the next catch-up starts)."""
    seconds: float

    @property
    def rate(self) -> float:
        """Facts received per second."""
        return self.facts / self.seconds if self.seconds > 0 else 0.0


def position_key(peer: str) -> str:
    """The store key under which the cursor reached on ``peer`` is kept."""
    return f"catch-up:{peer.rstrip('/')}"


class PeerExport:
    """The export endpoint of one peer's sidecar (``GET /facts``)."""

    def __init__(self, peer: str, *, limit: int = PAGE_LIMIT, timeout: float = HTTP_TIMEOUT):
        parts = urllib.parse.urlsplit(peer)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CatchUpError(f"peer {peer!r} is not an http:// or https:// URL")
        if limit < 1:
            raise CatchUpError("catch-up page limit must be at least 1")
        self.peer = peer.rstrip("/")
        self.limit = limit
        self.timeout = timeout

    def url(self, after: str) -> str:
        query = urllib.parse.urlencode({"after": after, "limit": self.limit})
        return f"{self.peer}/facts?{query}"

    async def page(self, after: str) -> tuple[list[Any], str]:
        """One page after ``after``: its wire facts (unverified) and the next cursor.

        :raises CatchUpError: unreachable, an HTTP error status, or not the export format.
        """
        return await asyncio.to_thread(self._page, after)

    def _page(self, after: str) -> tuple[list[Any], str]:
        url = self.url(after)
        shown = redact(url)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise CatchUpError(f"GET {shown}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CatchUpError(f"GET {shown}: peer unreachable: {reason}") from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise CatchUpError(f"GET {shown}: not JSON: {error}") from None
        if (
            type(doc) is not dict
            or type(doc.get("facts")) is not list
            or type(doc.get("next")) is not str
        ):
            raise CatchUpError(
                f'GET {shown}: not a catch-up page (want {{"facts": [...], "next": "..."}})'
            )
        return doc["facts"], doc["next"]


def verify(wire_facts: list[Any], limits: CodecLimits, where: str) -> list[Fact]:
    """The page's facts, each hash recomputed and every value checked as in an
    envelope (the size limit applies per fact, not to the page).

    :raises CatchUpError: naming the first fact that does not verify.
    """
    if not wire_facts:
        return []
    body = orjson.dumps({"v": 1, "facts": wire_facts})
    largest = max(len(orjson.dumps(w)) for w in wire_facts)
    if largest > limits.max_bytes:
        raise CatchUpError(
            f"{where}: a fact of {largest} bytes exceeds max_envelope_bytes={limits.max_bytes}"
        )
    try:
        return decode(body, CodecLimits(max(len(body), limits.max_bytes), limits.max_depth))
    except EnvelopeError as error:
        raise CatchUpError(f"{where}: {error.reason}") from None


def _positions(key: str, following: str, where: str) -> dict[str, int]:
    """The position to record with a page: its ``next`` cursor when that is ASCII
    digits, else none.

    :raises CatchUpError: digits past :data:`MAX_POSITION` (no store keeps it;
        ``int`` refuses thousands of digits)."""
    if not (following.isascii() and following.isdigit()):
        return {}
    if len(following) > len(str(MAX_POSITION)) or int(following) > MAX_POSITION:
        shown = (
            following if len(following) <= 40 else f"{following[:40]}... ({len(following)} digits)"
        )
        raise CatchUpError(f"{where}: the next cursor {shown} is past 64 bits")
    return {key: int(following)}


async def catch_up(
    pipeline: Pipeline,
    peer: str,
    *,
    limit: int = PAGE_LIMIT,
    timeout: float = HTTP_TIMEOUT,
) -> CatchUpReport:
    """Pull every fact ``peer`` exports after the cursor kept for it, page by page,
    into ``pipeline`` (see the module docstring). The next page is fetched while
    the current one settles.

    :raises CatchUpError: see :class:`CatchUpError`.
    """
    export = PeerExport(peer, limit=limit, timeout=timeout)
    key = position_key(export.peer)
    stored = await pipeline.store.position(key)
    cursor = str(stored) if stored is not None else "0"
    started = time.monotonic()
    handled_before = pipeline.stats.handled
    pages = facts = 0
    shown = redact(export.peer)
    log.info("catch-up starting", peer=shown, cursor=cursor)
    fetch = asyncio.ensure_future(export.page(cursor))
    try:
        while True:
            wire_facts, following = await fetch
            if not wire_facts:
                break
            fetch = asyncio.ensure_future(export.page(following))
            where = f"{shown} page after {cursor!r}"
            page = verify(wire_facts, pipeline.limits, where)
            positions = _positions(key, following, where)
            await pipeline.ingest(page, positions)
            pages += 1
            facts += len(page)
            cursor = following
            log.debug("catch-up page settled", peer=shown, facts=len(page), cursor=cursor)
    finally:
        if not fetch.done():
            fetch.cancel()
    report = CatchUpReport(
        peer=export.peer,
        pages=pages,
        facts=facts,
        handled=pipeline.stats.handled - handled_before,
        cursor=cursor,
        seconds=time.monotonic() - started,
    )
    log.info(
        "catch-up done",
        peer=shown,
        pages=pages,
        facts=facts,
        handled=report.handled,
        rate=round(report.rate, 1),
    )
    return report
