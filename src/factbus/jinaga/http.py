"""Jinaga's replicator protocol on the sidecar (DESIGN.md §8, docs/jinaga.md).

:func:`routes` returns the Starlette routes that the sidecar's server mounts
under ``[sidecar] jinaga`` (e.g. ``/jinaga``); an unmodified jinaga.js client
created with ``JinagaClient.create({httpEndpoint: "http://host:port/jinaga"})``
then saves, loads and queries facts that travel over the bus:

- ``OPTIONS /save``: ``Accept-Post: application/x-jinaga-graph-v1, application/json``.
- ``POST /save``: a graph or ``{"facts": [...]}``; every hash is recomputed,
  every predecessor must be in the request or already known to the sidecar,
  and the facts the sidecar does not know yet are published on the bus (so
  they reach the archive and every other node); 201 once the broker
  confirmed them. Bad input: 400 naming the
  problem, and nothing is published.
- ``POST /load``: ``{"references": [...]}`` -> ``{"facts": [...]}``, the facts and
  all their ancestors, predecessors first.
- ``POST /feeds``: specification text -> ``{"feeds": [ids]}``; a specification
  outside the supported subset (factbus.jinaga.spec) -> 400 saying so.
- ``GET /feeds/{id}?b=bookmark``: ``{"references": [...], "bookmark": "..."}``;
  with ``Accept: application/x-jinaga-feed-stream`` the same objects as JSON
  lines, a new line whenever the archive holds new results, until the client
  disconnects or the sidecar closes. An unknown feed id is a 404
  ``unknown-feed``; a bookmark this server did not issue (not
  ``<cursor>.<tag>``, or a cursor past 64 bits) a 400 ``invalid-bookmark``
  naming it (another replica's well-formed bookmark starts the feed over).

Errors are JSON ``{"message": ..., "error": {"code": ..., "message": ...}}``
(jinaga.js shows ``message``; ``error`` is the sidecar API's shape).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Final, Protocol

import orjson
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from factbus.errors import FactbusError
from factbus.fact import Fact, FactRef
from factbus.jinaga.feeds import (
    Archive,
    archive_tag,
    build_feeds,
    feed_id,
    parse_bookmark,
    parse_feed_id,
    read_feed,
    write_bookmark,
)
from factbus.jinaga.graph import (
    CONTENT_TYPE_GRAPH,
    DEFAULT_MAX_GRAPH_BYTES,
    JinagaFormatError,
    fact_record,
    parse_graph,
    parse_save_json,
)
from factbus.jinaga.spec import (
    MAX_SPECIFICATION_CHARS,
    SpecificationError,
    UnsupportedSpecification,
    parse_request,
)
from factbus.sidecar.api import RequestError, read_body

CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_FEED_STREAM: Final = "application/x-jinaga-feed-stream"
ACCEPT_POST: Final = f"{CONTENT_TYPE_GRAPH}, {CONTENT_TYPE_JSON}"
MAX_LOAD_REFERENCES: Final = 10_000
STREAM_POLL_SECONDS: Final = 0.5
"""How often a feed stream looks for new facts in the archive."""
STREAM_KEEPALIVE_SECONDS: Final = 15.0
"""A blank line (ignored by jinaga.js) at least this often keeps proxies from closing the stream."""


class JinagaHost(Protocol):
    """What the endpoints use: factbus.sidecar.service.Sidecar."""

    @property
    def archive(self) -> Archive: ...

    async def publish(self, facts: Sequence[Fact]) -> list[str]: ...

    async def unknown(self, refs: Collection[FactRef]) -> set[FactRef]: ...


class _Refused(FactbusError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        body = {"message": self.message, "error": {"code": self.code, "message": self.message}}
        return Response(orjson.dumps(body), self.status, media_type=CONTENT_TYPE_JSON)


def routes(sidecar: JinagaHost) -> list[BaseRoute]:
    """Jinaga's endpoints over ``sidecar`` (paths relative to the mount prefix)."""
    endpoints = _Endpoints(sidecar)
    return [
        Route("/save", endpoints.save_options, methods=["OPTIONS"]),
        Route("/save", endpoints.save, methods=["POST"]),
        Route("/load", endpoints.load, methods=["POST"]),
        Route("/feeds", endpoints.feeds, methods=["POST"]),
        Route("/feeds/{feed}", endpoints.feed, methods=["GET"]),
    ]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=CONTENT_TYPE_JSON)


async def _body(request: HttpRequest, limit: int) -> bytes:
    try:
        return await read_body(request.stream(), limit, request.headers.get("content-length"))
    except RequestError as error:
        raise _Refused(error.status, error.code, error.message) from None


