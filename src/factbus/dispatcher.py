"""Routes each ready fact to the handlers registered for its type.

Per handler, each attempt runs through the user's middleware chain (outermost
first), then the handler; a failed attempt is retried with exponential backoff
and, when all attempts fail, :class:`HandlerFailed` says why. Async handlers
can be given a timeout per attempt. Sync handlers run on the event-loop thread
(fast; they must not block for long); ``thread=True`` runs one in a worker
thread instead.

A handler registered for :data:`ANY_TYPE` (``"*"``) is a catch-all: it runs
for every fact, after the handlers of the fact's own type (so a catch-all that
records what was handled, such as the sidecar's fact archive, sees a fact only
once its type's handlers succeeded), in registration order among catch-alls.

Transactional handlers receive the store transaction's connection as second
argument; each attempt runs in a savepoint, so a failed attempt leaves no rows
behind and a successful one commits with the handled mark.

While a fact is dispatched, :func:`current_transaction` returns the store
transaction it is handled in, so a handler may register commit hooks
(``before_commit`` to write a whole step's effects at once, ``after_commit``
to notify others once they are durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from factbus.errors import FactbusError
from factbus.fact import Fact
from factbus.observer import PipelineObserver
from factbus.store.base import StoreTransaction

Handler = Callable[..., Any]
ANY_TYPE = "*"
"""Register a handler for this type to have it run for every fact (a catch-all)."""
Next = Callable[[Fact], Awaitable[None]]


_TRANSACTION: contextvars.ContextVar[StoreTransaction | None] = contextvars.ContextVar(
    "factbus_transaction", default=None
)


def current_transaction() -> StoreTransaction:
    """The store transaction of the fact being dispatched (call it from a handler).

    :raises RuntimeError: called outside a dispatch.
    """
    tx = _TRANSACTION.get()
    if tx is None:
        raise RuntimeError("current_transaction() is only available inside a handler")
    return tx


class Middleware(Protocol):
    """Wraps each handler attempt: call ``call_next(fact)`` to go on; raise to fail it."""

    async def __call__(self, fact: Fact, call_next: Next) -> None: ...


class HandlerFailed(FactbusError):
    """A handler that failed on every attempt; the fact is dead-lettered."""

    def __init__(self, fact: Fact, handler: str, attempts: int, error: BaseException) -> None:
        reason = (
            f"handler {handler} failed {attempts}x on {fact.ref}: {type(error).__name__}: {error}"
        )
        super().__init__(reason)
        self.reason = reason
        self.error = error


class DispatchTimings:
    """What the dispatcher records per dispatched fact when metrics are on: the
    fact and the seconds its handlers took (retries included), in two parallel
    lists, and the facts whose handlers failed. Parallel lists of existing
    objects and floats allocate nothing the garbage collector tracks."""

    __slots__ = ("facts", "failed", "seconds")

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.seconds: list[float] = []
        self.failed: list[Fact] = []

    def clear(self) -> None:
        self.facts.clear()
        self.seconds.clear()
        self.failed.clear()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per handler and the waits between them."""

    attempts: int = 3
    backoff: float = 0.05
    backoff_max: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff * (2 ** (attempt - 1)), self.backoff_max))


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler."""

    fact_type: str
    func: Handler
    name: str
    is_async: bool
    transactional: bool
    thread: bool


class Dispatcher:
    """Handler registry and invocation (see the module docstring for the contract)."""

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.timeout = timeout or None
        self.middleware: list[Middleware] = list(middleware)
        self._handlers: dict[str, list[HandlerSpec]] = defaultdict(list)
        self._plain: dict[str, list[Handler] | None] = {}
        self.timings: DispatchTimings | None = None
        """Set (metrics are on): each dispatch is recorded there. Whoever set it
        empties it (once per pipeline step)."""

    def register(
        self,
        fact_type: str,
        func: Handler,
        *,
        transactional: bool = False,
        thread: bool = False,
    ) -> HandlerSpec:
        is_async = inspect.iscoroutinefunction(func)
        if thread and is_async:
            raise ValueError(f"{func!r}: thread=True is for sync handlers")
        spec = HandlerSpec(
            fact_type,
            func,
            getattr(func, "__qualname__", repr(func)),
            is_async,
            transactional,
            thread,
        )
        self._handlers[fact_type].append(spec)
        self._plain.clear()
        return spec

    def observe(self, observer: PipelineObserver | None) -> None:
        """Route every dispatch through ``observer.dispatch`` (tracing wraps each
        fact's handlers in a span); ``None``: stop.

        Without an observer :meth:`dispatch` is the plain method: no per-fact cost.
        """
        if observer is None:
            self.__dict__.pop("dispatch", None)
            return
        plain = type(self).dispatch

        async def observed(fact: Fact, tx: StoreTransaction) -> None:
            if self.handlers_for(fact.type):
                await observer.dispatch(fact, plain(self, fact, tx))

        self.dispatch = observed  # type: ignore[method-assign]

    def plain_handlers(self, fact_type: str) -> list[Handler] | None:
        """The handlers of ``fact_type`` when a plain call runs them exactly as
        :meth:`dispatch` would on a first attempt: every one sync, not
        transactional, not in a thread, and no middleware, observer or timings.
        The pipeline then calls them without a coroutine per fact (and calls
        :meth:`resume` if one raises). ``None``: use :meth:`dispatch`."""
        if self.middleware or self.timings is not None or "dispatch" in self.__dict__:
            return None
        funcs = self._plain.get(fact_type)
        if funcs is None and fact_type not in self._plain:
            specs = self.handlers_for(fact_type)
            plain = all(not (s.is_async or s.transactional or s.thread) for s in specs)
            funcs = self._plain[fact_type] = [s.func for s in specs] if plain else None
        return funcs

    async def resume(self, fact: Fact, tx: StoreTransaction, index: int, error: Exception) -> None:
        """After ``plain_handlers(fact.type)[index]`` raised ``error`` on its first
        attempt: its further attempts, then the handlers after it, as
        :meth:`dispatch` goes on.

        :raises HandlerFailed: as :meth:`dispatch`.
        """
        specs = self.handlers_for(fact.type)
        token = _TRANSACTION.set(tx)
        try:
            await self._retry(specs[index], fact, tx, error)
            await self._run(specs[index + 1 :], fact, tx)
        finally:
            _TRANSACTION.reset(token)

    @contextlib.contextmanager
    def bound(self, tx: StoreTransaction) -> Iterator[None]:
        """:func:`current_transaction` is ``tx`` inside (for handlers called plainly)."""
        token = _TRANSACTION.set(tx)
        try:
            yield
        finally:
            _TRANSACTION.reset(token)

    def handlers_for(self, fact_type: str) -> list[HandlerSpec]:
        """The handlers a fact of ``fact_type`` runs through: its type's, then catch-alls."""
        own = self._handlers.get(fact_type, [])
        if fact_type == ANY_TYPE:
            return own
        catch_all = self._handlers.get(ANY_TYPE)
        return [*own, *catch_all] if catch_all else own

    async def dispatch(self, fact: Fact, tx: StoreTransaction) -> None:
        """Run every handler of ``fact.type`` on ``fact``, in registration order,
        then every catch-all (``"*"``) handler.

        :raises HandlerFailed: a handler failed on every attempt (handlers after
            it are not run).
        """
        specs = self.handlers_for(fact.type)
        if not specs:
            return
        token = _TRANSACTION.set(tx)
        timings = self.timings
        start = perf_counter() if timings is not None else 0.0
        ok = False
        try:
            await self._run(specs, fact, tx)
            ok = True
        finally:
            _TRANSACTION.reset(token)
            if timings is not None:
                timings.facts.append(fact)
                timings.seconds.append(perf_counter() - start)
                if not ok:
                    timings.failed.append(fact)

    async def _run(self, specs: list[HandlerSpec], fact: Fact, tx: StoreTransaction) -> None:
        for spec in specs:
            if (
                not self.middleware
                and not spec.transactional
                and not spec.thread
                and not spec.is_async
            ):
                try:
                    spec.func(fact)  # fast path: a plain sync handler, first attempt
                    continue
                except Exception as error:
                    await self._retry(spec, fact, tx, error)
                    continue
            await self._attempts(spec, fact, tx)

    async def _retry(
        self, spec: HandlerSpec, fact: Fact, tx: StoreTransaction, error: Exception
    ) -> None:
        if self.retry.attempts <= 1:
            raise HandlerFailed(fact, spec.name, 1, error) from error
        await asyncio.sleep(self.retry.delay(1))
        await self._attempts(spec, fact, tx, first=2)

    async def _attempts(
        self, spec: HandlerSpec, fact: Fact, tx: StoreTransaction, first: int = 1
    ) -> None:
        attempt = first
        while True:
            try:
                await self._chain(spec, tx)(fact)
                return
            except Exception as error:
                if attempt >= self.retry.attempts:
                    raise HandlerFailed(fact, spec.name, attempt, error) from error
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1

    def _chain(self, spec: HandlerSpec, tx: StoreTransaction) -> Next:
        async def invoke(fact: Fact) -> None:
            if spec.transactional:
                async with tx.savepoint():
                    await self._call(spec, fact, tx.connection)
            else:
                await self._call(spec, fact)

        call: Next = invoke
        for middleware in reversed(self.middleware):
            call = _bind(middleware, call)
        return call

    async def _call(self, spec: HandlerSpec, fact: Fact, *extra: Any) -> None:
        if spec.is_async:
            if self.timeout:
                async with asyncio.timeout(self.timeout):
                    await spec.func(fact, *extra)
            else:
                await spec.func(fact, *extra)
        elif spec.thread:
            if self.timeout:
                async with asyncio.timeout(self.timeout):
                    await asyncio.to_thread(spec.func, fact, *extra)
            else:
                await asyncio.to_thread(spec.func, fact, *extra)
        else:
            spec.func(fact, *extra)


def _bind(middleware: Middleware, call_next: Next) -> Next:
    async def step(fact: Fact) -> None:
        await middleware(fact, call_next)

    return step
