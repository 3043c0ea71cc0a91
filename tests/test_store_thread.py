"""
Tests for the hand-off of L{relaypool.store.sqlite}'s database threads: the
results of their transactions reach the reactor thread with one call for
all those it has not collected yet.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaypool.store.sqlite import _DatabaseThread, _Job


class _CallsFromThreads:
    """
    A reactor that keeps the calls made from threads until the test runs
    them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))

    def runCalls(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class HandOverTests(SynchronousTestCase):
    """
    L{_DatabaseThread._handOver} (called here from the test, as the
    database thread calls it after each transaction).
    """

    def setUp(self) -> None:
        self.reactor = _CallsFromThreads()
        self.thread = _DatabaseThread(
            "test-store-thread",
            sqlite3.connect(":memory:", check_same_thread=False),
            "BEGIN",
            10,
            self.reactor,  # type: ignore[arg-type]
            None,
        )
        self.addCleanup(self.stopThread)

    def stopThread(self) -> None:
        self.thread.stop()
        self.thread._thread.join()

    def job(self, results: list[Any]) -> _Job:
        job = _Job(lambda connection: None)
        job.deferred.addBoth(results.append)
        return job

    def test_oneWakeUpForUncollectedResults(self) -> None:
        """
        Results handed over while the reactor has not collected the earlier
        ones ride on the wake-up already sent: two transactions, one call;
        once collected, the next transaction sends a new one.
        """
        results: list[Any] = []
        self.thread._handOver([(self.job(results), 1)])
        self.thread._handOver([(self.job(results), 2), (self.job(results), 3)])
        self.assertEqual(len(self.reactor.calls), 1)
        self.assertEqual(results, [])
        self.reactor.runCalls()
        self.assertEqual(results, [1, 2, 3])
        self.thread._handOver([(self.job(results), 4)])
        self.assertEqual(len(self.reactor.calls), 1)
        self.reactor.runCalls()
        self.assertEqual(results, [1, 2, 3, 4])

    def test_errorsFailTheirJobs(self) -> None:
        """
        An exception handed over fails its job's Deferred; the others fire.
        """
        results: list[Any] = []
        error = ValueError("boom")
        self.thread._handOver([(self.job(results), error), (self.job(results), 5)])
        self.reactor.runCalls()
        self.assertIs(results[0].value, error)
        self.assertEqual(results[1], 5)
