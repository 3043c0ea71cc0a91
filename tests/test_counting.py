"""
Tests for L{relaypool.upstream.counting}: the COUNT quorum, on a L{Clock}
(no relays, no sockets, no real time).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import CountUnavailable, PoolClosed
from relaypool.upstream.counting import CountQuorum
from relaypool.upstream.results import CountResult

A, B, C = "ws://a/", "ws://b/", "ws://c/"


class CountQuorumTests(SynchronousTestCase):
    """
    L{CountQuorum} waits for the relays it asked until each counted or went,
    and fires once with the largest count or its fallback.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.asked: list[str] = []
        self.finished: list[frozenset[str]] = []
        self.fallbacks = 0

    def fallback(self) -> Deferred[CountResult]:
        self.fallbacks += 1
        return succeed(CountResult(3, False, {}))

    def started(
        self, relays: list[str], timeout: float = 10.0, fetch: bool = True
    ) -> CountQuorum:
        counting = CountQuorum(
            self.clock,
            "rc1",
            timeout,
            lambda q: self.finished.append(q.outstanding),
            self.fallback if fetch else None,
        )
        counting.ask(relays, self.asked.append)
        return counting

    def test_largestCountApproximate(self) -> None:
        """
        With several relays counting, it gives the largest count, marked
        approximate (their counts may overlap), and every relay's count.
        """
        counting = self.started([A, B, C])
        counting.relayAnswered(A, 5, False)
        counting.relayAnswered(B, 7, False)
        self.assertNoResult(counting.result)
        counting.relayAnswered(C, 6, False)
        self.assertEqual(
            self.successResultOf(counting.result), CountResult(7, True, {A: 5, B: 7, C: 6})
        )
        self.assertEqual((self.asked, self.finished, self.fallbacks), ([A, B, C], [frozenset()], 0))

    def test_oneRelayExact(self) -> None:
        """
        One relay's count is exact unless the relay says it is approximate.
        """
        exact = self.started([A])
        exact.relayAnswered(A, 4, False)
        approximate = self.started([B])
        approximate.relayAnswered(B, 9, True)
        self.assertEqual(
            (self.successResultOf(exact.result), self.successResultOf(approximate.result)),
            (CountResult(4, False, {A: 4}), CountResult(9, True, {B: 9})),
        )

    def test_noRelayCanCount(self) -> None:
        """
        When every relay went without counting (closed the COUNT, cannot
        count, disconnected), it fires with its fallback.
        """
        counting = self.started([A, B])
        counting.relayGone(A, "closed: unsupported")
        self.assertNoResult(counting.result)
        counting.relayGone(B, "error: relaypool: the relay disconnected")
        self.assertEqual(
            (self.successResultOf(counting.result), self.fallbacks), (CountResult(3, False, {}), 1)
        )

    def test_noRelayCanCountNoFallback(self) -> None:
        """
        Without a fallback, no relay counting fails with L{CountUnavailable}.
        """
        counting = self.started([A], fetch=False)
        counting.relayGone(A, "closed: unsupported")
        self.failureResultOf(counting.result, CountUnavailable)

    def test_noRelays(self) -> None:
        """
        Asked of no relay, it finishes at once with its fallback and leaves
        no timer behind.
        """
        counting = self.started([])
        self.assertEqual(self.successResultOf(counting.result), CountResult(3, False, {}))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusedWhileAsking(self) -> None:
        """
        A relay that refuses at once while the others are still being asked
        does not finish it early.
        """
        counting = CountQuorum(self.clock, "rc1", 10.0, lambda q: None, self.fallback)

        def ask(url: str) -> None:
            if url == A:
                counting.relayGone(A, "closed: cannot count")

        counting.ask([A, B], ask)
        self.assertNoResult(counting.result)
        counting.relayAnswered(B, 2, False)
        self.assertEqual(self.successResultOf(counting.result), CountResult(2, False, {B: 2}))

    def test_timeout(self) -> None:
        """
        At the timeout it stops waiting for silent relays, names them to
        C{onFinish}, and gives the counts it has.
        """
        counting = self.started([A, B], timeout=5.0)
        counting.relayAnswered(A, 8, False)
        self.clock.advance(4.9)
        self.assertNoResult(counting.result)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(counting.result), CountResult(8, False, {A: 8}))
        self.assertEqual(self.finished, [frozenset({B})])

    def test_timeoutNoCount(self) -> None:
        """
        At the timeout with no count, it fires with its fallback.
        """
        counting = self.started([A], timeout=5.0)
        self.clock.advance(5.0)
        self.assertEqual((self.successResultOf(counting.result), self.fallbacks), (CountResult(3, False, {}), 1))

    def test_goneIgnoredUnlessWaiting(self) -> None:
        """
        A relay it does not wait for going, a relay going twice, and news
        after it finished change nothing.
        """
        counting = self.started([A, B])
        counting.relayGone(C, "error: relaypool: relay removed from the pool")
        counting.relayAnswered(A, 1, False)
        counting.relayGone(A, "closed: after counting")
        self.assertNoResult(counting.result)
        counting.relayAnswered(B, 2, False)
        counting.relayAnswered(C, 100, True)
        counting.relayGone(B, "closed: late")
        self.assertEqual(self.successResultOf(counting.result), CountResult(2, True, {A: 1, B: 2}))
        self.assertEqual(self.finished, [frozenset()])

    def test_closing(self) -> None:
        """
        Finished because the pool stops, it fails with L{PoolClosed} when
        no relay counted (no fallback), and gives the counts it has
        otherwise.
        """
        empty = self.started([A])
        counted = self.started([A, B])
        counted.relayAnswered(B, 6, False)
        empty.finish(closing=True)
        counted.finish(closing=True)
        self.failureResultOf(empty.result, PoolClosed)
        self.assertEqual(self.successResultOf(counted.result), CountResult(6, False, {B: 6}))
        self.assertEqual((self.fallbacks, self.clock.getDelayedCalls()), (0, []))
