"""
Tests for L{relaypool.store.sqlite}'s database threads: the results of
their transactions reach the reactor thread with one call for all those it
has not collected yet, neighbouring jobs of one kind run together, and the
checkpoint thread pauses between checkpoints.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.store.sqlite import _CallJob, _Checkpointer, _DatabaseThread, _Job, _runTogether


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

    def job(self, results: list[Any], outcome: object) -> _Job:
        """
        A job that ran, with C{outcome}, and passes its result to
        C{results}.
        """
        job = _CallJob(lambda connection: None)
        job.outcome = outcome
        job.addBoth(results.append)
        return job

    def test_oneWakeUpForUncollectedResults(self) -> None:
        """
        Results handed over while the reactor has not collected the earlier
        ones ride on the wake-up already sent: two transactions, one call;
        once collected, the next transaction sends a new one.
        """
        results: list[Any] = []
        self.thread._handOver([self.job(results, 1)])
        self.thread._handOver([self.job(results, 2), self.job(results, 3)])
        self.assertEqual(len(self.reactor.calls), 1)
        self.assertEqual(results, [])
        self.reactor.runCalls()
        self.assertEqual(results, [1, 2, 3])
        self.thread._handOver([self.job(results, 4)])
        self.assertEqual(len(self.reactor.calls), 1)
        self.reactor.runCalls()
        self.assertEqual(results, [1, 2, 3, 4])

    def test_errorsFailTheirJobs(self) -> None:
        """
        An exception handed over fails its job's Deferred; the others fire.
        """
        results: list[Any] = []
        error = ValueError("boom")
        self.thread._handOver([self.job(results, error), self.job(results, 5)])
        self.reactor.runCalls()
        self.assertIs(results[0].value, error)
        self.assertEqual(results[1], 5)


class _Grouped(_CallJob):
    """
    A job run together with its neighbours of this class, which records
    each group it runs.
    """

    together = True
    groups: list[list[str]] = []

    @classmethod
    def runAll(cls, jobs: Sequence[_Job], connection: sqlite3.Connection) -> list[object]:
        cls.groups.append([job.run(connection) for job in jobs])
        return [f"together {result}" for result in cls.groups[-1]]


class RunTogetherTests(SynchronousTestCase):
    """
    L{_runTogether} runs each run of neighbouring jobs of a class that runs
    them together by one call of its C{runAll}, and any other job alone.
    """

    def test_neighboursOfOneClassRunTogether(self) -> None:
        """
        Neighbouring jobs of a class with C{together} make one group; a job
        of another class between them ends it; a group of one runs alone;
        jobs without C{together} run alone even next to each other.
        """
        self.patch(_Grouped, "groups", [])

        def grouped(name: str) -> _Job:
            return _Grouped(lambda connection: name)

        def alone(name: str) -> _Job:
            return _CallJob(lambda connection: name)

        batch = [
            grouped("a"), grouped("b"), alone("c"), alone("d"), grouped("e"),
            grouped("f"), grouped("g"), alone("h"), grouped("i"),
        ]
        runs = [
            ([batch.index(job) for job in jobs], list(results))
            for jobs, results in _runTogether(batch, sqlite3.connect(":memory:"))
        ]
        self.assertEqual(
            runs,
            [
                ([0, 1], ["together a", "together b"]),
                ([2], ["c"]),
                ([3], ["d"]),
                ([4, 5, 6], ["together e", "together f", "together g"]),
                ([7], ["h"]),
                ([8], ["i"]),
            ],
        )
        self.assertEqual(_Grouped.groups, [["a", "b"], ["e", "f", "g"]])


class _RecordingConnection:
    """
    Stands in for a SQLite connection: records the statements executed and
    when.
    """

    def __init__(self) -> None:
        self.statements: list[tuple[float, str]] = []
        self.executed = threading.Semaphore(0)
        self.closed = False

    def execute(self, statement: str) -> _RecordingConnection:
        self.statements.append((time.monotonic(), statement))
        self.executed.release()
        return self

    def fetchall(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


class CheckpointerTests(TestCase):
    """
    L{_Checkpointer}, the thread copying the WAL back into the database.
    """

    @inlineCallbacks
    def test_onePerPause(self) -> Any:
        """
        A request runs a passive checkpoint; the requests made during the
        pause after it are served by one checkpoint once the pause is over.
        """
        connection = _RecordingConnection()
        pause = 0.2
        checkpointer = _Checkpointer(
            "test-checkpoint", connection, pause, reactor  # type: ignore[arg-type]
        )
        checkpointer.request()
        self.assertTrue(connection.executed.acquire(timeout=30))
        for _ in range(5):
            checkpointer.request()
        self.assertTrue(connection.executed.acquire(timeout=30))
        yield checkpointer.stop()
        [(first, statement), (second, again)] = connection.statements
        self.assertEqual((statement, again), ("PRAGMA wal_checkpoint(PASSIVE)",) * 2)
        self.assertGreaterEqual(second - first, pause)

    @inlineCallbacks
    def test_stopDuringThePause(self) -> Any:
        """
        C{stop} ends the thread without waiting for the pause to end (an
        hour here), and closes the connection.
        """
        connection = _RecordingConnection()
        checkpointer = _Checkpointer(
            "test-checkpoint", connection, 3600, reactor  # type: ignore[arg-type]
        )
        checkpointer.request()
        self.assertTrue(connection.executed.acquire(timeout=30))
        yield checkpointer.stop()
        self.assertTrue(connection.closed)
