"""
The COUNT quorum: one NIP-45 COUNT asked of several relays.

A L{CountQuorum} knows nothing of connections: the pool tells it which
relays it asked (L{CountQuorum.ask}), then each relay's count
(L{CountQuorum.relayAnswered}) or that the relay will not count
(L{CountQuorum.relayGone}: it closed the COUNT, cannot count, disconnected
or left the pool). It finishes once, when no relay is left to wait for or at
its timeout, with the largest count, or with its fallback when no relay
counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaypool.errors import CountUnavailable, PoolClosed
from relaypool.upstream.results import CountResult

__all__ = ["CountQuorum"]


class CountQuorum:
    """
    One COUNT: the relays it waits for and the counts they gave.

    Its L{result} fires once, when it finishes: with the largest relay
    count (approximate if any relay said so or more than one relay
    counted, since their counts may overlap); when no relay counted, with
    what C{fallback} gives, or failing with L{CountUnavailable} when there
    is no fallback (with L{PoolClosed} when it finished because the pool
    stopped).

    @ivar countId: the subscription id of the COUNT on the relays.
    @ivar result: the Deferred firing with the L{CountResult}.
    @ivar finished: whether it stopped waiting.
    """

    def __init__(
        self,
        clock: IReactorTime,
        countId: str,
        timeout: float,
        onFinish: Callable[[CountQuorum], object],
        fallback: Callable[[], Deferred[CountResult]] | None = None,
    ) -> None:
        """
        @param clock: schedules the timeout.
        @param timeout: seconds after which it stops waiting.
        @param onFinish: called with this quorum once, when it finishes,
            before L{result} fires; L{outstanding} then names the relays
            that stayed silent.
        @param fallback: what gives the count when no relay counted, or
            L{None} to fail with L{CountUnavailable} then.
        """
        self.countId = countId
        self.result: Deferred[CountResult] = Deferred()
        self.finished = False
        self._outstanding: set[str] = set()
        self._counts: dict[str, int] = {}
        self._approximate = False
        self._onFinish = onFinish
        self._fallback = fallback
        self._timeoutCall: IDelayedCall | None = clock.callLater(timeout, self.finish)

    @property
    def outstanding(self) -> frozenset[str]:
        """
        The relays it still waits for.
        """
        return frozenset(self._outstanding)

    def ask(self, relays: Sequence[str], send: Callable[[str], object]) -> None:
        """
        Wait for C{relays}, asking each with C{send} (which may report at
        once that the relay will not count); finish at once if none is left.
        """
        self._outstanding.update(relays)
        for url in relays:
            send(url)
        if not self._outstanding:
            self.finish()

    def relayAnswered(self, url: str, count: int, approximate: bool) -> None:
        """
        C{url} counted C{count} events (C{approximate}ly, if it says so).
        """
        if self.finished:
            return
        self._counts[url] = count
        self._approximate = self._approximate or approximate
        self.relayGone(url, "counted")

    def relayGone(self, url: str, reason: str) -> None:
        """
        C{url} will not answer (any more): it closed or refused the COUNT,
        disconnected, left the pool, or answered. It finishes when no relay
        is left to wait for.
        """
        if self.finished or url not in self._outstanding:
            return
        self._outstanding.discard(url)
        if not self._outstanding:
            self.finish()

    def finish(self, closing: bool = False) -> None:
        """
        Stop waiting (every relay answered or went, the timeout passed, or
        the pool stops, C{closing}): call C{onFinish}, then fire L{result}.
        """
        if self.finished:
            return
        self.finished = True
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None
        self._onFinish(self)
        if self._counts:
            self.result.callback(
                CountResult(
                    max(self._counts.values()),
                    self._approximate or len(self._counts) > 1,
                    dict(self._counts),
                )
            )
        elif closing:
            self.result.errback(PoolClosed("the relay pool stopped"))
        elif self._fallback is None:
            self.result.errback(CountUnavailable("no connected relay answered the COUNT"))
        else:
            self._fallback().chainDeferred(self.result)
