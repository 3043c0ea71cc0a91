"""
Accepting the events downstream clients publish, under the gateway's OK
policy.

C{EVENT} is validated locally (shape, sizes, id, signature, NIP-40
expiration); an invalid event is answered C{OK false "invalid: ..."} and
never reaches a relay. Then, under the C{"quorum"} policy, it is published
through the outbox (if any) or C{RelayPool.publish} and answered C{OK true}
only once C{quorum} relays accepted it (C{"duplicate: ..."} when they all had
it already), else C{OK false} with their reasons (saying so when the outbox
keeps retrying); under the C{"local"} policy it is
answered C{OK true} once the store committed it, and forwarded upstream in
the background. Accepted events are delivered to the matching subscriptions
of every downstream client at once; each shared subscription remembers the
last L{RECENT_IDS} ids it delivered, so that a relay's echo of the same
event is not delivered twice.

The signatures are checked at once under light load (fewer than
L{VERIFY_AT_ONCE_BELOW} events waiting for their answer), which costs the
reactor thread less than a hand-off to another thread and back; under
heavier load, by an L{EventVerifier} on a thread of its own: coincurve
releases the GIL, so verification runs on the second core while the reactor
thread parses, stores and answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool._reactor import defaultReactor
from relaypool.errors import InvalidEvent, PublishFailed
from relaypool.gateway.session import Replies, Session
from relaypool.interfaces import IEventStore, IPublisher, IRelayPool
from relaypool.nostr.event import Event, isEphemeral
from relaypool.nostr.messages import reasonPrefix
from relaypool.upstream.relaypool import PublishResult
from relaypool.upstream.verifying import ThreadsReactor, Verifier, checkEvent

_log = Logger()

_T = TypeVar("_T")

OK_POLICIES = ("quorum", "local")
"""
The values of the C{okPolicy} option: C{"quorum"} answers C{OK true} once
C{quorum} upstream relays accepted the event; C{"local"} once the store
committed it.
"""

RETRYING = "the relay pool keeps retrying in the background"
"""
The end of the C{OK false} message for an event that missed its quorum but
stays in the outbox, which re-publishes it to the relays that did not accept
it: only when some relay timed out or refused for a temporary reason (not
when every refusing relay refused for good).
"""


DEFAULT_MAX_VERIFYING = 10_000
"""
The default bound of L{EventVerifier}: events waiting for their signature
check, from every connection.
"""

VERIFY_AT_ONCE_BELOW = 8
"""
While fewer accepted events than this wait for their answer (and none for
the verifier thread), an C{EVENT} is verified at once in the reactor thread;
else on the L{EventVerifier}'s thread. Measured with C{bench/publish.py}:
with a few clients publishing one event at a time, the hand-off costs the
reactor thread more than the check; with 100 events in flight, the reactor
thread is the bottleneck and the check moves to the second core.
"""

Verified = Callable[[InvalidEvent | None], None]
"""
What L{EventVerifier.verify} calls with its verdict: L{None} for a valid
event, else the L{InvalidEvent} saying why it is not.
"""


class EventVerifier:
    """
    Checks events' ids and signatures (L{Event.verify}) and calls back with
    the verdicts in the order the events were given.

    With a reactor that provides L{IReactorFromThreads}, the checks run on
    the one worker thread of a L{relaypool.upstream.verifying.Verifier}
    (the pool's verifier: batches handed over once per reactor iteration,
    the second core, as coincurve releases the GIL), started at the first
    event; else (a test clock) each event is checked at once, in the
    caller.

    Bound: at most C{maxPending} events wait for their check; past it,
    L{verify} refuses at once (returns C{False}).
    """

    def __init__(self, reactor: object, maxPending: int = DEFAULT_MAX_VERIFYING) -> None:
        self.maxPending = maxPending
        self._waiting: deque[tuple[str, Verified]] = deque()
        self._verifier = (
            Verifier(cast(ThreadsReactor, reactor), self._verified)
            if IReactorFromThreads.providedBy(reactor)
            else None
        )
        self._started = False

    @property
    def pending(self) -> int:
        """
        How many events wait for their verdict.
        """
        return len(self._waiting)

    def verify(self, event: Event, verified: Verified) -> bool:
        """
        Check C{event}; call C{verified} with the verdict, in the reactor
        thread, after the verdicts of the events given before it.

        @return: C{False} (and C{verified} is not called) if C{maxPending}
            events are waiting already.
        """
        if self._verifier is None:
            verified(verdict(event))
            return True
        if self.pending >= self.maxPending:
            return False
        if not self._started:
            self._started = True
            self._verifier.start()
        self._waiting.append((event.id, verified))
        self._verifier.verify(event)
        return True

    def stop(self) -> Deferred[None]:
        """
        Stop the worker thread; the verdicts not given yet are dropped (the
        connections are closing).

        @return: a Deferred firing once the thread has ended.
        """
        self._waiting.clear()
        if self._verifier is None or not self._started:
            return succeed(None)
        self._started = False
        return self._verifier.stop()

    def _verified(self, batch: list[Event], errors: list[str | None]) -> None:
        for error in errors:
            eventId, verified = self._waiting.popleft()
            outcome = None
            if error is not None:
                outcome = InvalidEvent(error)
                outcome.eventId = eventId
            try:
                verified(outcome)
            except Exception:
                _log.failure("Handling a verified event failed")


def verdict(event: Event) -> InvalidEvent | None:
    """
    Check C{event}'s id and signature now.

    @return: L{None} if they are right, else the L{InvalidEvent} saying
        what is wrong.
    """
    error = checkEvent(event)
    if error is None:
        return None
    invalid = InvalidEvent(error)
    invalid.eventId = event.id
    return invalid


def _failureMessage(result: PublishResult, retrying: bool = False) -> str:
    """
    The C{OK false} message for a publish that missed its quorum: the
    relays' common reason prefix if they agree on one, else C{error}, then
    every relay's reason, then L{RETRYING} if C{retrying}.
    """
    prefixes = {reasonPrefix(message) for message in result.rejected.values()}
    prefix = "error"
    if len(prefixes) == 1 and not result.timedOut:
        (only,) = prefixes
        prefix = only or prefix
    message = (
        f"{prefix}: accepted by {len(result.accepted)} of the {result.quorum} relays "
        f"required ({result.reasons() or 'no relay to publish to'})"
    )
    return f"{message}; {RETRYING}" if retrying else message


def _duplicateMessage(result: PublishResult) -> str | None:
    """
    The C{OK true} message for a publish that reached its quorum: when
    every relay that accepted answered C{duplicate:} (the event was there
    already), C{"duplicate: ..."} with their answers, else L{None} (the
    message is empty).
    """
    answers = sorted(result.accepted.items())
    if not answers or any(reasonPrefix(message) != "duplicate" for _, message in answers):
        return None
    held = "; ".join(f"{url}: {message}" for url, message in answers)
    return f"duplicate: the relays already have this event ({held})"


class EventAcceptor:
    """
    Stores and publishes the valid events downstream clients send, and
    answers each with an honest C{OK} under the OK policy.

    @ivar inFlight: the events accepted and not answered yet (waiting for
        the store or the relays).
    """

    def __init__(
        self,
        replies: Replies,
        deliverLocal: Callable[[Event], None],
        pool: IRelayPool | None = None,
        store: IEventStore | None = None,
        outbox: IPublisher | None = None,
        quorum: int = 1,
        okPolicy: str = "quorum",
        clock: IReactorTime | None = None,
        onLatency: Callable[[str, float], None] | None = None,
    ) -> None:
        """
        @param deliverLocal: called with each accepted event, to deliver it
            to the downstream subscriptions it matches.
        @param pool: the L{relaypool.upstream.relaypool.RelayPool}, or
            L{None} to serve the store alone.
        @param store: an L{relaypool.interfaces.IEventStore}, or L{None}.
        @param outbox: an L{relaypool.store.outbox.OutboxPublisher} that
            publishes accepted events durably, or L{None} to publish through
            C{pool}.
        @param quorum: upstream acceptances an C{OK true} needs.
        @param okPolicy: one of L{OK_POLICIES}; C{"local"} needs a store.
        @param clock: an L{IReactorTime} for latencies; the global reactor
            if L{None}.
        @param onLatency: called with C{"fanout"} and the seconds from
            L{accept} (a valid event handed over) to the end of its
            delivery to the matching subscriptions (its frames handed to
            the connections), for each event delivered: the store's commit
            or the upstream quorum, as the policy requires, included.
        @raise ValueError: for a policy that cannot work with the given
            pool and store.
        """
        if okPolicy not in OK_POLICIES:
            raise ValueError(f"okPolicy must be one of {OK_POLICIES}, got {okPolicy!r}")
        if pool is None and store is None:
            raise ValueError("the gateway needs a relay pool, a store, or both")
        if (okPolicy == "local" or pool is None) and store is None:
            raise ValueError('okPolicy "local" needs a store')
        self._replies = replies
        self.deliverLocal = deliverLocal
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self._quorum = quorum
        self._local = okPolicy == "local" or pool is None
        self._clock = defaultReactor(clock)
        self._onLatency = onLatency
        self.inFlight = 0

    def setOkPolicy(self, okPolicy: str, quorum: int) -> None:
        """
        Change the policy and quorum given to L{__init__}, for the events
        accepted from now on.

        @raise ValueError: for a policy that cannot work with the pool and
            store.
        """
        if okPolicy not in OK_POLICIES:
            raise ValueError(f"okPolicy must be one of {OK_POLICIES}, got {okPolicy!r}")
        if okPolicy == "local" and self._store is None:
            raise ValueError('okPolicy "local" needs a store')
        self._quorum = quorum
        self._local = okPolicy == "local" or self._pool is None

    def accept(self, session: Session, event: Event) -> None:
        """
        Store and publish a valid C{event} from C{session} and answer it.
        """
        started = self._clock.seconds()
        if self._local:
            answered = self._acceptLocally(session, event, started)
        else:
            answered = self._acceptOnQuorum(session, event, started)
        if answered is not None:
            self.inFlight += 1
            answered.addBoth(self._answered)

    def _answered(self, result: _T) -> _T:
        self.inFlight -= 1
        return result

    def _fanOut(self, event: Event, started: float) -> None:
        """
        Deliver C{event}, accepted at C{started}, to the downstream
        subscriptions it matches, and report the latency.
        """
        self.deliverLocal(event)
        if self._onLatency is not None:
            self._onLatency("fanout", self._clock.seconds() - started)

    def _acceptLocally(
        self, session: Session, event: Event, started: float
    ) -> Deferred[None] | None:
        """
        Answer C{event} once the store committed it (an ephemeral event at
        once).

        @return: a Deferred firing once it is answered, or L{None} if it
            was answered already.
        """
        if isEphemeral(event.kind):
            self._replies.ok(session, event.id, True, "")
            self._fanOut(event, started)
            self._forward(event)
            return None

        def saved(stored: bool) -> None:
            if stored:
                self._replies.ok(session, event.id, True, "")
                self._fanOut(event, started)
                self._forward(event)
            else:
                self._replies.ok(
                    session,
                    event.id,
                    True,
                    "duplicate: already have this event, or a newer one replaces it",
                )

        def failed(failure: Failure) -> None:
            _log.failure("Saving event {eventId} failed", failure, eventId=event.id)
            self._replies.ok(session, event.id, False, "error: could not store the event")

        assert self._store is not None, "the local policy needs a store"
        return maybeDeferred(self._store.save, event).addCallbacks(saved, failed)

    def _forward(self, event: Event) -> None:
        """
        Publish a locally accepted event upstream in the background.
        """
        if self._pool is None:
            return
        if self._outbox is not None and not isEphemeral(event.kind):
            d: Deferred[Any] = maybeDeferred(self._outbox.submit, event)
        else:
            d = maybeDeferred(self._pool.publish, event, self._quorum)
        d.addErrback(self._forwardFailed, event)

    def _forwardFailed(self, failure: Failure, event: Event) -> None:
        if isinstance(failure.value, PublishFailed):
            _log.info(
                "Event {eventId} did not reach its quorum upstream: {reasons}",
                eventId=event.id,
                reasons=failure.value.result.reasons(),
            )
        else:
            _log.failure("Forwarding event {eventId} failed", failure, eventId=event.id)

    def _acceptOnQuorum(self, session: Session, event: Event, started: float) -> Deferred[None]:
        """
        Publish C{event} and answer once the quorum is reached or missed:
        C{OK true} (C{"duplicate: ..."} when every relay that accepted
        already had it, and then it is not delivered again), or C{OK false}
        with the relays' reasons, saying so when the outbox keeps retrying
        (some relay timed out or refused for a temporary reason).

        @return: a Deferred firing once it is answered.
        """
        outbox = self._outbox
        viaOutbox = outbox is not None and not isEphemeral(event.kind)
        d: Deferred[Any]
        if outbox is not None and viaOutbox:
            d = maybeDeferred(outbox.submit, event)
        else:
            assert self._pool is not None, "the quorum policy needs a pool"
            d = maybeDeferred(self._pool.publish, event, self._quorum)

        def published(result: PublishResult) -> None:
            if result.succeeded:
                duplicate = _duplicateMessage(result)
                self._replies.ok(session, event.id, True, duplicate or "")
                if duplicate is None:
                    self._fanOut(event, started)
                if self._store is not None and not isEphemeral(event.kind):
                    maybeDeferred(self._store.save, event).addErrback(
                        lambda f: _log.failure("Saving event {eventId} failed", f, eventId=event.id)
                    )
            else:
                retrying = viaOutbox and bool(result.retryable())
                self._replies.ok(session, event.id, False, _failureMessage(result, retrying))

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, PublishFailed):
                published(failure.value.result)
                return
            _log.failure("Publishing event {eventId} failed", failure, eventId=event.id)
            self._replies.ok(session, event.id, False, f"error: {failure.getErrorMessage()}")

        return d.addCallbacks(published, failed)


__all__ = [
    "DEFAULT_MAX_VERIFYING",
    "OK_POLICIES",
    "RETRYING",
    "VERIFY_AT_ONCE_BELOW",
    "EventAcceptor",
    "EventVerifier",
    "verdict",
]
