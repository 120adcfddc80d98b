"""The Bus: what a service embeds to publish facts and handle them in causal order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from factbus.catchup import PAGE_LIMIT, CatchUpError, CatchUpReport, catch_up
from factbus.config import Settings
from factbus.dispatcher import Dispatcher, Handler, Middleware, RetryPolicy
from factbus.envelope import (
    NATIVE,
    CodecLimits,
    encode,
    encode_one,
    topological,
)
from factbus.errors import FatalTransportError, StoreOwnedError
from factbus.fact import Fact, FactRef
from factbus.headers import HEADER_PRODUCER, HEADER_PUBLISHED_AT
from factbus.lifecycle import AsyncLifecycle
from factbus.logging import configure_logging
from factbus.pipeline import Pipeline, PipelineStats, RefCache
from factbus.store import Store, StoreBatch, open_store
from factbus.store.base import owner_of
from factbus.store.memory import MemoryStore
from factbus.transport import (
    LogReader,
    Message,
    Subscription,
    Transport,
    open_transport,
    take_batch,
)
from factbus.urls import redact

if TYPE_CHECKING:
    from factbus.instrumentation import Instrumentation
    from factbus.metrics import BusMetrics, Metrics
    from factbus.tracing import Tracing

log = structlog.get_logger("factbus.bus")

H = TypeVar("H", bound=Handler)

IDLE_TICK = 0.05  # seconds a consumer waits for messages before it counts as idle
SWEEP_INTERVAL = 2.0  # seconds between sweeps of a shared store's parked facts, when idle


class Bus(AsyncLifecycle):
    """Publish facts and handle them once each, never before their predecessors.

    ``async with Bus(...) as bus:`` connects the transport, opens the store,
    recovers what a crash left, subscribes and starts consuming in the
    background. Register handlers (``@bus.handler("Type")``) before entering.

    Settings come from the arguments, then ``FACTBUS_*`` variables, then the TOML
    file named by ``config`` (or ``FACTBUS_CONFIG``); see :class:`Settings`.
    A ``Transport`` or ``Store`` object may be given instead of a URL.

    Observability (docs/observability.md): ``metrics`` is a
    :class:`factbus.metrics.Metrics` registry the bus reports into from
    :meth:`start` on. ``tracing``: ``True`` traces publish and handle with
    OpenTelemetry, ``False`` never does, ``None`` (default) does when
    ``opentelemetry-api`` is installed and the application set a tracer
    provider before :meth:`start` (or the first publish).
    """

    def __init__(
        self,
        transport: str | Transport | None = None,
        store: str | Store | None = None,
        *,
        topic: str | None = None,
        node: str | None = None,
        group: str | None = None,
        consume: bool | None = None,
        middleware: Sequence[Middleware] = (),
        config: str | None = None,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
        tracing: bool | None = None,
        **options: Any,
    ) -> None:
        given = {
            "transport": transport if isinstance(transport, str) else None,
            "store": store if isinstance(store, str) else None,
            "topic": topic,
            "node": node,
            "group": group,
            "consume": consume,
            **options,
        }
        if settings is None:
            settings = Settings.load(config, **given)
        self.settings = settings
        if not structlog.is_configured():
            configure_logging(settings.log_level)
        self.transport: Transport = (
            transport
            if transport is not None and not isinstance(transport, str)
            else open_transport(settings.transport)
        )
        self.store: Store = (
            store
            if store is not None and not isinstance(store, str)
            else open_store(settings.store_url)
        )
        self.dispatcher = Dispatcher(
            RetryPolicy(
                settings.retry_attempts, settings.retry_backoff, settings.retry_backoff_max
            ),
            settings.handler_timeout,
            middleware,
        )
        self._store_lock = asyncio.Lock()
        self.pipeline = Pipeline(
            topic=settings.topic,
            transport=self.transport,
            store=self.store,
            dispatcher=self.dispatcher,
            limits=CodecLimits.of(settings),
            handled_cache=settings.handled_cache,
            shared_store=self.store.shared,
            store_lock=self._store_lock,
            release_batch=settings.batch_size,
        )
        self._published = RefCache(settings.handled_cache)
        self._record_at_once = (
            self.store.record_published if isinstance(self.store, MemoryStore) else None
        )
        """A memory store records published refs at once, outside a transaction (a
        dict insert each): no recent-published cache in front of it (it answers
        :meth:`published` from a dict of its own; the cache would only double each
        publish's bookkeeping, ~0.3-0.5 µs a new ref: PROFILE.md §22), and no
        store transaction per publish call (~4 µs a call, most of a small call's
        bookkeeping: docs/decisions.md, "Published refs on a memory store:
        recorded at once"). Other stores: the cache, and the refs wait in
        ``pipeline.pending_published`` for the next transaction."""
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """Why the bus stopped consuming by itself (a :class:`FatalTransportError`,
        or a bug), once :meth:`aclose` has run; ``None`` while it consumes or
        after a clean stop."""
        self._started = False
        self._connected = False
        self.stage = "stopped"
        """What the bus is doing, for readiness reports: ``"stopped"``,
        ``"connecting"``, ``"recovering"``, ``"subscribing"``, ``"catching up from
        <peer>"`` (URL redacted) during :meth:`start`, then ``"running"``."""
        self._stopping = asyncio.Event()
        self._idle_ticks = 0
        self._idle = asyncio.Condition()
        self._caught_up = False
        self._log = log.bind(node=settings.node_name, topic=settings.topic)
        self.metrics = metrics
        self._tracing_wanted = tracing
        self._instrumented = False
        self._tracing: Tracing | None = None
        self._bound_metrics: BusMetrics | None = None
        self._instrumentation: Instrumentation | None = None
        self._lag_task: asyncio.Task[None] | None = None

    @property
    def owner(self) -> str:
        """Who the store belongs to once this bus handles facts in it: its group, or
        its node in fan-out (recorded by :meth:`Store.own`; another owner's store
        is refused with :class:`~factbus.errors.StoreOwnedError`)."""
        return owner_of(self.settings.group, self.settings.node_name)

    # -- handlers -----------------------------------------------------------

    def handler(
        self, fact_type: str, *, transactional: bool = False, thread: bool = False
    ) -> Callable[[H], H]:
        """Register the decorated callable for facts of ``fact_type``.

        ``"*"`` registers a catch-all: it runs for every fact, after the
        handlers of the fact's own type.

        Sync or async; called with the :class:`Fact`. ``transactional=True``
        also passes the store transaction's connection: what the handler writes
        through it commits together with the fact's handled mark (exactly-once
        effect). ``thread=True`` runs a sync handler in a worker thread.
        """

        def register(func: H) -> H:
            self.dispatcher.register(fact_type, func, transactional=transactional, thread=thread)
            return func

        return register

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect, open the store, recover, subscribe and start consuming. Idempotent."""
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        self.failure = None
        settings = self.settings
        self._log.info(
            "bus starting",
            transport=redact(settings.transport),
            store=redact(settings.store_url),
            group=settings.subscription_group,
        )
        self._log.debug("receive path", native=NATIVE)
        self._instrument()
        self.stage = "connecting"
        await self.transport.connect()
        await self.store.open()
        if settings.consume:
            try:
                await self.store.own(self.owner)
            except StoreOwnedError:
                await self.aclose()
                raise
            self.stage = "recovering"
            await self.pipeline.recover()
            self.stage = "subscribing"
            self._subscription = await self._subscribe()
            # Subscribed first, so that nothing published meanwhile is missed;
            # consuming starts once the peers' facts are in.
            for peer in settings.catch_up:
                self.stage = f"catching up from {redact(peer)}"
                try:
                    await catch_up(self.pipeline, peer)
                except CatchUpError as error:
                    self._log.error("catch-up failed; going on live", error=str(error))
            self._consumer = asyncio.create_task(self._consume(), name="factbus-consumer")
            if self._bound_metrics is not None:
                self._lag_task = asyncio.create_task(
                    self._bound_metrics.follow_lag(self, self._stopping), name="factbus-lag"
                )
        self.stage = "running"

    def _instrument(self) -> None:
        """Build the observer (metrics, tracing) once the node name is final."""
        if self._instrumented:
            return
        self._instrumented = True
        settings = self.settings
        wanted = self._tracing_wanted
        if wanted or wanted is None:
            from factbus import tracing

            if wanted or (tracing.AVAILABLE and tracing.provider_configured()):
                self._tracing = tracing.Tracing(
                    transport_url=settings.transport,
                    topic=settings.topic,
                    node=settings.node_name,
                    group=settings.subscription_group,
                )
        if self.metrics is not None:
            self._bound_metrics = self.metrics.bind(self)
        if self._bound_metrics is None and self._tracing is None:
            return
        from factbus.instrumentation import Instrumentation

        self._instrumentation = Instrumentation(self.dispatcher, self._bound_metrics, self._tracing)
        self._instrumentation.install()
        self.pipeline.observer = self._instrumentation

    def _uninstrument(self) -> None:
        if self._bound_metrics is not None and self.metrics is not None:
            self.metrics.unbind(self._bound_metrics)
        if self._instrumentation is not None:
            self._instrumentation.uninstall()
        self._bound_metrics = None
        self._instrumentation = None
        self._tracing = None
        self._instrumented = False
        self.pipeline.observer = None

    async def catch_up(self, peer: str, *, limit: int = PAGE_LIMIT) -> CatchUpReport:
        """Pull every fact ``peer``'s sidecar exports into this node, through the
        normal pipeline (handlers, dedup, causal order), resuming at the cursor
        this node's store kept for that peer (:mod:`factbus.catchup`).

        Call it on a bus that does not consume (yet): before :meth:`start`, or
        with ``consume=False``; ``catch_up`` in the settings does it on start.

        :raises CatchUpError: the peer failed; pages settled before stay settled.
        :raises RuntimeError: the bus is consuming.
        """
        if self._consumer is not None:
            raise RuntimeError("catch up before start() or on a bus with consume=False")
        if not self._started and not self._connected:
            await self.transport.connect()
            await self.store.open()
            self._connected = True  # aclose() closes these
            await self.store.own(self.owner)
            await self.pipeline.recover()
        return await catch_up(self.pipeline, peer, limit=limit)

    async def _subscribe(self) -> Subscription:
        """Subscribe; a fan-out node on a transport that reads logs (RabbitMQ with
        ``history=stream``) reads the topic's log from the position its store
        kept, from the first record when it has none (a new node)."""
        settings = self.settings
        transport = self.transport
        if not settings.group and isinstance(transport, LogReader):
            key = transport.position_key(settings.topic)
            if key is not None:
                position = await self.store.position(key)
                self.pipeline.position_key = key
                self._log.info("reading the topic's log", position=position or "first")
                return await transport.subscribe_log(settings.topic, settings.node_name, position)
        return await self.transport.subscribe(settings.topic, settings.subscription_group)

    async def _enter(self) -> None:
        await self.start()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the step in progress."""
        self._stopping.set()

    async def run(self) -> None:
        """Start (if needed) and consume until :meth:`stop` or cancellation, then close.

        :raises FatalTransportError: the transport failed for good (see
            :mod:`factbus.transport.base`, "Errors"); the bus is closed.
        """
        await self.start()
        try:
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stopping.wait())}
            if self._consumer is not None:
                waiters.add(self._consumer)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    if waiter is not self._consumer:
                        waiter.cancel()
        finally:
            await self.aclose()
        if self.failure is not None:
            raise self.failure

    async def aclose(self) -> None:
        """Finish the step in progress, close the subscription, transport and store."""
        if not self._started:
            if self._connected:
                self._connected = False
                await self._record_published(closing=True)
                await self.transport.aclose()
                await self.store.aclose()
                self._uninstrument()
            return
        self._started = False
        self._connected = False
        self._caught_up = False
        self.stage = "stopped"
        self._stopping.set()
        # Let the step in flight finish and ack before the subscription closes
        # (the consumer notices `_stopping` within one idle tick).
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.wait([consumer])  # its outcome is kept in `failure`, not raised
            if not consumer.cancelled() and consumer.exception() is not None:
                self.failure = consumer.exception()
        if self._lag_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._subscription is not None:
            await self._subscription.aclose()
            self._subscription = None
        await self._record_published(closing=True)
        await self.transport.aclose()
        await self.store.aclose()
        self._uninstrument()
        self._log.info("bus closed", **self.stats.as_dict())

    # -- publishing ---------------------------------------------------------

    async def publish(self, *facts: Fact, ancestors: bool = True) -> list[FactRef]:
        """Publish each fact in an envelope of its own (with ``pack`` > 1: up to
        ``pack`` facts per envelope, see :func:`pack_chains`); return their refs.

        With ``ancestors`` (the default) each envelope also carries those of the
        fact's ancestors, given as :class:`Fact` objects, that this node has not
        published before; ``ancestors=False`` ships exactly the facts given.
        Returns once the broker confirmed every envelope.

        Once the broker confirmed, the facts are published and their refs are
        recorded: on a memory store at once (a dict insert, no transaction);
        on the others in a transaction of their own, or with the pipeline
        step's that holds the store. The refs are returned even if recording
        them fails: they stay in ``pipeline.pending_published``
        (:meth:`published` answers from there), the failure is logged and
        counted (``stats.publish_record_failures``), and the next publish,
        pipeline step or :meth:`aclose` writes them again.

        :raises PublishError: the broker did not confirm (some may have arrived).
        """
        if not self._started and not self._connected:
            self._instrument()
            await self.transport.connect()
            await self.store.open()
            self._connected = True  # a publish-only use: aclose() closes these
        headers = {
            HEADER_PRODUCER: self.settings.node_name,
            HEADER_PUBLISHED_AT: f"{time.time():.6f}",
        }
        refs = list(map(_REF, facts))
        shipped: set[FactRef] = set(refs)
        if ancestors and any(map(_ANCESTORS_GIVEN, facts)):
            messages = self._messages(await self._chains(facts, shipped), headers)
        elif self.settings.pack <= 1:
            # Lone facts, one envelope each: no chains to build or pack. Built with
            # C-level map/zip (no Python frame per message): ~0.1 µs a message less
            # than a comprehension calling Message() (PROFILE.md §17).
            ids = list(map(_HASH, refs))
            messages = list(
                map(_new_message, zip(map(encode_one, facts), ids, ids, repeat(headers)))
            )
        else:
            messages = self._messages([[fact] for fact in facts], headers)
        if self._tracing is not None:
            with self._tracing.publishing(headers, [m.message_id for m in messages]):
                messages = [Message(m.body, m.message_id, m.key, headers) for m in messages]
                await self.transport.publish(self.settings.topic, messages)
        else:
            await self.transport.publish(self.settings.topic, messages)
        if self._record_at_once is not None:
            self._record_at_once(shipped)
            return refs
        self._published.add_all(shipped)
        self.pipeline.pending_published.extend(shipped)
        if not self._store_lock.locked():
            await self._record_published()
        return refs

    def _messages(self, chains: Sequence[list[Fact]], headers: dict[str, str]) -> list[Message]:
        """The messages of ``chains`` packed into envelopes (:func:`pack_chains`)."""
        settings = self.settings
        return [
            Message(encode(envelope), envelope[-1].hash, envelope[-1].hash, headers)
            for envelope in pack_chains(chains, settings.pack, settings.max_envelope_bytes)
        ]

    async def _chains(self, facts: Sequence[Fact], shipped: set[FactRef]) -> list[list[Fact]]:
        """Each fact's chain: those of its ancestors (given as Fact objects) that
        this node has not published before nor ships earlier in this call, in
        topological order, then the fact. Adds what it ships to ``shipped``."""
        known = await self._known_published(facts)
        sent: set[FactRef] = set(known)
        chains: list[list[Fact]] = []
        for fact in facts:
            chain = [a for a in _ancestors(fact) if a.ref not in sent]
            sent.update(a.ref for a in chain)
            chain = topological(chain)
            chain.append(fact)
            sent.add(fact.ref)
            chains.append(chain)
        shipped.update(sent)
        return chains

    async def _known_published(self, facts: Sequence[Fact]) -> set[FactRef]:
        return await self.published({a.ref for fact in facts for a in _ancestors(fact)})

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        """Those of ``refs`` that this node has published: the one place that
        answers it (ancestors shipped once, the sidecar's known predecessors).

        Read contract: a ref counts from the moment a :meth:`publish` that
        shipped it returned, whether or not the store has recorded it yet. A
        memory store records them as :meth:`publish` returns (no transaction).
        With the other stores, while a pipeline step holds the store, published
        refs wait in ``pipeline.pending_published`` and are written with that
        step's transaction or the next flush; a ref leaves that list only once
        its transaction committed, so it is always in memory or in the store.
        The recent-published cache and the waiting refs answer first, the store
        answers for the rest. (What the store persists, and when, is unchanged:
        see :class:`~factbus.store.base.StoreBatch`.)
        """
        wanted = set(refs)
        known = self._published.known(wanted)
        rest = wanted - known
        pending = self.pipeline.pending_published
        if rest and pending:
            known.update(ref for ref in pending if ref in rest)
            rest -= known
        if rest:
            known |= await self.store.published(rest)
        return known

    async def _record_published(self, *, closing: bool = False) -> None:
        """Write the waiting published refs; a store failure is logged and counted,
        never raised: their facts are on the broker, so the publish (or the close)
        that writes them succeeded. The refs stay waiting for the next attempt;
        on ``closing`` there is none, and this node forgets having published
        them (a later publish may ship them again as ancestors: consumers drop
        the duplicates)."""
        try:
            await self._flush_published()
        except Exception as error:
            self.pipeline.stats.publish_record_failures += 1
            waiting = len(self.pipeline.pending_published)
            if closing:
                self._log.error(
                    "published refs not recorded in the store; forgotten on close",
                    refs=waiting,
                    error=repr(error),
                )
            else:
                self._log.warning(
                    "published refs not recorded in the store; kept to retry",
                    refs=waiting,
                    error=repr(error),
                )

    async def _flush_published(self) -> None:
        pending = self.pipeline.pending_published
        if not pending:
            return
        async with self._store_lock:
            published = pending[:]
            if not published:
                return
            async with self.store.transaction() as tx:
                await tx.record(StoreBatch(published=published))
            # Only once committed (see `published`): publish may have appended meanwhile.
            del pending[: len(published)]

    # -- consuming ----------------------------------------------------------

    @property
    def stats(self) -> PipelineStats:
        return self.pipeline.stats

    @property
    def consumer(self) -> asyncio.Task[None] | None:
        """The task consuming deliveries, once :meth:`start` ran on a consuming bus
        (``None`` before, on a publish-only bus, and after :meth:`aclose`). It ends
        only when the bus stops; an exception it ends with is why the bus failed."""
        return self._consumer

    def rename(self, node: str) -> None:
        """Give this bus another node name (``producer`` header, logs, and the
        fan-out group), before :meth:`start`. ``factbus worker`` names each of
        its worker processes this way.

        :raises RuntimeError: the bus has started.
        """
        if self._started:
            raise RuntimeError(f"cannot rename a started bus to {node!r}")
        self.settings = dataclasses.replace(self.settings, node=node)
        self._log = self._log.bind(node=node)

    @property
    def caught_up(self) -> bool:
        """True while the bus consumes and its latest receive found nothing waiting:
        subscribed, with no backlog at the broker (what a readiness probe asks).

        False before :meth:`start`, after :meth:`aclose`, and while deliveries keep
        coming. Facts parked for a missing predecessor do not count as backlog.
        """
        return self._caught_up and self._consumer is not None and not self._consumer.done()

    async def _consume(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        batch_size = self.settings.batch_size
        linger = self.settings.linger
        failures = 0
        last_sweep = time.monotonic()
        while not self._stopping.is_set():
            try:
                batch = await take_batch(subscription, batch_size, timeout=IDLE_TICK)
            except FatalTransportError as error:
                self._log.error("receiving failed for good; the bus stops", error=str(error))
                raise
            except Exception:
                self._log.exception("receiving failed; retrying")
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                failures += 1
                continue
            self._caught_up = not batch
            if not batch:
                if self.pipeline.shared_store and time.monotonic() - last_sweep > SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    try:
                        await self.pipeline.sweep()
                    except Exception:
                        self._log.exception("sweep of parked facts failed")
                async with self._idle:
                    self._idle_ticks += 1
                    self._idle.notify_all()
                continue
            if linger and len(batch) < batch_size:
                await asyncio.sleep(linger)
                with contextlib.suppress(Exception):
                    batch.extend(await take_batch(subscription, batch_size - len(batch), timeout=0))
            observer = self._instrumentation
            started = time.perf_counter()
            try:
                await self.pipeline.step(batch)
                failures = 0
                if observer is not None:
                    observer.step_done(time.perf_counter() - started)
            except Exception as error:
                if observer is not None:
                    observer.step_done(time.perf_counter() - started)
                failures += 1
                fatal = isinstance(error, FatalTransportError)
                self._log.exception(
                    "pipeline step failed; deliveries go back to the broker"
                    + ("; the bus stops" if fatal else "")
                )
                with contextlib.suppress(Exception):  # already settled, or connection gone
                    await batch.nack(requeue=True)
                if fatal:
                    raise
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def drain(self, timeout: float = 30.0) -> None:
        """Return when every fact received so far is handled or parked.

        Waits until the consumer has found nothing new for a full idle period
        that began after this call.

        :raises TimeoutError: not drained within ``timeout`` seconds.
        """
        if self._consumer is None:
            return
        async with asyncio.timeout(timeout):
            async with self._idle:
                start = self._idle_ticks
                await self._idle.wait_for(lambda: self._idle_ticks >= start + 2)
            if self._consumer.done():
                self._consumer.result()

    def __repr__(self) -> str:
        return (
            f"Bus(transport={redact(self.settings.transport)!r}, "
            f"store={redact(self.settings.store_url)!r}, node={self.settings.node_name!r})"
        )


def _ancestors(fact: Fact) -> list[Fact]:
    """Every ancestor reachable through predecessors given as Fact objects."""
    seen: dict[FactRef, Fact] = {}
    stack = list(fact.ancestors_given)
    while stack:
        current = stack.pop()
        if current.ref in seen:
            continue
        seen[current.ref] = current
        stack.extend(current.ancestors_given)
    return list(seen.values())


_REF = attrgetter("ref")
_ANCESTORS_GIVEN = attrgetter("ancestors_given")
_HASH = itemgetter(1)
_new_message: Callable[[tuple[bytes, str, str, Mapping[str, str]]], Message] = partial(
    tuple.__new__, Message
)
"""``Message(body, message_id, key, headers)`` from one tuple, in C (``Message``
is a named tuple: ``tuple.__new__`` is what its own constructor calls)."""


ENVELOPE_OVERHEAD = len(b'{"v":1,"facts":[]}')
"""Bytes of an envelope around its facts (plus one comma between two facts)."""


def pack_chains(chains: Sequence[list[Fact]], pack: int, max_bytes: int) -> list[list[Fact]]:
    """The envelopes of one publish call: each fact's chain (its unshipped
    ancestors, then the fact), consecutive chains together while an envelope
    holds at most ``pack`` facts and ``max_bytes`` bytes; a chain never splits
    (it goes alone when it is larger). The facts keep their order, so every
    envelope stays topological. ``pack`` 1: one envelope per chain, as before.
    """
    if pack <= 1:
        return [list(chain) for chain in chains]
    envelopes: list[list[Fact]] = []
    current: list[Fact] = []
    size = ENVELOPE_OVERHEAD
    for chain in chains:
        length = sum(len(f.wire_bytes()) + 1 for f in chain)
        if current and (len(current) + len(chain) > pack or size + length > max_bytes):
            envelopes.append(current)
            current, size = [], ENVELOPE_OVERHEAD
        current.extend(chain)
        size += length
    if current:
        envelopes.append(current)
    return envelopes
