"""
Tests for L{relaypool.store.outbox.OutboxPublisher}: durable publishing with
retries, over a real SQLite store; a fake pool where time matters, real
fake relays for the end-to-end cases, and a child process killed with
C{SIGKILL} for crash recovery.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from relaypool.errors import PublishFailed, QueueFull
from relaypool.nostr.event import Event
from relaypool.nostr.messages import ClientEvent
from relaypool.store.outbox import OutboxPublisher, RelayBacklog
from relaypool.store.sqlite import OutboxEntry, SQLiteEventStore
from relaypool.testing import FakeRelay, makeEvent
from relaypool.transport.mux import Backoff
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import NO_ANSWER, PublishResult, RelayPool

A = "ws://a.example"
B = "ws://b.example"

# No jitter: retry times are exact.
STEADY = Backoff(initial=5.0, maximum=600.0, jitter=0.0)


class _FakePool:
    """
    The part of L{RelayPool} the publisher uses, answering as C{answers}
    says: C{(True, message)} accepts, C{(False, message)} rejects, both at
    once; L{None} stays silent until C{publishTimeout} passed on C{clock}
    (the relay is then reported timed out). Like the real pool, the result
    fires as soon as the quorum is reached or impossible, and the answer hook
    hears every relay's answer, also later ones. With C{hold}, nothing
    answers until the test calls L{release}.
    """

    publishTimeout = 10.0

    def __init__(self, clock: Clock, *urls: str) -> None:
        self.clock = clock
        self.urls = list(urls)
        self.active = set(urls)
        self.answers: dict[str, tuple[bool, str] | None] = {url: (True, "") for url in urls}
        self.calls: list[tuple[str, tuple[str, ...], int]] = []
        self.hold = False
        self.held: list[tuple[Deferred[PublishResult], Any, list[str], str, int]] = []

    def publishTargets(self, event: Event) -> Deferred[list[str]]:
        return succeed(list(self.urls))

    def activeRelayURLs(self) -> list[str]:
        return [url for url in self.urls if url in self.active]

    def publish(
        self,
        event: Event,
        quorum: int = 1,
        timeout: float | None = None,
        relays: list[str] | None = None,
        onAnswer: Any = None,
    ) -> Deferred[PublishResult]:
        targets = list(self.urls if relays is None else relays)
        self.calls.append((event.id, tuple(targets), quorum))
        d: Deferred[PublishResult] = Deferred()
        if self.hold:
            self.held.append((d, onAnswer, targets, event.id, quorum))
            return d
        answers = {url: self.answers[url] for url in targets}
        silent = frozenset(url for url, a in answers.items() if a is None)
        accepted = {url: a[1] for url, a in answers.items() if a is not None and a[0]}
        rejected = {url: a[1] for url, a in answers.items() if a is not None and not a[0]}
        for url, message in accepted.items():
            onAnswer(url, True, message)
        for url, message in rejected.items():
            onAnswer(url, False, message)

        def fire(timedOut: frozenset[str]) -> None:
            if not d.called:
                _fire(d, PublishResult(event.id, quorum, accepted, rejected, timedOut))

        def timeOut() -> None:
            for url in sorted(silent):
                onAnswer(url, False, NO_ANSWER)
            fire(silent)

        if len(accepted) >= quorum or len(accepted) + len(silent) < quorum:
            fire(silent)
        if silent:
            self.clock.callLater(self.publishTimeout, timeOut)
        return d

    def release(self, index: int, accepted: dict[str, str]) -> None:
        """
        Answer the C{index}th held publish: the relays in C{accepted} accept
        with their messages, the others reject.
        """
        d, onAnswer, targets, eventId, quorum = self.held[index]
        rejected = {url: "error: no" for url in targets if url not in accepted}
        for url in targets:
            onAnswer(url, url in accepted, accepted.get(url, "error: no"))
        _fire(d, PublishResult(eventId, quorum, accepted, rejected, frozenset()))


def _fire(d: Deferred[PublishResult], result: PublishResult) -> None:
    if result.succeeded:
        d.callback(result)
    else:
        d.errback(PublishFailed("quorum not reached", result))


class _FakeOutbox:
    """
    An in-memory L{IOutbox} whose C{enqueue} fires when the test says.
    """

    def __init__(self) -> None:
        self.enqueued: list[Deferred[None]] = []
        self.pendingCalls = 0

    def enqueue(self, event: Event, relayURLs: list[str]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.enqueued.append(d)
        return d

    def recordResult(
        self, eventId: str, relayURL: str, accepted: bool, message: str, refused: bool = False
    ) -> Deferred[None]:
        return succeed(None)

    def pending(self) -> Deferred[list[OutboxEntry]]:
        self.pendingCalls += 1
        return succeed([])

    def discard(self, eventId: str) -> Deferred[None]:
        return succeed(None)


class PublisherTests(TestCase):
    """
    L{OutboxPublisher} over a real store, with a fake pool and a fake clock
    shared by the publisher and the store.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.path = self.mktemp()
        self.store = self.openStore()
        self.pool = _FakePool(self.clock, A, B)

    def openStore(self, **kwargs: Any) -> SQLiteEventStore:
        store = SQLiteEventStore(self.path, clock=self.clock.seconds, **kwargs)
        self.addCleanup(store.close)
        return store

    def publisher(self, **kwargs: Any) -> OutboxPublisher:
        kwargs.setdefault("backoff", STEADY)
        return OutboxPublisher(self.clock, self.pool, self.store, **kwargs)  # type: ignore[arg-type]

    @inlineCallbacks
    def restart(self) -> Any:
        """
        Close the store and open its file again, with a new pool, as after
        a restart.

        @return: a Deferred firing with a new publisher over them.
        """
        yield self.store.close()
        self.store = self.openStore()
        self.pool = _FakePool(self.clock, A, B)
        return self.publisher()

    @inlineCallbacks
    def relays(self) -> Any:
        """
        The outbox's only entry's relays, or L{None} when it is empty.
        """
        entries = yield self.store.pending()
        self.assertLessEqual(len(entries), 1)
        return dict(entries[0].relays) if entries else None

    @inlineCallbacks
    def test_submitRecordsAnswers(self) -> Any:
        """
        C{submit} publishes to every relay and records each one's answer:
        the accepting relay is marked accepted, the rejecting one keeps its
        reason and one attempt.
        """
        self.pool.answers[B] = (False, "error: not now")
        result = yield self.publisher().submit(makeEvent())
        self.assertEqual(
            (dict(result.accepted), dict(result.rejected)), ({A: ""}, {B: "error: not now"})
        )
        relays = yield self.relays()
        self.assertEqual(
            (relays[A].accepted, relays[B].accepted, relays[B].attempts, relays[B].lastMessage),
            (True, False, 1, "error: not now"),
        )

    @inlineCallbacks
    def test_acceptedByAllLeavesOutbox(self) -> Any:
        """
        An event every relay accepted is no longer in the outbox.
        """
        result = yield self.publisher().submit(makeEvent())
        self.assertTrue(result.succeeded)
        relays = yield self.relays()
        self.assertIsNone(relays)

    def test_publishAfterEnqueue(self) -> None:
        """
        Nothing is published before the outbox made the event durable.
        """
        outbox = _FakeOutbox()
        publisher = OutboxPublisher(self.clock, self.pool, outbox)  # type: ignore[arg-type]
        publisher.submit(makeEvent())
        self.assertEqual(self.pool.calls, [])
        outbox.enqueued[0].callback(None)
        self.assertEqual(len(self.pool.calls), 1)

    @inlineCallbacks
    def test_enqueueFailure(self) -> Any:
        """
        When the outbox refuses the event (full), C{submit} fails with its
        error and nothing is published.
        """
        self.store = self.openStore(maxOutbox=1)
        self.pool.answers[B] = (False, "error: down")
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        yield self.assertFailure(publisher.submit(makeEvent()), QueueFull)
        self.assertEqual(len(self.pool.calls), 1)

    @inlineCallbacks
    def test_quorumNotReached(self) -> Any:
        """
        A quorum not reached gives a result that did not succeed (not a
        failure), with the relays' reasons.
        """
        self.pool.answers[B] = (False, "blocked: no")
        result = yield self.publisher(quorum=2).submit(makeEvent())
        self.assertEqual((result.succeeded, result.reasons()), (False, f"{B}: blocked: no"))

    @inlineCallbacks
    def test_silentRelayRecordedAfterFailure(self) -> Any:
        """
        A relay that never answered a publish that failed is recorded as a
        failed attempt.
        """
        self.pool.answers = {A: None, B: None}
        submitted = self.publisher().submit(makeEvent())
        yield _until(lambda: bool(self.pool.calls))
        self.clock.advance(self.pool.publishTimeout)
        result = yield submitted
        self.assertFalse(result.succeeded)
        relays = yield self.relays()
        self.assertEqual(
            (relays[A].attempts, relays[A].accepted, relays[A].lastMessage), (1, False, NO_ANSWER)
        )

    @inlineCallbacks
    def test_answerAfterQuorumRecorded(self) -> Any:
        """
        A relay's answer arriving after the quorum fired is recorded: once
        it has the event too (here a C{duplicate:} answer), the event leaves
        the outbox, and no pass publishes it again.
        """
        self.pool.hold = True
        publisher = self.publisher()
        submitted = publisher.submit(makeEvent())
        yield _until(lambda: bool(self.pool.held))
        d, onAnswer, *_ = self.pool.held[0]
        onAnswer(A, True, "")
        d.callback(PublishResult(self.pool.calls[0][0], 1, {A: ""}, {}, frozenset({B})))
        result = yield submitted
        self.assertEqual(set(result.accepted), {A})
        onAnswer(B, True, "duplicate: already have it")
        yield _untilDeferred(lambda: self.store.pending().addCallback(lambda p: p == []))
        self.clock.advance(60)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)

    @inlineCallbacks
    def test_retryAfterBackoff(self) -> Any:
        """
        A relay that rejected is published to again once its backoff
        passed, not before; when it accepts, the event leaves the outbox.
        """
        self.pool.answers[B] = (False, "error: busy")
        publisher = self.publisher()
        event = makeEvent()
        yield publisher.submit(event)
        self.pool.answers[B] = (True, "")
        self.clock.advance(4.9)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)
        self.clock.advance(0.1)
        yield publisher.retryDue()
        self.assertEqual(self.pool.calls[1], (event.id, (B,), 1))
        relays = yield self.relays()
        self.assertIsNone(relays)

    @inlineCallbacks
    def test_finalRefusalNotRetried(self) -> Any:
        """
        A relay that refused an event for good (here C{blocked:}) settles
        it: with the other relay accepting, the event leaves the outbox,
        stops counting as waiting, and is never published again.
        """
        self.pool.answers[B] = (False, "blocked: not you")
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        relays = yield self.relays()
        self.assertIsNone(relays)
        self.clock.advance(600)
        yield publisher.retryDue()
        stats = publisher.stats()
        self.assertEqual(
            (len(self.pool.calls), stats.waiting, dict(stats.relays)), (1, 0, {})
        )

    @inlineCallbacks
    def test_finalRefusalsSettle(self) -> Any:
        """
        Every final refusal prefix (C{blocked:}, C{invalid:}, C{pow:},
        C{restricted:}, C{mute:}) settles the relay: it is not retried while
        the event waits for the other relay, and not counted as waiting.
        """
        publisher = self.publisher()
        self.pool.answers[A] = (False, "error: down")
        for message in ("blocked: a", "invalid: b", "pow: c", "restricted: d", "mute: e"):
            self.pool.answers[B] = (False, message)
            yield publisher.submit(makeEvent(content=message))
        self.clock.advance(5)
        yield publisher.retryDue()
        self.assertEqual({relays for _, relays, _ in self.pool.calls[5:]}, {(A,)})
        stats = publisher.stats()
        self.assertEqual((stats.waiting, set(stats.relays)), (5, {A}))

    @inlineCallbacks
    def test_temporaryRefusalsRetried(self) -> Any:
        """
        Temporary answers (C{rate-limited:}, C{error:}, C{auth-required:},
        and a message without a known prefix) are retried after the backoff.
        """
        publisher = self.publisher()
        messages = ("rate-limited: slow", "error: busy", "auth-required: who", "go away")
        for message in messages:
            self.pool.answers[B] = (False, message)
            yield publisher.submit(makeEvent(content=message))
        self.clock.advance(5)
        yield publisher.retryDue()
        self.assertEqual([relays for _, relays, _ in self.pool.calls[4:]], [(B,)] * 4)

    @inlineCallbacks
    def test_finalRefusalLoggedOnce(self) -> Any:
        """
        A final refusal is logged once, naming the event, the relay and the
        reason, also when the event stays in the outbox for another relay.
        """
        events: list[dict[str, Any]] = []
        publisher = self.publisher()
        publisher.log = Logger(observer=events.append)
        self.pool.answers = {A: (False, "error: down"), B: (False, "pow: difficulty 30")}
        event = makeEvent()
        yield publisher.submit(event)
        for _ in range(3):
            self.clock.advance(600)
            yield publisher.retryDue()
        lines = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        for part in (event.id, B, "pow: difficulty 30"):
            self.assertIn(part, lines[0])

    @inlineCallbacks
    def test_backoffGrows(self) -> Any:
        """
        Each failed retry lengthens the wait before the next one.
        """
        self.pool.answers[B] = (False, "error: busy")
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        self.clock.advance(5)
        yield publisher.retryDue()
        self.clock.advance(9.9)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 2)
        self.clock.advance(0.1)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 3)
        relays = yield self.relays()
        self.assertEqual(relays[B].attempts, 3)

    @inlineCallbacks
    def test_silentRelayRetriedAfterTimeout(self) -> Any:
        """
        A relay silent until the publish timed out is recorded then as a
        failed attempt and retried once its backoff passed, not before.
        """
        self.pool.answers[B] = None
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        self.pool.answers[B] = (True, "duplicate: have it")
        self.clock.advance(self.pool.publishTimeout)
        yield _untilDeferred(lambda: self.relays().addCallback(lambda r: r[B].attempts == 1))
        self.clock.advance(4.9)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)
        self.clock.advance(0.1)
        yield publisher.retryDue()
        relays = yield self.relays()
        self.assertIsNone(relays)

    @inlineCallbacks
    def test_unansweredRetriedAfterPublishTimeout(self) -> Any:
        """
        After a restart, a relay with no answer recorded is retried once the
        first publish surely finished (the pool's publish timeout), not
        before.
        """
        self.pool.hold = True
        self.publisher().submit(makeEvent())
        yield _until(lambda: bool(self.pool.held))
        self.pool = _FakePool(self.clock, A, B)
        publisher = self.publisher()
        self.clock.advance(9.9)
        yield publisher.retryDue()
        self.assertEqual(self.pool.calls, [])
        self.clock.advance(0.1)
        yield publisher.retryDue()
        relays = yield self.relays()
        self.assertIsNone(relays)

    @inlineCallbacks
    def test_disconnectedRelayNotRetried(self) -> Any:
        """
        A relay that is not connected is not retried, even when due.
        """
        self.pool.answers[B] = (False, "error: down")
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        self.pool.active.discard(B)
        self.clock.advance(60)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)

    @inlineCallbacks
    def test_maxAge(self) -> Any:
        """
        An event older than C{maxAge} is discarded instead of retried.
        """
        self.pool.answers[B] = (False, "error: down")
        publisher = self.publisher(maxAge=100.0)
        yield publisher.submit(makeEvent())
        self.clock.advance(101)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)
        relays = yield self.relays()
        self.assertIsNone(relays)

    @inlineCallbacks
    def test_maxInFlight(self) -> Any:
        """
        No more than C{maxInFlight} retry publishes are in flight.
        """
        self.pool.answers[B] = (False, "error: down")
        publisher = self.publisher(maxInFlight=1)
        yield publisher.submit(makeEvent())
        yield publisher.submit(makeEvent())
        self.pool.hold = True
        self.clock.advance(60)
        passing = publisher.retryDue()
        yield _until(lambda: bool(self.pool.held))
        self.assertEqual((len(self.pool.held), publisher.retrying()), (1, 1))
        self.pool.release(0, {B: ""})
        yield passing
        self.assertEqual(publisher.retrying(), 0)

    @inlineCallbacks
    def test_noSecondPublishWhileInFlight(self) -> Any:
        """
        An event whose publish is in flight is not published again by a
        pass.
        """
        self.pool.hold = True
        publisher = self.publisher()
        submitted = publisher.submit(makeEvent())
        yield _until(lambda: bool(self.pool.held))
        self.clock.advance(60)
        yield publisher.retryDue()
        self.assertEqual(len(self.pool.calls), 1)
        self.pool.release(0, {A: "", B: ""})
        yield submitted

    @inlineCallbacks
    def test_restartResumes(self) -> Any:
        """
        A new publisher over the same database file resumes what an earlier
        one left in the outbox.
        """
        self.pool.answers[B] = (False, "error: down")
        event = makeEvent()
        yield self.publisher().submit(event)
        publisher = yield self.restart()
        self.clock.advance(5)
        yield publisher.retryDue()
        self.assertEqual(self.pool.calls, [(event.id, (B,), 1)])
        relays = yield self.relays()
        self.assertIsNone(relays)

    @inlineCallbacks
    def test_refusalSurvivesRestart(self) -> Any:
        """
        A relay's refusal for good is durable: a new publisher over the same
        database file retries only the relay that refused temporarily.
        """
        self.pool.answers = {A: (False, "error: down"), B: (False, "restricted: members")}
        event = makeEvent()
        yield self.publisher().submit(event)
        publisher = yield self.restart()
        self.clock.advance(600)
        yield publisher.retryDue()
        self.assertEqual(self.pool.calls, [(event.id, (A,), 1)])

    @inlineCallbacks
    def test_statsShowWaiting(self) -> Any:
        """
        C{stats} reports, as of the last pass, the events waiting, the age
        of the oldest, and per relay its events waiting and their oldest
        age (ages as of now).
        """
        self.pool.answers[B] = (False, "error: down")
        publisher = self.publisher()
        yield publisher.submit(makeEvent())
        self.clock.advance(2)
        yield publisher.submit(makeEvent(content="second"))
        self.pool.active.clear()
        yield publisher.retryDue()
        self.clock.advance(1)
        stats = publisher.stats()
        self.assertEqual(
            (stats.waiting, stats.oldestAge, dict(stats.relays), stats.readAt),
            (2, 3.0, {B: RelayBacklog(2, 3.0)}, self.clock.seconds() - 1),
        )

    def test_startPassAtOnce(self) -> None:
        """
        Starting the publisher reads the outbox at once, then every
        C{retryInterval}; stopping it stops the loop.
        """
        outbox = _FakeOutbox()
        publisher = OutboxPublisher(self.clock, self.pool, outbox, retryInterval=5.0)  # type: ignore[arg-type]
        publisher.startService()
        self.assertEqual(outbox.pendingCalls, 1)
        self.clock.advance(5)
        self.assertEqual(outbox.pendingCalls, 2)
        publisher.stopService()
        self.clock.advance(5)
        self.assertEqual(outbox.pendingCalls, 2)


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
    """
    Fire once C{predicate()} holds, checking every 20 ms; fail after
    C{timeout} seconds.
    """
    return _untilDeferred(lambda: succeed(predicate()), timeout)


