"""
The outbox publisher: events accepted from downstream clients are written
to a durable outbox before they go upstream, and re-published with backoff
to every relay that has not accepted them yet, across restarts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool.errors import PublishFailed
from relaypool.interfaces import IOutbox
from relaypool.mux import Backoff
from relaypool.nostr.event import Event
from relaypool.relaypool import PublishResult, RelayPool
from relaypool.store import OutboxEntry, RelayDelivery

__all__ = ["RETRY_BACKOFF", "OutboxPublisher"]

_NO_ANSWER = "error: no OK from this relay"

RETRY_BACKOFF = Backoff(initial=5.0, maximum=600.0)
"""
The default delays between retries of one event to one relay.
"""


def _stableFraction(eventID: str, url: str, attempts: int) -> float:
    """
    The jitter of one retry: a fraction in [0, 1) fixed by the event, the
    relay and the attempt, so the due time of a retry is the same at every
    pass of the loop (and after a restart), yet differs between events.
    """
    digest = hashlib.sha256(f"{eventID} {url} {attempts}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class OutboxPublisher(service.Service):
    """
    Publishes events through a L{RelayPool} with an L{IOutbox} as the
    durable record, so that an event is never lost once L{submit} was
    called and its enqueueing committed.

    While running, one L{LoopingCall} reads the outbox every
    C{retryInterval} seconds and re-publishes each event to each relay that
    has not accepted it, is connected, and whose backoff is due: after
    C{n} recorded failures a relay is retried C{backoff.delay(n)} seconds
    after the last one. An event enqueued more than C{maxAge} seconds ago is
    discarded from the outbox, and logged. The loop runs at once on start,
    so that what a crash interrupted resumes as soon as relays connect.

    The outbox's clock (the store's times) must agree with the reactor's
    C{seconds()}, as wall-clock time does.

    Bounds: at most C{maxInFlight} retry publishes are in flight; the rest
    wait for a later pass. An event has at most one publish in flight at a
    time (the pool would merge a second one into the first).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        pool: RelayPool,
        outbox: IOutbox,
        quorum: int = 1,
        maxAge: float = 7 * 86400.0,
        backoff: Backoff = RETRY_BACKOFF,
        retryInterval: float = 5.0,
        maxInFlight: int = 100,
    ) -> None:
        """
        @param reactor: an L{IReactorTime}; C{None} means the global reactor.
        @param quorum: how many relays must accept an event for L{submit}'s
            result to succeed.
        @param maxAge: seconds after which an event not accepted by every
            relay is given up.
        @param backoff: the delays between retries to one relay.
        @param retryInterval: seconds between two reads of the outbox.
        @param maxInFlight: the most retry publishes in flight.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._pool = pool
        self._outbox = outbox
        self._quorum = quorum
        self._maxAge = maxAge
        self._backoff = backoff
        self._maxInFlight = maxInFlight
        self._publishing: Counter[str] = Counter()
        self._retrying = 0
        self._loop = LoopingCall(self.retryDue)
        self._loop.clock = reactor
        self._retryInterval = retryInterval

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self._retryInterval, now=True)

    def stopService(self) -> None:
        """
        Stop retrying. Publishes in flight still record their results.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()

    def retrying(self) -> int:
        """
        @return: how many retry publishes are in flight.
        """
        return self._retrying

    def submit(self, event: Event) -> Deferred[PublishResult]:
        """
        Enqueue C{event} for every relay of the pool, then publish it to
        them. The relays' answers are recorded in the outbox; the relays that
        did not accept it are retried in the background.

        @return: a Deferred firing with the pool's L{PublishResult} once
            C{quorum} relays accepted (C{succeeded} true), or once that became
            impossible or the publish timed out (C{succeeded} false). It fails
            if the event could not be enqueued (e.g. with
            L{relaypool.errors.QueueFull} from a full outbox), and then
            nothing was published.
        """
        relays = self._pool.relayURLs()
        self._publishing[event.id] += 1

        def notEnqueued(failure: Failure) -> Failure:
            self._release(event.id)
            return failure

        enqueued: Deferred[None] = self._outbox.enqueue(event, relays)  # type: ignore[no-untyped-call]
        enqueued.addErrback(notEnqueued)
        return enqueued.addCallback(lambda _: self._publish(event, relays, self._quorum))

    def _publish(self, event: Event, relays: Sequence[str], quorum: int) -> Deferred[PublishResult]:
        """
        Publish C{event} to C{relays} (already counted in C{_publishing}) and
        record their answers.

        The pool tells the answers it has when it fires: relays still
        outstanding after a successful quorum are not recorded (their later
        answers cannot be heard; the retry loop asks them again once their
        backoff is due, and a relay that did accept answers C{duplicate}
        with C{OK true}); after a failed one they are recorded as not having
        answered.

        @return: a Deferred firing with the L{PublishResult} once its answers
            are recorded.
        """

        def published(outcome: PublishResult | Failure) -> Deferred[PublishResult]:
            self._release(event.id)
            if isinstance(outcome, Failure):
                error = outcome.value
                if not isinstance(error, PublishFailed):
                    message = f"error: {outcome.getErrorMessage()}"
                    outcome = PublishResult(
                        event.id, quorum, {}, dict.fromkeys(relays, message), frozenset()
                    )
                else:
                    outcome = error.result
            assert isinstance(outcome, PublishResult)
            answers = [(url, True, message) for url, message in outcome.accepted.items()]
            answers += [(url, False, message) for url, message in outcome.rejected.items()]
            if not outcome.succeeded:
                answers += [(url, False, _NO_ANSWER) for url in outcome.timedOut]
            result = outcome
            recorded = [self._record(event.id, *answer) for answer in answers]
            return gatherResults(recorded).addCallback(lambda _: result)

        if not relays:
            self._release(event.id)
            return succeed(PublishResult(event.id, quorum, {}, {}, frozenset()))
        return maybeDeferred(self._pool.publish, event, quorum, relays=relays).addBoth(published)

    def _release(self, eventID: str) -> None:
        self._publishing[eventID] -= 1
        if self._publishing[eventID] <= 0:
            del self._publishing[eventID]

    def _record(self, eventID: str, url: str, accepted: bool, message: str) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            self.log.failure(
                "outbox: could not record {url}'s answer to {eventID}",
                failure,
                url=url,
                eventID=eventID,
            )

        recorded: Deferred[None] = self._outbox.recordResult(  # type: ignore[no-untyped-call]
            eventID, url, accepted, message
        )
        return recorded.addErrback(failed)

    def retryDue(self) -> Deferred[None]:
        """
        Make one pass over the outbox now (the loop makes one every
        C{retryInterval} seconds): discard the events older than C{maxAge},
        and publish each other event again to its connected relays whose
        backoff is due.

        @return: a Deferred firing when the pass is done: its publishes
            answered (or timed out) and their answers recorded. It never
            fails; errors are logged.
        """

        def failed(failure: Failure) -> None:
            self.log.failure("outbox: reading the outbox failed", failure)

        pending: Deferred[list[OutboxEntry]] = self._outbox.pending()  # type: ignore[no-untyped-call]
        return pending.addCallback(self._resume).addErrback(failed)

    def _isDue(self, entry: OutboxEntry, url: str, delivery: RelayDelivery, now: float) -> bool:
        """
        Whether C{url}'s backoff for C{entry} is over: C{backoff.delay(n)}
        after the last of C{n} failures; with no answer recorded yet, once
        the first publish surely finished (the pool's C{publishTimeout}) and
        C{backoff.initial} passed since enqueueing.
        """
        if delivery.accepted:
            return False
        fraction = _stableFraction(entry.event.id, url, delivery.attempts)
        delay = self._backoff.delay(delivery.attempts, lambda: fraction)
        if delivery.lastAttemptAt is None:
            return now >= entry.enqueuedAt + max(delay, self._pool.publishTimeout)
        return now >= delivery.lastAttemptAt + delay

    def _resume(self, entries: list[OutboxEntry]) -> Deferred[None]:
        now: float = self._reactor.seconds()
        active = set(self._pool.activeRelayURLs())
        work: list[Deferred[None]] = []
        for entry in entries:
            event = entry.event
            age = now - entry.enqueuedAt
            if age > self._maxAge:
                self.log.warn(
                    "outbox: gave up on event {eventID} after {age:.0f} s;"
                    " not accepted by {relays}",
                    eventID=event.id,
                    age=age,
                    relays=", ".join(u for u, d in sorted(entry.relays.items()) if not d.accepted),
                )
                work.append(self._outbox.discard(event.id))  # type: ignore[no-untyped-call]
                continue
            if self._retrying >= self._maxInFlight or event.id in self._publishing:
                continue
            due = [
                url
                for url, delivery in entry.relays.items()
                if url in active and self._isDue(entry, url, delivery, now)
            ]
            if due:
                work.append(self._retry(event, due))
        return gatherResults(work).addCallback(lambda _: None)

    def _retry(self, event: Event, relays: list[str]) -> Deferred[None]:
        """
        Publish C{event} again to C{relays}, all of them needed for success
        so that the result reports every relay's answer when all accept.
        """
        self._publishing[event.id] += 1
        self._retrying += 1

        def done(result: PublishResult) -> None:
            self._retrying -= 1

        return self._publish(event, relays, len(relays)).addCallback(done)
