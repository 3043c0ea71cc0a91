"""
The outbox publisher: events accepted from downstream clients are written
to a durable outbox before they go upstream, and re-published with backoff
to every relay that has not accepted them yet (nor refused them for good),
across restarts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaypool._reactor import defaultReactor
from relaypool.errors import PublishFailed
from relaypool.interfaces import IOutbox, IPublisher
from relaypool.nostr.event import Event
from relaypool.nostr.messages import isFinalRefusal
from relaypool.store.sqlite import OutboxEntry, RelayDelivery
from relaypool.transport.mux import Backoff
from relaypool.upstream.relaypool import PublishResult, RelayPool

__all__ = ["RETRY_BACKOFF", "OutboxPublisher", "OutboxStats", "RelayBacklog"]

RETRY_BACKOFF = Backoff(initial=5.0, maximum=600.0)
"""
The default delays between retries of one event to one relay.
"""


def _unsettled(entry: OutboxEntry) -> list[str]:
    """
    The relays, sorted, that have not settled C{entry}: neither accepted it
    nor refused it for good.
    """
    return sorted(url for url, delivery in entry.relays.items() if not delivery.settled)


def _stableFraction(eventId: str, url: str, attempts: int) -> float:
    """
    The jitter of one retry: a fraction in [0, 1) fixed by the event, the
    relay and the attempt, so the due time of a retry is the same at every
    pass of the loop (and after a restart), yet differs between events.
    """
    digest = hashlib.sha256(f"{eventId} {url} {attempts}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class RelayBacklog:
    """
    What waits in the outbox for one relay.

    @ivar waiting: events the relay has not settled yet (neither accepted
        nor refused for good).
    @ivar oldestAge: seconds since the oldest of them was enqueued.
    """

    waiting: int
    oldestAge: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """
    The outbox's figures, as L{OutboxPublisher.stats} reports them.

    @ivar retrying: retry publishes in flight.
    @ivar waiting: events in the outbox (some relay has not settled them:
        neither accepted nor refused for good), as of the last pass of the
        retry loop.
    @ivar oldestAge: seconds since the oldest of them was enqueued, L{None}
        when none waits.
    @ivar relays: per relay URL with events waiting, its L{RelayBacklog}.
    @ivar readAt: when the last pass read the outbox, L{None} before the
        first pass.
    """

    retrying: int
    waiting: int
    oldestAge: float | None
    relays: Mapping[str, RelayBacklog]
    readAt: float | None


@implementer(IPublisher)
class OutboxPublisher(service.Service):
    """
    Publishes events through a L{RelayPool} with an L{IOutbox} as the
    durable record, so that an event is never lost once L{submit} was
    called and its enqueueing committed.

    While running, one L{LoopingCall} reads the outbox every
    C{retryInterval} seconds and re-publishes each event to each relay that
    has not settled it (see below), is connected, and whose backoff is due:
    after C{n} recorded failures a relay is retried C{backoff.delay(n)}
    seconds after the last one. An event enqueued more than C{maxAge}
    seconds ago is discarded from the outbox, and logged. The loop runs at once on start,
    so that what a crash interrupted resumes as soon as relays connect.
    Each pass also notes what waits, for L{stats}.

    Every relay's answer is recorded as it arrives, through the pool's
    per-relay answer hook, also after the quorum fired; a relay silent until
    the pool's publish timeout is recorded then as a failed attempt. A
    C{duplicate:} answer (C{OK true} or C{OK false}) means the relay has the
    event: it is recorded as accepted. A final refusal (C{OK false} with
    C{blocked:}, C{invalid:}, C{pow:}, C{restricted:} or C{mute:}, see
    L{isFinalRefusal}) is recorded as refused and logged once: sending the
    event again would get the same answer, so that relay is never retried.
    Either way the relay I{settled} the event, and an event every relay
    settled leaves the outbox. Every other answer is temporary and retried
    (C{rate-limited:}, C{auth-required:}, C{error:}, no known prefix, no
    answer).

    The outbox's clock (the store's times) must agree with the reactor's
    C{seconds()}, as wall-clock time does.

    Bounds: at most C{maxInFlight} retry publishes are in flight; the rest
    wait for a later pass. An event has at most one publish in flight at a
    time (the pool would merge a second one into the first).

    @ivar quorum: how many relays must accept an event for L{submit}'s
        result to succeed (may be changed while running).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime | None,
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
        @param maxAge: seconds after which an event not settled by every
            relay (accepted, or refused for good) is given up.
        @param backoff: the delays between retries to one relay.
        @param retryInterval: seconds between two reads of the outbox.
        @param maxInFlight: the most retry publishes in flight.
        """
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._pool = pool
        self._outbox = outbox
        self.quorum = quorum
        self._maxAge = maxAge
        self._backoff = backoff
        self._maxInFlight = maxInFlight
        self._publishing: Counter[str] = Counter()
        self._retrying = 0
        # What the last pass found waiting: events, the oldest enqueue time,
        # and per relay (events, oldest enqueue time).
        self._waiting = 0
        self._oldestEnqueuedAt: float | None = None
        self._backlogs: dict[str, tuple[int, float]] = {}
        self._readAt: float | None = None
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

    def stats(self) -> OutboxStats:
        """
        @return: the outbox's figures: the retries in flight now, and what
            waits in the outbox as of the last pass of the retry loop (every
            C{retryInterval} seconds), with ages as of now.
        """
        now: float = self._reactor.seconds()
        oldest = self._oldestEnqueuedAt
        return OutboxStats(
            retrying=self._retrying,
            waiting=self._waiting,
            oldestAge=None if oldest is None else max(0.0, now - oldest),
            relays=MappingProxyType(
                {
                    url: RelayBacklog(waiting, max(0.0, now - enqueuedAt))
                    for url, (waiting, enqueuedAt) in sorted(self._backlogs.items())
                }
            ),
            readAt=self._readAt,
        )

    def submit(self, event: Event) -> Deferred[PublishResult]:
        """
        Enqueue C{event} for the relays the pool publishes it to (its write
        relays, and with the outbox model its author's write relays and the
        read relays of the pubkeys it tags: L{RelayPool.publishTargets}),
        then publish it to them. The relays' answers are recorded in the outbox; the relays that
        did not accept it are retried in the background, except those that
        refused it for good. Every relay's answer is recorded, also those
        arriving after the result fired.

        @return: a Deferred firing with the pool's L{PublishResult} once
            C{quorum} relays accepted (C{succeeded} true), or once that became
            impossible or the publish timed out (C{succeeded} false), and the
            answers heard by then are recorded. It fails
            if the event could not be enqueued (e.g. with
            L{relaypool.errors.QueueFull} from a full outbox), and then
            nothing was published.
        """
        self._publishing[event.id] += 1

        def notEnqueued(failure: Failure) -> Failure:
            self._release(event.id)
            return failure

        def enqueue(relays: list[str]) -> Deferred[PublishResult]:
            enqueued: Deferred[None] = self._outbox.enqueue(event, relays)  # type: ignore[no-untyped-call]
            enqueued.addErrback(notEnqueued)
            return enqueued.addCallback(lambda _: self._publish(event, relays, self.quorum)[0])

        return self._pool.publishTargets(event).addCallback(enqueue)

    def _publish(
        self, event: Event, relays: Sequence[str], quorum: int
    ) -> tuple[Deferred[PublishResult], Deferred[None]]:
        """
        Publish C{event} to C{relays} (already counted in C{_publishing}) and
        record every relay's answer as it arrives, through the pool's
        per-relay answer hook: also the answers that come after the quorum
        fired, and, at the pool's publish timeout, the relays that stayed
        silent as failed attempts. The event counts as in flight until every
        relay's answer is recorded.

        @return: two Deferreds: the first fires with the L{PublishResult}
            once the pool fired it and the answers heard by then are
            recorded; the second once every relay's answer is recorded.
        """
        finished: Deferred[None] = Deferred()
        recorded: list[Deferred[None]] = []
        waiting = set(relays)

        def answered(url: str, accepted: bool, message: str) -> None:
            if url not in waiting:
                return
            waiting.discard(url)
            recorded.append(self._record(event.id, url, accepted, message))
            if not waiting:
                self._release(event.id)
                gatherResults(list(recorded)).addCallback(lambda _: None).chainDeferred(finished)

        def published(outcome: PublishResult | Failure) -> Deferred[PublishResult]:
            if isinstance(outcome, Failure):
                error = outcome.value
                if isinstance(error, PublishFailed):
                    outcome = error.result
                else:
                    # The pool could not publish at all: no hook will answer.
                    message = f"error: {outcome.getErrorMessage()}"
                    outcome = PublishResult(
                        event.id, quorum, {}, dict.fromkeys(relays, message), frozenset()
                    )
                    for url in sorted(waiting):
                        answered(url, False, message)
            result = outcome
            return gatherResults(list(recorded)).addCallback(lambda _: result)

        if not relays:
            self._release(event.id)
            finished.callback(None)
            return succeed(PublishResult(event.id, quorum, {}, {}, frozenset())), finished
        firing = maybeDeferred(self._pool.publish, event, quorum, relays=relays, onAnswer=answered)
        return firing.addBoth(published), finished

    def _release(self, eventId: str) -> None:
        self._publishing[eventId] -= 1
        if self._publishing[eventId] <= 0:
            del self._publishing[eventId]

    def _record(self, eventId: str, url: str, accepted: bool, message: str) -> Deferred[None]:
        """
        Record C{url}'s answer to C{eventId}; a final refusal settles the
        relay, and is logged.
        """
        refused = not accepted and isFinalRefusal(message)
        if refused:
            self.log.info(
                "outbox: {url} refused event {eventId} for good, not retrying: {message}",
                url=url,
                eventId=eventId,
                message=message,
            )

        def failed(failure: Failure) -> None:
            self.log.failure(
                "outbox: could not record {url}'s answer to {eventId}",
                failure,
                url=url,
                eventId=eventId,
            )

        recorded: Deferred[None] = self._outbox.recordResult(  # type: ignore[no-untyped-call]
            eventId, url, accepted, message, refused=refused
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
        Whether C{url} is to be published C{entry} again: it has not settled
        it, and its backoff is over: C{backoff.delay(n)} after the last of
        C{n} failures; with no answer recorded yet, once the first publish
        surely finished (the pool's C{publishTimeout}) and
        C{backoff.initial} passed since enqueueing.
        """
        if delivery.settled:
            return False
        fraction = _stableFraction(entry.event.id, url, delivery.attempts)
        delay = self._backoff.delay(delivery.attempts, lambda: fraction)
        if delivery.lastAttemptAt is None:
            return now >= entry.enqueuedAt + max(delay, self._pool.publishTimeout)
        return now >= delivery.lastAttemptAt + delay

    def _summarize(self, entries: list[OutboxEntry], now: float) -> None:
        """
        Remember what waits in the outbox, from the C{entries} a pass read
        at C{now}, for L{stats}.
        """
        backlogs: dict[str, tuple[int, float]] = {}
        waiting = [entry for entry in entries if _unsettled(entry)]
        for entry in waiting:
            for url in _unsettled(entry):
                count, oldest = backlogs.get(url, (0, entry.enqueuedAt))
                backlogs[url] = (count + 1, min(oldest, entry.enqueuedAt))
        self._waiting = len(waiting)
        self._oldestEnqueuedAt = min((entry.enqueuedAt for entry in waiting), default=None)
        self._backlogs = backlogs
        self._readAt = now

    def _resume(self, entries: list[OutboxEntry]) -> Deferred[None]:
        now: float = self._reactor.seconds()
        kept = [entry for entry in entries if now - entry.enqueuedAt <= self._maxAge]
        self._summarize(kept, now)
        active = set(self._pool.activeRelayURLs())
        work: list[Deferred[None]] = []
        for entry in entries:
            event = entry.event
            age = now - entry.enqueuedAt
            if age > self._maxAge:
                self.log.warn(
                    "outbox: gave up on event {eventId} after {age:.0f} s;"
                    " not accepted by {relays}",
                    eventId=event.id,
                    age=age,
                    relays=", ".join(_unsettled(entry)),
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
        Publish C{event} again to C{relays}.

        @return: a Deferred firing once every relay's answer is recorded.
        """
        self._publishing[event.id] += 1
        self._retrying += 1

        def done(_: None) -> None:
            self._retrying -= 1

        return self._publish(event, relays, len(relays))[1].addCallback(done)
