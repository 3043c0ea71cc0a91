"""
Event verification on worker threads, so that the reactor thread parses
while another core checks signatures (coincurve releases the GIL while it
verifies).

A L{Verifier} collects the events it is given during a reactor iteration
and hands them to its thread pool as one batch when the iteration ends (one
hand-off each way per batch, not per event); each batch's results come back
to the reactor thread through L{deferToThreadPool}. It bounds
nothing itself: its owner (the L{relaypool.upstream.relaypool.RelayPool})
bounds how many events it has waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from relaypool.errors import InvalidEvent
from relaypool.nostr.event import Event

log = Logger()


class ThreadsReactor(Protocol):
    """
    What a L{Verifier} needs of its reactor: to schedule the end-of-iteration
    hand-off and to get results back from its threads.
    """

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall: ...

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


class WorkerPool(Protocol):
    """
    The part of L{ThreadPool} a L{Verifier} uses.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None: ...


def checkEvent(event: Event) -> str | None:
    """
    Check C{event}'s id and signature (L{Event.verify}).

    @return: L{None} if they are right, else what is wrong (C{"error:
        ..."} if the check itself failed, so that a worker thread never
        dies of it).
    """
    try:
        event.verify()
    except InvalidEvent as e:
        return str(e)
    except Exception as e:
        return f"error: could not check the event ({e!r})"
    return None


def verifyBatch(events: Sequence[Event]) -> list[str | None]:
    """
    Check each event (L{checkEvent}); this is what a worker thread runs.

    @return: for each event in order, L{None} if it is valid, else why not.
    """
    return [checkEvent(event) for event in events]


class Verifier:
    """
    Verifies events on a thread pool of its own, in batches.

    @param reactor: the reactor the results come back to.
    @param verified: called on the reactor thread with each batch of events
        and, for each, L{None} if valid or the reason it is not (with
        several threads, batches may come back out of order).
    @param threads: how many worker threads verify.
    @param workers: the thread pool to use instead of a new L{ThreadPool}
        of C{threads} threads (for tests); the verifier starts and stops it.
    """

    def __init__(
        self,
        reactor: ThreadsReactor,
        verified: Callable[[list[Event], list[str | None]], None],
        threads: int = 1,
        workers: WorkerPool | None = None,
    ) -> None:
        if workers is None:
            workers = ThreadPool(minthreads=threads, maxthreads=threads, name="relaypool-verify")
        self._reactor = reactor
        self._verified = verified
        self._workers = workers
        self._collected: list[Event] = []
        self._handOff: IDelayedCall | None = None
        self._inFlight: list[Deferred[None]] = []
        self._running = False

    def start(self) -> None:
        """
        Start the worker threads.
        """
        self._running = True
        self._workers.start()

    def stop(self) -> Deferred[None]:
        """
        Drop the events not handed over yet, wait for the batches in the
        threads (their results are dropped too) and stop the threads.

        @return: a Deferred firing once the threads have ended.
        """
        if not self._running:
            return succeed(None)
        self._running = False
        self._collected = []
        if self._handOff is not None and self._handOff.active():
            self._handOff.cancel()
        self._handOff = None
        done: Deferred[Any] = DeferredList(self._inFlight, consumeErrors=True)
        return done.addCallback(lambda _: self._workers.stop())

    def verify(self, event: Event) -> None:
        """
        Verify C{event} in a worker thread; its result comes back with its
        batch, handed over at the end of this reactor iteration.
        """
        self._collected.append(event)
        if self._handOff is None:
            self._handOff = self._reactor.callLater(0, self._handOver)

    def _handOver(self) -> None:
        self._handOff = None
        batch, self._collected = self._collected, []
        working = deferToThreadPool(self._reactor, self._workers, verifyBatch, batch)  # type: ignore[arg-type]
        finished: Deferred[None] = working.addCallback(self._done, batch)
        finished.addErrback(lambda f: log.failure("verifying {n} events failed", f, n=len(batch)))
        self._inFlight.append(finished)
        finished.addBoth(self._landed, finished)

    def _done(self, errors: list[str | None], batch: list[Event]) -> None:
        if self._running:
            self._verified(batch, errors)

    def _landed(self, result: object, finished: Deferred[None]) -> object:
        self._inFlight.remove(finished)
        return result


__all__ = ["ThreadsReactor", "Verifier", "WorkerPool", "checkEvent", "verifyBatch"]
