"""One store transaction's facts, handed over once before it commits.

The sidecar's writers (the views, the fact archive) register a catch-all
handler that only collects; the work is done set-wise for the whole pipeline
step, in the step's store transaction, so that it commits with the facts'
handled marks or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from factbus.dispatcher import current_transaction
from factbus.fact import Fact

if TYPE_CHECKING:
    from factbus.store.base import StoreTransaction

__all__ = ["TransactionCollector"]


class TransactionCollector:
    """Gathers the facts :meth:`collect` sees during each store transaction and
    calls ``flush(tx, facts)`` once, from that transaction's before-commit hook
    (facts in handling order, so causal order). What ``flush`` writes through
    ``tx.connection`` commits with the handled marks; if it raises, the
    transaction rolls back.

    Register :meth:`collect` as a catch-all handler: ``bus.handler("*")(c.collect)``.
    """

    def __init__(self, flush: Callable[[StoreTransaction, list[Fact]], Awaitable[None]]) -> None:
        self._flush = flush
        self._tx: StoreTransaction | None = None
        self._batch: list[Fact] = []

    def collect(self, fact: Fact) -> None:
        """The handler: keep ``fact`` for its transaction's flush."""
        tx = current_transaction()
        if tx is not self._tx:
            self._tx = tx
            self._batch = []
            tx.before_commit(functools.partial(self._hand_over, tx, self._batch))
        self._batch.append(fact)

    async def _hand_over(self, tx: StoreTransaction, batch: list[Fact]) -> None:
        self._tx = None
        await self._flush(tx, batch)
