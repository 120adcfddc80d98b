"""The sidecar's HTTP API (Starlette), and the uvicorn server that runs it in the
sidecar's event loop.

Routes (docs/sidecar.md has examples)::

    POST /facts                      {"facts": [fact, ...]} -> 201 {"hashes": [...]}
    GET  /facts?after=&limit=        catch-up export: {"facts": [wire, ...], "next": cursor}
    GET  /facts/{type}/{hash}        one fact (hash URL-encoded) -> wire object, or 404
    GET  /tables/{name}?limit=&after=   {"table", "rows": [...], "next": hash | null}
    GET  /tables/{name}/changes      server-sent events: added / changed / removed
    GET  /tables/{name}/rows/{hash}  one row, with each property's leaves (type, hash, value)
    GET  /healthz                    200 while the sidecar works; 503 once its consumer stopped
    GET  /readyz                     200 once subscribed with no backlog, else 503
                                     with the reason (e.g. "catching up from <peer>")
    GET  /metrics                    Prometheus text (docs/observability.md); 501 without
                                     prometheus-client installed
    <[sidecar] jinaga>/...           Jinaga's protocol, if set (see :data:`PROTOCOLS_GROUP`)

Every refusal is a 4xx with ``{"error": {"code", "message"[, "field"]}}`` and
changes nothing: a ``POST /facts`` is validated whole before anything is
published.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from factbus import plugins
from factbus.errors import ConfigError, FactbusError, MissingDriver, TransportError

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import BaseRoute, Mount, Route
except ImportError as _error:  # the sidecar's HTTP server is an extra
    raise MissingDriver("http", "sidecar", _error) from _error

from factbus.config import Settings
from factbus.fact import Fact, FactRef
from factbus.sidecar.api import (
    RequestError,
    decode_json,
    is_hash,
    parse_facts_request,
    read_body,
    unknown_predecessor,
)
from factbus.sidecar.archive import FactArchive
from factbus.sidecar.config import SidecarConfig
from factbus.sidecar.projection import source_value
from factbus.sidecar.views import Change, UnknownTable, Views

if TYPE_CHECKING:
    from factbus.metrics import Metrics

JSON: Final = "application/json"
TABLE_LIMIT: Final = (100, 1000)
"""Default and maximum ``limit`` of ``GET /tables/{name}``."""
EXPORT_LIMIT: Final = (500, 5000)
"""Default and maximum ``limit`` of ``GET /facts`` (the catch-up export)."""
MAX_BODY: Final = 4 * 1024 * 1024
"""Largest ``POST /facts`` body, in bytes."""
MAX_CURSOR: Final = 2**63 - 1
"""The largest export cursor: the archive's ``seq`` is a 64-bit integer in SQLite
and PostgreSQL alike; beyond it a query could not even be sent."""
HEARTBEAT: Final = 15.0
"""Seconds between keep-alive comments on an event stream."""
STREAM_QUEUE: Final = 10_000
"""Changes buffered per event stream; a client that falls further behind gets a
``reset`` event and the stream ends (it should re-read the table)."""
PROTOCOLS_GROUP: Final = "factbus.sidecar.protocols"
"""Entry-point group of the protocols a sidecar serves beside its own API: each
entry is named by the ``[sidecar]`` key that sets its path prefix (``jinaga``)
and points at ``routes(host: SidecarHost) -> list[BaseRoute]`` (paths relative
to that prefix). The protocol's package registers itself there (pyproject.toml),
so this module never imports it."""
_BUILTIN_PROTOCOLS: Final[plugins.Builtins] = {"jinaga": ("factbus.jinaga.http:routes", "sidecar")}
"""Used when factbus runs from a source tree whose entry points are not installed
(as :mod:`factbus.plugins` does for transports and stores)."""


class SidecarHost(Protocol):
    """What the HTTP API uses of the running sidecar
    (:class:`factbus.sidecar.service.Sidecar` is one; so is whatever embeds these
    routes another way)."""

    @property
    def config(self) -> SidecarConfig: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def metrics(self) -> Metrics | None: ...
    @property
    def archive(self) -> FactArchive: ...
    @property
    def views(self) -> Views: ...
    @property
    def closing(self) -> asyncio.Event:
        """Set when the sidecar begins to close: event streams end on it."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the sidecar no longer works (``/healthz`` 503), or ``None``."""
        ...

    @property
    def not_ready(self) -> str | None:
        """Why the sidecar is not ready (``/readyz`` 503), or ``None``."""
        ...

    async def publish(self, facts: Sequence[Fact]) -> list[str]:
        """Publish; the hashes once the broker confirmed. :raises TransportError:"""
        ...

    async def unknown(self, refs: Collection[FactRef]) -> set[FactRef]:
        """Those of ``refs`` this sidecar neither handled nor published."""
        ...


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, default=_plain), status, media_type=JSON)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if hasattr(value, "keys"):
        return dict(value)
    return str(value)