class _Endpoints:
    def __init__(self, sidecar: JinagaHost) -> None:
        self.sidecar = sidecar
        settings = getattr(sidecar, "settings", None)
        self.tag = archive_tag(str(getattr(settings, "node_name", "")))

    async def save_options(self, request: HttpRequest) -> Response:
        return Response(
            status_code=204, headers={"Accept-Post": ACCEPT_POST, "Allow": "OPTIONS, POST"}
        )

    async def save(self, request: HttpRequest) -> Response:
        try:
            facts = await self._read_save(request)
            await self._check_predecessors(facts)
        except _Refused as refused:
            return refused.response()
        if facts:
            # jinaga.js sends each fact's whole closure with every save: what the
            # sidecar already archived or published is on the bus already.
            new = await self.sidecar.unknown([fact.ref for fact in facts])
            facts = [fact for fact in facts if fact.ref in new]
        if facts:
            try:
                await self.sidecar.publish(facts)
            except FactbusError as error:
                return _Refused(
                    503, "publish-failed", f"the bus did not confirm: {error}"
                ).response()
        return Response(status_code=201)

    async def _read_save(self, request: HttpRequest) -> list[Fact]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _body(request, DEFAULT_MAX_GRAPH_BYTES)
        try:
            if content_type == CONTENT_TYPE_GRAPH:
                return parse_graph(body)
            if content_type in (CONTENT_TYPE_JSON, ""):
                return parse_save_json(body)
        except JinagaFormatError as error:
            raise _Refused(400, "malformed", error.message) from None
        raise _Refused(
            415,
            "unsupported-media-type",
            f"content type {content_type!r} is not accepted; send {ACCEPT_POST}",
        )

    async def _check_predecessors(self, facts: list[Fact]) -> None:
        present = {fact.ref for fact in facts}
        named = {ref for fact in facts for ref in fact.predecessor_refs() if ref not in present}
        if not named:
            return
        missing = await self.sidecar.unknown(named)
        if missing:
            listed = ", ".join(sorted(f"{ref.type} {ref.hash}" for ref in missing)[:5])
            raise _Refused(
                400,
                "unknown-predecessor",
                f"{len(missing)} predecessor(s) are neither in the request nor known to this "
                f"sidecar: {listed}",
            )

    async def load(self, request: HttpRequest) -> Response:
        try:
            body = await _body(request, DEFAULT_MAX_GRAPH_BYTES)
            refs = _load_references(body)
        except _Refused as refused:
            return refused.response()
        facts = await self.sidecar.archive.closure(refs) if refs else []
        return _json({"facts": [fact_record(fact) for fact in facts]})

    async def feeds(self, request: HttpRequest) -> Response:
        try:
            body = await _body(request, MAX_SPECIFICATION_CHARS * 4)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(400, "malformed", "the specification is not UTF-8") from None
            try:
                parsed = parse_request(text)
            except UnsupportedSpecification as error:
                raise _Refused(400, "unsupported-specification", error.message) from None
            except SpecificationError as error:
                raise _Refused(400, "invalid-specification", error.message) from None
        except _Refused as refused:
            return refused.response()
        return _json({"feeds": [feed_id(feed) for feed in build_feeds(parsed)]})

    async def feed(self, request: HttpRequest) -> Response:
        try:
            feed = parse_feed_id(request.path_params["feed"])
        except SpecificationError as error:
            return _Refused(404, "unknown-feed", error.message).response()
        try:
            bookmark = parse_bookmark(request.query_params.get("b", ""), self.tag)
        except SpecificationError as error:
            # 400, not 404: the feed exists, the bookmark is bad (docs/decisions.md).
            return _Refused(400, "invalid-bookmark", error.message).response()
        archive = self.sidecar.archive
        if CONTENT_TYPE_FEED_STREAM in request.headers.get("accept", ""):
            closing: asyncio.Event | None = getattr(self.sidecar, "closing", None)
            return StreamingResponse(
                _stream(archive, feed, bookmark, self.tag, closing),
                media_type=CONTENT_TYPE_FEED_STREAM,
            )
        references, cursor = await read_feed(archive, feed, bookmark)
        return _json(
            {
                "references": [_ref(r) for r in references],
                "bookmark": write_bookmark(cursor, self.tag),
            }
        )


def _ref(ref: FactRef) -> dict[str, str]:
    return {"type": ref.type, "hash": ref.hash}


def _load_references(body: bytes) -> list[FactRef]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(400, "malformed", f"body is not valid JSON ({exc})") from None
    if type(doc) is not dict or type(doc.get("references")) is not list:
        raise _Refused(400, "malformed", 'expected a JSON object with a "references" list')
    items = doc["references"]
    if len(items) > MAX_LOAD_REFERENCES:
        raise _Refused(400, "too-many", f"more than {MAX_LOAD_REFERENCES} references in one load")
    refs: list[FactRef] = []
    for i, item in enumerate(items):
        if (
            type(item) is not dict
            or type(item.get("type")) is not str
            or type(item.get("hash")) is not str
            or not item["type"]
        ):
            raise _Refused(400, "malformed", f"references[{i}] needs a string type and hash")
        refs.append(FactRef(item["type"], item["hash"]))
    return refs


async def _stream(
    archive: Archive, feed: Any, bookmark: int, tag: str, closing: asyncio.Event | None
) -> AsyncIterator[bytes]:
    """JSON lines of ``{"references", "bookmark"}``: one at once, then one per change."""
    first = True
    seen = -1
    idle = 0.0
    while closing is None or not closing.is_set():
        count = await archive.count()  # read before the feed: a later fact changes it
        if first or count != seen:
            references, bookmark = await read_feed(archive, feed, bookmark)
            seen = count
            if references or first:
                line = {
                    "references": [_ref(r) for r in references],
                    "bookmark": write_bookmark(bookmark, tag),
                }
                yield orjson.dumps(line) + b"\n"
                idle = 0.0
            first = False
        await asyncio.sleep(STREAM_POLL_SECONDS)
        idle += STREAM_POLL_SECONDS
        if idle >= STREAM_KEEPALIVE_SECONDS:
            yield b"\n"
            idle = 0.0
