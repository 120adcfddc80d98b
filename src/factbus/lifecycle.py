"""``async with`` for factbus's long-lived objects, defined once.

The bus, the sidecar, the archive, the Jinaga bridge and every transport that
derives from :class:`~factbus.transport.base.TransportBase` are used as
``async with obj: ...``; :class:`AsyncLifecycle` is that protocol's one
definition.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncLifecycle:
    """Base class: ``async with obj:`` opens ``obj`` on entry and closes it on exit.

    Entering awaits :meth:`_enter` (a subclass makes it its ``start``,
    ``connect`` or ``open``) and gives ``obj``. Leaving awaits :meth:`aclose`,
    whether or not the body raised, and never suppresses the body's exception.
    If entering raises, the body does not run and :meth:`aclose` is not awaited
    (Python's ``async with``). A subclass's :meth:`aclose` is idempotent.
    """

    async def _enter(self) -> None:
        """Open: what entering ``async with`` does before the body runs."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close: what leaving ``async with`` does. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
