"""
Tests for L{relaypool.upstream.publishing}: the publish quorum, on a
L{Clock} (no relays, no sockets, no real time).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import PublishFailed
from relaypool.testing import makeEvent
from relaypool.upstream.publishing import NO_ANSWER, NOT_QUEUED, POOL_STOPPED, PublishQuorum
from relaypool.upstream.results import PublishResult

A, B, C = "ws://a/", "ws://b/", "ws://c/"


class PublishQuorumTests(SynchronousTestCase):
    """
    L{PublishQuorum} fires once with the outcome, and its answer hooks hear
    every relay exactly once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.event = makeEvent(content="quorum")
        self.finished: list[frozenset[str]] = []
        self.answers: list[tuple[str, bool, str]] = []
        self.sent: list[str] = []

    def quorum(self, quorum: int, timeout: float = 10.0) -> PublishQuorum:
        return PublishQuorum(
            self.clock, self.event, quorum, timeout, lambda q: self.finished.append(q.outstanding)
        )

    def send(self, url: str) -> bool:
        self.sent.append(url)
        return True

    def hook(self, url: str, accepted: bool, message: str) -> None:
        self.answers.append((url, accepted, message))

    def started(self, quorum: int, relays: list[str], timeout: float = 10.0) -> PublishQuorum:
        """
        A quorum sent to C{relays}, with L{hook} listening to all of them.
        """
        publish = self.quorum(quorum, timeout)
        publish.listen(relays, self.hook)
        publish.sendTo(relays, self.send)
        return publish

    def test_quorumReached(self) -> None:
        """
        It fires with the result once C{quorum} relays accepted, naming the
        relays that accepted and those still silent; it goes on listening.
        """
        publish = self.started(2, [A, B, C])
        decided = publish.whenDecided()
        publish.relayAnswered(A, True, "")
        self.assertNoResult(decided)
        publish.relayAnswered(B, True, "duplicate: have it")
        result = self.successResultOf(decided)
        self.assertEqual(
            result,
            PublishResult(self.event.id, 2, {A: "", B: "duplicate: have it"}, {}, frozenset({C})),
        )
        self.assertEqual((self.sent, publish.finished, self.finished), ([A, B, C], False, []))

    def test_quorumImpossible(self) -> None:
        """
        It fails with L{PublishFailed} carrying the result as soon as too few
        relays are left to reach the quorum, without waiting for the others.
        """
        publish = self.started(2, [A, B, C])
        decided = publish.whenDecided()
        publish.relayAnswered(A, False, "blocked: no")
        self.assertNoResult(decided)
        publish.relayAnswered(B, False, "invalid: bad")
        failure = self.failureResultOf(decided, PublishFailed)
        self.assertEqual(
            failure.value.result,
            PublishResult(
                self.event.id, 2, {}, {A: "blocked: no", B: "invalid: bad"}, frozenset({C})
            ),
        )

    def test_timeout(self) -> None:
        """
        At the timeout it fails if the quorum was not reached, tells the
        hooks L{NO_ANSWER} for the silent relays and finishes, naming them.
        """
        publish = self.started(2, [A, B], timeout=5.0)
        decided = publish.whenDecided()
        publish.relayAnswered(A, True, "")
        self.clock.advance(4.9)
        self.assertNoResult(decided)
        self.clock.advance(0.1)
        self.failureResultOf(decided, PublishFailed)
        self.assertEqual(self.answers, [(A, True, ""), (B, False, NO_ANSWER)])
        self.assertEqual(self.finished, [frozenset({B})])
        self.assertTrue(publish.finished)

    def test_relayGone(self) -> None:
        """
        A relay that left counts as rejecting the event with the reason
        given, and its hooks hear that reason.
        """
        publish = self.started(1, [A])
        decided = publish.whenDecided()
        publish.relayGone(A, "error: relaypool: relay removed from the pool")
        failure = self.failureResultOf(decided, PublishFailed)
        self.assertEqual(
            failure.value.result.rejected, {A: "error: relaypool: relay removed from the pool"}
        )
        self.assertEqual(self.answers, [(A, False, "error: relaypool: relay removed from the pool")])

    def test_lateAnswersReachHook(self) -> None:
        """
        Answers arriving after the quorum fired still reach the hooks; when
        the last relay answered it finishes and cancels its timeout.
        """
        publish = self.started(1, [A, B, C])
        decided = publish.whenDecided()
        publish.relayAnswered(A, True, "")
        self.successResultOf(decided)
        publish.relayAnswered(B, False, "blocked: late")
        self.assertEqual(self.finished, [])
        publish.relayAnswered(C, True, "duplicate: late too")
        self.assertEqual(
            self.answers, [(A, True, ""), (B, False, "blocked: late"), (C, True, "duplicate: late too")]
        )
        self.assertEqual((self.finished, self.clock.getDelayedCalls()), ([frozenset()], []))

    def test_answersIgnoredWhenNotWaiting(self) -> None:
        """
        A relay's second answer, an answer from a relay it did not send the
        event to, and answers after it finished change nothing.
        """
        publish = self.started(2, [A, B], timeout=1.0)
        publish.relayAnswered(A, True, "")
        publish.relayAnswered(A, False, "error: again")
        publish.relayAnswered(C, True, "")
        self.assertEqual(publish.result().accepted, {A: ""})
        self.clock.advance(1.0)
        publish.relayAnswered(B, True, "")
        self.assertEqual(
            (publish.result().accepted, publish.isWaitingFor(B)), ({A: ""}, False)
        )
        self.assertEqual(self.answers, [(A, True, ""), (B, False, NO_ANSWER)])

    def test_sendRefused(self) -> None:
        """
        A relay that cannot take the event counts as rejecting it with
        L{NOT_QUEUED}; with every relay refusing it fails and finishes at
        once.
        """
        publish = self.quorum(1)
        publish.listen([A, B], self.hook)
        decided = publish.whenDecided()
        publish.sendTo([A, B], lambda url: False)
        failure = self.failureResultOf(decided, PublishFailed)
        self.assertEqual(failure.value.result.rejected, {A: NOT_QUEUED, B: NOT_QUEUED})
        self.assertEqual((self.finished, self.clock.getDelayedCalls()), ([frozenset()], []))

    def test_noRelays(self) -> None:
        """
        Sent to no relay, it fails at once.
        """
        publish = self.quorum(1)
        decided = publish.whenDecided()
        publish.sendTo([], self.send)
        self.assertIn("no relays", str(self.failureResultOf(decided, PublishFailed).value))

    def test_refusalsCheckedTogether(self) -> None:
        """
        The outcome is checked once every target was sent the event: the
        failure names every relay that could not take it.
        """
        publish = self.quorum(3)
        decided = publish.whenDecided()
        publish.sendTo([A, B, C], lambda url: url == C)
        failure = self.failureResultOf(decided, PublishFailed)
        self.assertEqual(failure.value.result.rejected, {A: NOT_QUEUED, B: NOT_QUEUED})

    def test_listenLate(self) -> None:
        """
        A hook attached after some relays answered hears their answers at
        once, and only for the relays it listens to.
        """
        publish = self.started(3, [A, B, C])
        publish.relayAnswered(B, False, "blocked: no")
        publish.relayAnswered(A, True, "")
        late: list[tuple[str, bool, str]] = []
        publish.listen([A, B], lambda *answer: late.append(answer))
        publish.relayAnswered(C, True, "")
        self.assertEqual(late, [(A, True, ""), (B, False, "blocked: no")])

    def test_whenDecidedAfterFired(self) -> None:
        """
        A caller asking after it fired gets the same outcome at once.
        """
        publish = self.started(1, [A, B])
        first = publish.whenDecided()
        publish.relayAnswered(A, True, "")
        publish.relayAnswered(B, True, "")
        self.assertEqual(self.successResultOf(publish.whenDecided()), self.successResultOf(first))

    def test_takeOver(self) -> None:
        """
        A new publish of the same event takes over the relays an earlier,
        fired one still waits for and its hooks; the earlier one finishes
        silently, its timeout cancelled.
        """
        earlier = self.started(1, [A, B], timeout=5.0)
        earlier.relayAnswered(A, True, "")
        later = self.quorum(1, timeout=20.0)
        later.takeOver(earlier)
        later.sendTo([C], self.send)
        earlier.relayAnswered(B, True, "ignored")
        later.relayAnswered(B, False, "blocked: later")
        self.clock.advance(20.0)
        self.assertEqual(self.answers, [(A, True, ""), (B, False, "blocked: later")])
        self.assertEqual(
            (earlier.finished, later.outstanding, self.finished), (True, frozenset({C}), [frozenset({C})])
        )

    def test_finishClosing(self) -> None:
        """
        Finished with a message (the pool stopping), it tells the hooks that
        message for the silent relays and fails if it had not fired.
        """
        publish = self.started(1, [A])
        decided = publish.whenDecided()
        publish.finish(POOL_STOPPED)
        self.failureResultOf(decided, PublishFailed)
        self.assertEqual(self.answers, [(A, False, POOL_STOPPED)])

    def test_hookFailure(self) -> None:
        """
        A hook that raises is logged; the other hooks still hear the answer.
        """
        publish = self.quorum(1)

        def broken(url: str, accepted: bool, message: str) -> None:
            raise RuntimeError("broken hook")

        publish.listen([A], broken)
        publish.listen([A], self.hook)
        publish.sendTo([A], self.send)
        publish.relayAnswered(A, True, "")
        self.assertEqual(self.answers, [(A, True, "")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_badQuorum(self) -> None:
        """
        A quorum that is not a positive integer is refused.
        """
        for bad in (0, -1, 1.5):
            self.assertRaises(ValueError, self.quorum, bad)
