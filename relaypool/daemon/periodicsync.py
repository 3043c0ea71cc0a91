"""
The daemon's periodic sync: the configured filters reconciled (NIP-77) with
every relay of the pool, every C{sync-interval} seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from relaypool.daemon.interval import IntervalService
from relaypool.nostr.filter import Filter
from relaypool.upstream.relaypool import RelayPool
from relaypool.upstream.results import SyncResult

__all__ = ["PeriodicSync"]


class PeriodicSync(IntervalService):
    """
    Runs L{RelayPool.sync} over C{filters} every C{interval} seconds while
    running (the first one an interval after the start), and logs one line
    per relay. A sync that outlasts the interval delays the next one rather
    than overlapping it.
    """

    what = "the periodic sync"

    def __init__(
        self,
        pool: RelayPool,
        filters: Sequence[Filter],
        interval: float,
        direction: str = "down",
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(interval, reactor)
        self._pool = pool
        self._filters = tuple(filters)
        self._direction = direction

    def tick(self) -> Deferred[None]:
        """
        Sync every filter with every relay now; log the outcome.
        """
        return self._pool.sync(self._filters, direction=self._direction).addCallback(self._report)

    def _report(self, results: dict[str, SyncResult]) -> None:
        for url, result in sorted(results.items()):
            self.log.info(
                "sync {url} ({direction}) by {method}: relay lacks {have}, store lacks {need}; "
                "{fetched} fetched, {sent} sent{fallback}{errors}",
                url=url,
                direction=self._direction,
                method=result.method,
                have=result.have,
                need=result.need,
                fetched=result.fetched,
                sent=result.sent,
                fallback=f" ({result.fallback})" if result.fallback else "",
                errors="".join(f"; {error}" for error in result.errors),
            )