def error_response(error: RequestError) -> Response:
    return json_response(error.as_json(), error.status)


def build_app(sidecar: SidecarHost) -> Starlette:
    """The ASGI application of ``sidecar``'s HTTP API (see the module docstring).

    :raises ConfigError: ``[sidecar] jinaga`` is set but Jinaga's endpoints are
        not available in this installation.
    """
    api = _Api(sidecar)
    routes: list[BaseRoute] = [
        Route("/facts", api.post_facts, methods=["POST"]),
        Route("/facts", api.export, methods=["GET"]),
        Route("/facts/{type}/{hash:path}", api.get_fact, methods=["GET"]),
        Route("/tables/{name}", api.table, methods=["GET"]),
        Route("/tables/{name}/changes", api.changes, methods=["GET"]),
        Route("/tables/{name}/rows/{hash:path}", api.row, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    if sidecar.config.jinaga:
        routes.append(_protocol(sidecar, "jinaga", sidecar.config.jinaga))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def _protocol(sidecar: SidecarHost, key: str, prefix: str) -> Mount:
    """The routes of the protocol registered as ``key`` in :data:`PROTOCOLS_GROUP`,
    mounted at ``prefix``.

    :raises ConfigError: nothing is registered, or it cannot be imported (named).
    """
    try:
        provider = plugins.load(PROTOCOLS_GROUP, key, _BUILTIN_PROTOCOLS, what="sidecar protocol")
    except (FactbusError, ImportError) as error:
        raise ConfigError(
            f"[sidecar] {key} = {prefix!r}: {key.capitalize()}'s endpoints are not "
            f"available ({error})"
        ) from None
    mounted: list[BaseRoute] = provider(sidecar)
    return Mount(prefix, routes=mounted)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return json_response({"error": {"code": code, "message": message}}, exc.status_code)


class _Api:
    """The route handlers; each reads ``sidecar``'s public parts only."""

    def __init__(self, sidecar: SidecarHost) -> None:
        self.sidecar = sidecar

    async def metrics(self, request: Request) -> Response:
        metrics = self.sidecar.metrics
        if metrics is None:
            return json_response(
                {
                    "error": {
                        "code": "metrics-unavailable",
                        "message": "GET /metrics needs prometheus-client: "
                        "pip install 'factbus[metrics]'",
                    }
                },
                501,
            )
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def post_facts(self, request: Request) -> Response:
        try:
            body = await _body(request)
            settings = self.sidecar.settings
            parsed = parse_facts_request(decode_json(body), max_depth=settings.max_depth)
            parsed.check_size(settings.max_envelope_bytes)
            unknown = await self.sidecar.unknown(parsed.references)
            for ref, path in parsed.references.items():
                if ref in unknown:
                    raise unknown_predecessor(ref, path)
        except RequestError as error:
            return error_response(error)
        try:
            hashes = await self.sidecar.publish(parsed.facts)
        except TransportError as error:  # not confirmed, or the broker is unreachable
            return json_response(
                {
                    "error": {
                        "code": "publish-failed",
                        "message": f"the broker did not confirm: {error}",
                    }
                },
                503,
            )
        return json_response({"hashes": hashes}, 201)

    async def export(self, request: Request) -> Response:
        try:
            after = _cursor(request.query_params.get("after"))
            limit = _limit(request.query_params.get("limit"), EXPORT_LIMIT)
        except RequestError as error:
            return error_response(error)
        facts, cursor = await self.sidecar.archive.page(after, limit)
        body = b'{"facts":[' + b",".join(f.wire_bytes() for f in facts) + b'],"next":'
        return Response(body + orjson.dumps(str(cursor)) + b"}", 200, media_type=JSON)

    async def get_fact(self, request: Request) -> Response:
        fact_type: str = request.path_params["type"]
        fact_hash: str = request.path_params["hash"]
        if not is_hash(fact_hash):
            return error_response(
                RequestError(
                    400,
                    "invalid-reference",
                    f"{fact_hash!r} is not an 88-character base64 hash (URL-encode / and +)",
                    "hash",
                )
            )
        ref = FactRef(fact_type, fact_hash)
        found = await self.sidecar.archive.get([ref])
        if ref not in found:
            return error_response(
                RequestError(404, "unknown-fact", f"{fact_type} {fact_hash} is not known here")
            )
        return Response(found[ref].wire_bytes(), 200, media_type=JSON)

    async def table(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        try:
            limit = _limit(request.query_params.get("limit"), TABLE_LIMIT)
            after = _row_cursor(request.query_params.get("after"))
            rows = await self.sidecar.views.rows(name, limit=limit, after=after)
        except RequestError as error:
            return error_response(error)
        except UnknownTable:
            return error_response(_unknown_table(self.sidecar, name))
        following = rows[-1]["hash"] if len(rows) == limit else None
        return json_response({"table": name, "rows": rows, "next": following})

    async def row(self, request: Request) -> Response:
        """One row and, per property column, its leaves: what a merge names as prior."""
        name: str = request.path_params["name"]
        key: str = request.path_params["hash"]
        views = self.sidecar.views
        if name not in views.table_names:
            return error_response(_unknown_table(self.sidecar, name))
        if not is_hash(key):
            return error_response(
                RequestError(
                    400, "invalid-reference", f"{key!r} is not an 88-character base64 hash", "hash"
                )
            )
        found = await views.row(name, key)
        if found is None:
            return error_response(
                RequestError(404, "unknown-row", f"table {name!r} has no row {key}")
            )
        spec = self.sidecar.config.table(name)
        archive = self.sidecar.archive
        leaves: dict[str, list[dict[str, Any]]] = {}
        for prop in self.sidecar.config.properties_of(name):
            refs = await archive.successors(FactRef(spec.fact, key), prop.entity, prop.fact)
            facts = (await archive.get(refs)).values()
            replaced = {ref for fact in facts for ref in _refs(fact.predecessors.get(prop.prior))}
            leaves[prop.column] = [
                {"type": f.type, "hash": f.hash, "value": source_value(f, prop.value)}
                for f in sorted(facts, key=lambda f: f.hash)
                if f.ref not in replaced
            ]
        return json_response({"table": name, "row": found, "leaves": leaves})

    async def changes(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        if name not in self.sidecar.views.table_names:
            return error_response(_unknown_table(self.sidecar, name))
        queue: asyncio.Queue[Change | None] = asyncio.Queue(STREAM_QUEUE)

        def on_change(change: Change) -> None:
            if change.table != name:
                return
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    queue.put_nowait(None)  # the client fell behind: reset

        unsubscribe = self.sidecar.views.listen(on_change)
        return StreamingResponse(
            _events(queue, self.sidecar.closing, unsubscribe),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def healthz(self, request: Request) -> Response:
        problem = self.sidecar.failure
        if problem is not None:
            return json_response({"status": "failing", "reason": problem}, 503)
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        reason = self.sidecar.not_ready
        if reason is None:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "reason": reason}, 503)


async def _events(
    queue: asyncio.Queue[Change | None], closing: asyncio.Event, unsubscribe: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Server-sent events: ``event: <op>`` and ``data: {"table","op","key","row"}``."""
    try:
        yield b": connected\n\n"
        closed = asyncio.create_task(closing.wait())
        try:
            while not closing.is_set():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, closed}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if not done:
                        yield b": keep-alive\n\n"
                    continue
                change = getter.result()
                if change is None:
                    yield b"event: reset\ndata: {}\n\n"
                    return
                yield _event(change)
        finally:
            closed.cancel()
    finally:
        unsubscribe()


def _refs(value: FactRef | tuple[FactRef, ...] | None) -> tuple[FactRef, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, FactRef) else value


def _event(change: Change) -> bytes:
    data = orjson.dumps(
        {"table": change.table, "op": change.op, "key": change.key, "row": change.row},
        default=_plain,
    )
    return b"event: " + change.op.encode() + b"\ndata: " + data + b"\n\n"


async def _body(request: Request) -> bytes:
    return await read_body(request.stream(), MAX_BODY, request.headers.get("content-length"))


def _limit(given: str | None, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    if given is None or given == "":
        return default
    if not 1 <= _number(given, maximum) <= maximum:
        raise RequestError(
            400, "invalid-limit", f"limit={given!r}: use an integer from 1 to {maximum}", "limit"
        )
    return int(given)


def _number(text: str, maximum: int) -> int:
    """``text`` as a whole number if it is ASCII digits for one up to ``maximum``,
    else -1 (``str.isdigit`` also takes ``²``, which ``int`` refuses, and ``int``
    refuses more than 4,300 digits)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return -1
    number = int(text)
    return number if number <= maximum else -1


def _cursor(given: str | None) -> int:
    if given is None or given == "":
        return 0
    if _number(given, MAX_CURSOR) < 0:
        raise RequestError(
            400,
            "invalid-cursor",
            f"after={given!r}: use 0 or the 'next' value of the previous page",
            "after",
        )
    return int(given)


def _row_cursor(given: str | None) -> str | None:
    """A table page's ``after``: a row's hash (the previous page's ``next``), or none.

    Anything else would page from an arbitrary place; a hash whose ``+`` was not
    URL-encoded arrives with a space instead and would repeat a row.
    """
    if given is None or given == "":
        return None
    if not is_hash(given):
        raise RequestError(
            400,
            "invalid-cursor",
            f"after={given!r}: use the 'next' value of the previous page (a row's hash, "
            f"URL-encoded: + as %2B, / as %2F, = as %3D)",
            "after",
        )
    return given


def _unknown_table(sidecar: SidecarHost, name: str) -> RequestError:
    known = ", ".join(sidecar.views.table_names) or "none"
    return RequestError(404, "unknown-table", f"no table {name!r} (tables: {known})", "name")


# -- the server -----------------------------------------------------------------

_LISTEN: Final = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})\Z")


def split_listen(listen: str) -> tuple[str, int]:
    """``host`` and ``port`` of ``host:port`` (``[::1]:8081`` for IPv6; port 0 = any free).

    :raises ConfigError: not ``host:port``.
    """
    match = _LISTEN.match(listen)
    if match is None or int(match.group(2)) > 65535:
        raise ConfigError(f"listen: {listen!r} is not host:port (e.g. 127.0.0.1:8081)")
    return match.group(1).strip("[]"), int(match.group(2))


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted
    # sockets whose proto says TCP, and socket.create_server() leaves it 0 (every
    # response then waits ~40 ms for the client's delayed ACK).
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the sidecar's loop: the sidecar handles signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn serving ``app`` on ``listen`` as a task of the running loop."""

    def __init__(self, app: Starlette, listen: str) -> None:
        self.listen = listen
        host, port = split_listen(listen)
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; returns once connections are accepted.

        :raises OSError: the address cannot be bound.
        """
        # Bind here: uvicorn calls sys.exit() when it cannot bind by itself.
        host, port = self._config.host, self._config.port
        try:
            sock = _listening_socket(host, port, self._config.backlog)
        except OSError as error:
            raise OSError(f"the sidecar cannot listen on {self.listen}: {error}") from None
        self._task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="factbus-sidecar-http"
        )
        while not self._server.started:
            if self._task.done():
                self._task = None
                sock.close()
                raise OSError(f"the sidecar's HTTP server did not start on {self.listen}")
            await asyncio.sleep(0.01)

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        sockets = self._server.servers[0].sockets
        host, port = sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def aclose(self) -> None:
        """Stop accepting, let requests in flight finish (at most 5 s), close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await task
