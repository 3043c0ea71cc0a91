"""
One logical subscription of a L{relaypool.upstream.relaypool.RelayPool} over several
relays: event delivery once per event, EOSE merged across relays with a
timeout, and a bounded buffer for L{Subscription.next}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from relaypool.errors import SubscriptionClosed
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter


class SubscriptionOwner(Protocol):
    """
    What a L{Subscription} needs from the pool that made it.
    """

    @property
    def reactor(self) -> IReactorTime:
        """Schedules the EOSE timeout."""

    def _subscriptionClosed(self, subscription: Subscription) -> None:
        """The subscription closed: close it on the relays."""

    def _pressure(self, change: int) -> None:
        """A consumer buffer became full (+1) or drained (-1)."""


class Subscription:
    """
    One logical subscription over several relays.

    Consume events with L{onEvent} callbacks, or with L{next} when no callback
    is set (events then wait in a buffer of at most C{bufferSize}; while it is
    full the pool pauses reading from its relays).

    @ivar routes: for a subscription the outbox model routes, the part of
        its filters each relay got (empty until its authors' relay lists
        are known); L{None} for the others.
    """

    def __init__(
        self,
        pool: SubscriptionOwner,
        subscriptionId: str,
        filters: tuple[Filter, ...],
        relayURLs: frozenset[str],
        closeOnEOSE: bool,
        bufferSize: int,
    ) -> None:
        self.subscriptionId = subscriptionId
        self.filters = filters
        self.relayURLs = relayURLs
        self.closeOnEOSE = closeOnEOSE
        self.routes: dict[str, tuple[Filter, ...]] | None = None
        self.closed = False
        self.eosed = False
        self._pool = pool
        self._bufferSize = bufferSize
        self._eventCallbacks: list[Callable[[Event, str], None]] = []
        self._eoseCallbacks: list[Callable[[], None]] = []
        self._eoseWaiters: list[Deferred[None]] = []
        self._buffer: deque[tuple[Event, str]] = deque()
        self._nextWaiters: deque[Deferred[Event | None]] = deque()
        self._waitingFor: set[str] = set()
        self._timeoutCall: Any = None
        self._full = False

    def onEvent(self, callback: Callable[[Event, str], None]) -> None:
        """
        Call C{callback(event, relayURL)} for each event, once per event.
        Events buffered before the first callback was added are given to it
        at once.
        """
        self._eventCallbacks.append(callback)
        while self._buffer:
            callback(*self._buffer.popleft())
        self._setFull(False)

    def onEOSE(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback()} when the subscription reaches EOSE (at once if it
        already has).
        """
        if self.eosed:
            callback()
        else:
            self._eoseCallbacks.append(callback)

    def whenEOSE(self) -> Deferred[None]:
        """
        @return: a Deferred firing once every relay that was connected (or
            connecting) sent EOSE or CLOSED, or the EOSE timeout passed.
        """
        if self.eosed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._eoseWaiters.append(d)
        return d

    def next(self) -> Deferred[Event | None]:
        """
        @return: a Deferred firing with the next event, or with L{None} once
            the subscription is closed and its buffer empty.
        """
        if self._buffer:
            event = self._buffer.popleft()[0]
            if len(self._buffer) < self._bufferSize // 2:
                self._setFull(False)
            return succeed(event)
        if self.closed:
            return succeed(None)
        d: Deferred[Event | None] = Deferred()
        self._nextWaiters.append(d)
        return d

    def close(self) -> None:
        """
        Close the subscription on every relay. Idempotent.
        """
        if self.closed:
            return
        self.closed = True
        self._cancelTimeout()
        self._pool._subscriptionClosed(self)
        self._setFull(False)
        while self._nextWaiters:
            self._nextWaiters.popleft().callback(None)
        if not self.eosed:
            waiters, self._eoseWaiters = self._eoseWaiters, []
            for d in waiters:
                d.errback(SubscriptionClosed(f"subscription {self.subscriptionId} closed before EOSE"))

    # --- driven by the pool -------------------------------------------------

    def _deliver(self, event: Event, relayURL: str) -> None:
        if self._eventCallbacks:
            for callback in list(self._eventCallbacks):
                callback(event, relayURL)
        elif self._nextWaiters:
            self._nextWaiters.popleft().callback(event)
        else:
            self._buffer.append((event, relayURL))
            if len(self._buffer) >= self._bufferSize:
                self._setFull(True)

    def _setFull(self, full: bool) -> None:
        if full != self._full:
            self._full = full
            self._pool._pressure(+1 if full else -1)

    def _startWaiting(self, relayURLs: Iterable[str], timeout: float) -> None:
        self._waitingFor = set(relayURLs)
        if timeout > 0:
            self._timeoutCall = self._pool.reactor.callLater(timeout, self._reachEOSE)
        self._checkEOSE()

    def _waitAlso(self, relayURLs: Iterable[str]) -> None:
        """
        Wait for the EOSE of C{relayURLs} too, unless EOSE was reached.
        """
        if not self.eosed and not self.closed:
            self._waitingFor.update(relayURLs)

    def _relayDone(self, relayURL: str) -> None:
        self._waitingFor.discard(relayURL)
        self._checkEOSE()

    def _checkEOSE(self) -> None:
        if not self._waitingFor:
            self._reachEOSE()

    def _reachEOSE(self) -> None:
        self._cancelTimeout()
        if self.eosed or self.closed:
            return
        self.eosed = True
        self._waitingFor.clear()
        callbacks, self._eoseCallbacks = self._eoseCallbacks, []
        waiters, self._eoseWaiters = self._eoseWaiters, []
        if self.closeOnEOSE:
            # Before anyone hears of the EOSE, so what they send next
            # follows our CLOSE on the wire.
            self.close()
        for callback in callbacks:
            callback()
        for d in waiters:
            d.callback(None)

    def _cancelTimeout(self) -> None:
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None


__all__ = [
    "Subscription",
    "SubscriptionOwner",
]