def _untilDeferred(check: Callable[[], Deferred[bool]], timeout: float = 10.0) -> Deferred[None]:
    """
    Fire once the Deferred of C{check()} fires with true, checking every
    20 ms; fail after C{timeout} seconds.
    """
    steps = int(timeout / 0.02)

    @inlineCallbacks
    def wait() -> Any:
        for _ in range(steps):
            done = yield check()
            if done:
                return
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"condition not met in {timeout} s")

    return wait()  # type: ignore[no-any-return]


class EndToEndTests(TestCase):
    """
    L{OutboxPublisher} over a real L{RelayPool}, fake relays and a store.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.relays = [FakeRelay(), FakeRelay()]
        for relay in self.relays:
            yield relay.start()
            self.addCleanup(relay.stop)
        self.store = SQLiteEventStore(self.mktemp())
        self.addCleanup(self.store.close)
        self.pool = RelayPool(
            nameService=StaticNameService(), fetchInformation=False, publishTimeout=2.0
        )
        for relay in self.relays:
            self.pool.addRelay(relay.url)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)
        yield _until(lambda: len(self.pool.activeRelayURLs()) == 2)

    @inlineCallbacks
    def test_retriedUntilAccepted(self) -> Any:
        """
        A relay that rejected an event is retried after its backoff, and
        once it accepted, the event is on both relays and out of the outbox.
        """
        first, second = self.relays
        second.misbehaviour.rejectWith = "error: come back later"
        publisher = OutboxPublisher(
            reactor, self.pool, self.store, quorum=2, backoff=Backoff(initial=0.05, jitter=0.0)
        )
        event = makeEvent()
        result = yield publisher.submit(event)
        self.assertEqual(
            (result.succeeded, set(result.rejected)), (False, {self.pool.relayURLs()[1]})
        )
        second.misbehaviour.rejectWith = None
        yield deferLater(reactor, 0.06, lambda: None)
        yield publisher.retryDue()
        self.assertEqual(
            ([e.id for e in first.events], [e.id for e in second.events]), ([event.id], [event.id])
        )
        pending = yield self.store.pending()
        self.assertEqual(pending, [])

    @inlineCallbacks
    def test_lateAnswerLeavesNothingInOutbox(self) -> Any:
        """
        With quorum 1, the relay answering after the quorum fired is
        recorded too: once both relays answered, nothing is left in the
        outbox.
        """
        first, second = self.relays
        second.misbehaviour.silentOK = True
        publisher = OutboxPublisher(reactor, self.pool, self.store)
        event = makeEvent()
        result = yield publisher.submit(event)
        self.assertEqual(set(result.accepted), {self.pool.relayURLs()[0]})
        second.sendOK(event.id, True, "")
        yield _untilDeferred(lambda: self.store.pending().addCallback(lambda p: p == []))

    @inlineCallbacks
    def test_finalRefusalLeavesOutboxHealthy(self) -> Any:
        """
        A relay answering C{OK false "blocked: ..."} settles the event: with
        the other relay accepting, nothing waits in the outbox, a pass
        sends the refusing relay nothing, and its health score stays 100.
        """
        first, second = self.relays
        second.misbehaviour.rejectWith = "blocked: not on this relay"
        publisher = OutboxPublisher(reactor, self.pool, self.store, backoff=Backoff(initial=0.0))
        event = makeEvent()
        result = yield publisher.submit(event)
        self.assertTrue(result.succeeded)
        yield _untilDeferred(lambda: self.store.pending().addCallback(lambda p: p == []))
        yield publisher.retryDue()
        sent = [m for m in second.received if isinstance(m, ClientEvent)]
        self.assertEqual(len(sent), 1)
        self.assertEqual(publisher.stats().waiting, 0)
        [refusing] = [s for s in self.pool.stats().values() if s.url == second.url + "/"]
        self.assertEqual((refusing.healthScore, refusing.okRejected), (100.0, 1))

    @inlineCallbacks
    def test_duplicateRejectionLeavesOutbox(self) -> Any:
        """
        A relay answering C{OK false "duplicate: ..."} has the event: the
        outbox records it as accepted and does not retry it, and the relay's
        health score is untouched.
        """
        first, second = self.relays
        event = makeEvent()
        second.store(event)
        second.misbehaviour.rejectDuplicates = True
        publisher = OutboxPublisher(reactor, self.pool, self.store, quorum=2)
        result = yield publisher.submit(event)
        self.assertTrue(result.succeeded)
        yield _untilDeferred(lambda: self.store.pending().addCallback(lambda p: p == []))
        health = [stats.healthScore for stats in self.pool.stats().values()]
        self.assertEqual(health, [100.0, 100.0])


_CHILD = """
import sys
from twisted.internet import defer, reactor
from relaypool.store.outbox import OutboxPublisher, RelayBacklog
from relaypool.upstream.relaypool import RelayPool
from relaypool.store.sqlite import SQLiteEventStore
from relaypool.testing import makeEvent

path, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

@defer.inlineCallbacks
def main():
    store = SQLiteEventStore(path)
    pool = RelayPool(fetchInformation=False, publishTimeout=0.5)
    pool.addRelay(url)
    pool.startService()
    publisher = OutboxPublisher(reactor, pool, store)
    events = [makeEvent(content=f"queued {i}") for i in range(count)]
    yield defer.gatherResults([publisher.submit(event) for event in events])
    print("ready " + " ".join(event.id for event in events), flush=True)

reactor.callWhenRunning(main)
reactor.run()
"""


class _Child(ProcessProtocol):
    """
    Collects a child's output; C{ready} fires with its first line, C{ended}
    when it exited.
    """

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.ready: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"\n" in self.output and not self.ready.called:
            self.ready.callback(self.output.split(b"\n", 1)[0].decode())

    def errReceived(self, data: bytes) -> None:
        self.errors += data[-4096:]

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError(f"child exited: {self.errors.decode()}"))
        self.ended.callback(None)


class CrashTests(TestCase):
    """
    What a killed process left in the outbox reaches the relay after a
    restart.
    """

    @inlineCallbacks
    def test_killedAndRestarted(self) -> Any:
        """
        Events queued by a process killed with SIGKILL while their relay was
        down are all delivered once a new process starts with the relay up,
        and the outbox is then empty.
        """
        relay = FakeRelay()
        yield relay.start()
        yield relay.stop()
        path = self.mktemp()
        child = _Child()
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, sys.executable, [sys.executable, "-c", _CHILD, path, relay.url, "20"], env=env
        )
        self.addCleanup(lambda: child.ended)
        line = yield child.ready.addTimeout(30, reactor)
        self.assertTrue(line.startswith("ready "), line)
        queued = set(line.split()[1:])
        process.signalProcess("KILL")
        yield child.ended

        yield relay.start()
        self.addCleanup(relay.stop)
        store = SQLiteEventStore(path)
        self.addCleanup(store.close)
        pending = yield store.pending()
        self.assertEqual({entry.event.id for entry in pending}, queued)
        pool = RelayPool(nameService=StaticNameService(), fetchInformation=False)
        pool.addRelay(relay.url)
        publisher = OutboxPublisher(
            reactor, pool, store, backoff=Backoff(initial=0.01, maximum=0.1), retryInterval=0.05
        )
        pool.startService()
        self.addCleanup(pool.stopService)
        publisher.startService()
        self.addCleanup(publisher.stopService)
        yield _until(lambda: {event.id for event in relay.events} == queued, timeout=20)
        for _ in range(100):
            pending = yield store.pending()
            if not pending:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(pending, [])
