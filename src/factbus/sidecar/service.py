"""The running sidecar: one Bus, its views and fact archive, the outbox and the HTTP API.

``async with Sidecar(config) as sidecar:`` opens the archive, attaches the views'
transactional handlers to the Bus, starts the Bus (subscribe, consume), the
outbox task (if ``[sidecar] outbox`` is set) and the HTTP server on
``[sidecar] listen``. Leaving the block (or :meth:`stop` during :meth:`run`)
closes them in the reverse order: the HTTP server stops accepting and ends its
event streams, the outbox finishes its pass, the Bus finishes its step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from factbus.bus import Bus
from factbus.config import Settings
from factbus.errors import TransportError
from factbus.fact import Fact, FactRef
from factbus.lifecycle import AsyncLifecycle
from factbus.sidecar.archive import FactArchive
from factbus.sidecar.config import SidecarConfig
from factbus.sidecar.outbox import Outbox
from factbus.sidecar.views import Views

if TYPE_CHECKING:
    from factbus.metrics import Metrics

log = structlog.get_logger("factbus.sidecar")

READY_QUIET = 0.5
"""Seconds the Bus must stay caught up (sampled every :data:`READY_TICK`) before
the sidecar reports ready: one empty receive can come before a broker's first
fetch returns the backlog."""
READY_TICK = 0.05


def _metrics() -> Metrics | None:
    from factbus import metrics

    return metrics.Metrics() if metrics.AVAILABLE else None


class Sidecar(AsyncLifecycle):
    """A sidecar's parts, started and stopped together (see the module docstring).

    ``config``, ``settings``, ``bus``, ``views``, ``archive`` and ``outbox`` (or
    ``None``) are public. ``listen`` overrides ``[sidecar] listen``; port 0 picks
    a free port (see :attr:`address`). ``http=False`` runs without the HTTP server.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        settings: Settings | None = None,
        listen: str | None = None,
        http: bool = True,
    ) -> None:
        self.config = config
        self.settings = settings or config.settings()
        self.listen = listen or config.listen
        self.metrics = _metrics()
        """The Prometheus registry served at ``GET /metrics`` (``None`` without
        prometheus-client: then that route answers 501)."""
        self.bus = Bus(settings=self.settings, metrics=self.metrics)
        self.archive = FactArchive(self.settings.store_url)
        self.views = Views(config, store_url=self.settings.store_url)
        self.views.attach(self.bus)
        self.outbox = (
            Outbox(
                config.outbox,
                self.settings.store_url,
                self.publish,
                self.unknown,
                max_depth=self.settings.max_depth,
                max_bytes=self.settings.max_envelope_bytes,
            )
            if config.outbox
            else None
        )
        self.closing = asyncio.Event()
        """Set when the sidecar begins to close: event streams end on it."""
        self._http = http
        self._server: Any = None  # factbus.sidecar.server.HttpServer
        self._stop = asyncio.Event()
        self._ready = False
        self._watch: asyncio.Task[None] | None = None
        self._started = False
        self._log = log.bind(node=self.settings.node_name, topic=self.settings.topic)

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the archive and views, start the HTTP server, then the Bus (with
        its catch-up from peers) and the outbox; returns once all run. The HTTP
        server answers from early on: ``/healthz`` while the Bus starts,
        ``/readyz`` with 503 and :attr:`not_ready` until ready.

        :raises ConfigError: a view or the outbox cannot be set up (named).
        :raises OSError: the listen address is taken.
        """
        if self._started:
            return
        self._started = True
        self.closing.clear()
        try:
            await self.archive.open()
            await self.views.open()
            if self._http:
                # Listen before the Bus starts: its start includes the catch-up
                # from peers, which may take long, and a liveness probe must get
                # its answer meanwhile (/readyz says what the sidecar waits for).
                from factbus.sidecar.server import HttpServer, build_app

                self._server = HttpServer(build_app(self), self.listen)
                await self._server.start()
                self._log.info("sidecar listening", address=self.address)
            await self.bus.start()
            self._watch = asyncio.create_task(self._watch_ready(), name="factbus-sidecar-ready")
            if self.outbox is not None:
                await self.outbox.start()
        except BaseException:
            await self.aclose()
            raise
        self._log.info("sidecar started", address=self.address)

    async def aclose(self) -> None:
        """Stop the HTTP server, the outbox, the Bus (after its step), the views and
        the archive."""
        if not self._started:
            return
        self._started = False
        self._ready = False
        self.closing.set()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._server is not None:
            await self._server.aclose()
            self._server = None
        if self.outbox is not None:
            await self.outbox.aclose()
        await self.bus.aclose()
        await self.views.aclose()
        await self.archive.aclose()
        self._log.info("sidecar closed")

    async def _enter(self) -> None:
        await self.start()

    def stop(self) -> None:
        """Ask :meth:`run` to close (e.g. from a SIGTERM handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until :meth:`stop`, then close gracefully."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.aclose()

    # -- state --------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """``host:port`` the HTTP server listens on (the real port if 0 was asked)."""
        return None if self._server is None else str(self._server.address)

    @property
    def url(self) -> str | None:
        """``http://host:port`` of the HTTP API, once started."""
        return None if self.address is None else f"http://{self.address}"

    @property
    def ready(self) -> bool:
        """True once the Bus was subscribed and stayed caught up (no backlog) for
        :data:`READY_QUIET` seconds, and from then on while the sidecar runs.

        Latched: a burst of deliveries later does not make the pod unready (the
        application keeps reading its tables meanwhile).
        """
        return self._started and self._ready

    @property
    def not_ready(self) -> str | None:
        """Why the sidecar is not ready (what ``GET /readyz`` reports with its 503),
        or ``None`` once :attr:`ready`: ``"starting"``, the Bus's
        :attr:`~factbus.bus.Bus.stage` while it starts (``"subscribing"``,
        ``"catching up from <peer>"``, ...), then ``"backlog"`` until it stayed
        caught up for :data:`READY_QUIET` seconds."""
        if self.ready:
            return None
        if not self._started:
            return "stopped"
        stage = self.bus.stage
        if stage == "stopped":
            return "starting"
        if stage != "running":
            return stage
        return "backlog: handling deliveries the broker has waiting"

    @property
    def failure(self) -> str | None:
        """Why the sidecar no longer works (its consumer ended), or ``None``: what
        ``GET /healthz`` reports, so that a liveness probe restarts it."""
        consumer = self.bus.consumer
        if not self._started or consumer is None or not consumer.done():
            return None
        if consumer.cancelled():
            return "the consumer was cancelled"
        error = consumer.exception()
        return f"the consumer stopped: {error!r}" if error else "the consumer stopped"

    async def _watch_ready(self) -> None:
        quiet = 0.0
        while quiet < READY_QUIET:
            await asyncio.sleep(READY_TICK)
            quiet = quiet + READY_TICK if self.bus.caught_up else 0.0
        self._ready = True
        self._log.info("sidecar ready: subscribed, no backlog")

    # -- writing facts ------------------------------------------------------------

    async def publish(self, facts: Sequence[Fact]) -> list[str]:
        """Publish ``facts`` (each with its ancestors given as :class:`Fact`); return
        their hashes once the broker confirmed every envelope.

        :raises PublishError: the broker did not confirm (some may have arrived).
        :raises TransportError: the Bus has not connected yet (or closed).
        """
        if self.bus.stage in ("stopped", "connecting"):
            raise TransportError("the sidecar is not connected to the broker (yet); retry")
        refs = await self.bus.publish(*facts)
        return [ref.hash for ref in refs]

    async def unknown(self, refs: Collection[FactRef]) -> set[FactRef]:
        """Those of ``refs`` that this sidecar neither handled (its archive) nor
        published itself. A fact counts as published as soon as :meth:`publish`
        returned it, even while a step holds the store and the published refs
        wait to be written (:meth:`factbus.bus.Bus.published`)."""
        missing = set(refs)
        if missing:
            missing -= set(await self.archive.get(missing))
        if missing:
            missing -= await self.bus.published(missing)
        return missing
