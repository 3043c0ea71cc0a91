"""
A service that does one thing every so many seconds while it runs.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaypool._reactor import defaultReactor

__all__ = ["IntervalService"]


class IntervalService(service.Service):
    """
    Calls L{tick} every C{interval} seconds while running, the first time
    one interval after the start, on one L{LoopingCall}; a L{tick} returning
    a Deferred delays the next one until it fires. Unlike Twisted's
    C{TimerService}, nothing runs at the start, when the relays have not
    connected yet.

    @cvar what: what the ticks do, for the line logged if one fails.
    """

    log = Logger()
    what = "a periodic task"

    def __init__(self, interval: float, reactor: IReactorTime | None = None) -> None:
        """
        @param interval: seconds between two ticks.
        @param reactor: an L{IReactorTime}; C{None} means the global reactor.
        """
        self._interval = interval
        self._loop = LoopingCall(self.tick)
        self._loop.clock = defaultReactor(reactor)

    def tick(self) -> Any:
        """
        Do the periodic thing once.
        """
        raise NotImplementedError(f"{type(self).__name__} must define tick")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: self.log.failure("{what} stopped", f, what=self.what)
        )

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()
