"""
Tests for L{relaypool.transport.health}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaypool.transport.health import ConnectionMetrics, HealthPolicy


class ConnectionMetricsTests(SynchronousTestCase):
    """
    Tests for L{ConnectionMetrics}.
    """

    def test_fresh(self) -> None:
        """
        New metrics are fully healthy, with no latency and no errors.
        """
        metrics = ConnectionMetrics(5.0)
        self.assertEqual(
            (metrics.created, metrics.lastUsed, metrics.latencyEwma, metrics.errorRate()),
            (5.0, 5.0, None, 0.0),
        )
        self.assertEqual(metrics.healthScore(), 100.0)

    def test_success(self) -> None:
        """
        A success counts, sets the latencies and the last-used time, and
        ends an error streak.
        """
        metrics = ConnectionMetrics(0.0)
        metrics.recordError(1.0)
        metrics.recordSuccess(0.1, 2.0)
        self.assertEqual(
            (metrics.successes, metrics.consecutiveErrors, metrics.lastLatency, metrics.lastUsed),
            (1, 0, 0.1, 2.0),
        )

    def test_ewma(self) -> None:
        """
        The latency average moves towards each new latency by C{ewmaAlpha}.
        """
        metrics = ConnectionMetrics(0.0, HealthPolicy(ewmaAlpha=0.5))
        metrics.recordSuccess(1.0, 1.0)
        metrics.recordSuccess(3.0, 2.0)
        self.assertEqual(metrics.latencyEwma, 2.0)

    def test_errors(self) -> None:
        """
        Errors count in total and in a row, and set the error rate.
        """
        metrics = ConnectionMetrics(0.0)
        metrics.recordSuccess(0.1, 1.0)
        for when in (2.0, 3.0, 4.0):
            metrics.recordError(when)
        self.assertEqual((metrics.errors, metrics.consecutiveErrors), (3, 3))
        self.assertEqual((metrics.errorRate(), metrics.lastUsed), (0.75, 4.0))

    def test_scoreFromErrors(self) -> None:
        """
        The error rate and the error streak lower the score.
        """
        metrics = ConnectionMetrics(0.0)
        metrics.recordSuccess(0.1, 0.0)
        metrics.recordError(0.0)
        self.assertEqual(metrics.healthScore(), 100 - 40 * 0.5 - 10)

    def test_scoreFromLatency(self) -> None:
        """
        A latency average above the target lowers the score, by at most 30.
        """
        metrics = ConnectionMetrics(0.0, HealthPolicy(latencyTarget=1.0))
        metrics.recordSuccess(1.5, 0.0)
        self.assertEqual(metrics.healthScore(), 85.0)
        metrics.recordSuccess(100.0, 0.0)
        self.assertEqual(metrics.healthScore(), 70.0)

    def test_scoreFloor(self) -> None:
        """
        The score never goes below 0.
        """
        metrics = ConnectionMetrics(0.0, HealthPolicy(latencyTarget=0.01))
        metrics.recordSuccess(10.0, 0.0)
        for _ in range(10):
            metrics.recordError(0.0)
        self.assertEqual(metrics.healthScore(), 0.0)


class HealthPolicyTests(SynchronousTestCase):
    """
    Tests for L{HealthPolicy.isUnhealthy}.
    """

    def test_healthy(self) -> None:
        """
        Fresh metrics are not unhealthy.
        """
        self.assertFalse(HealthPolicy().isUnhealthy(ConnectionMetrics(0.0)))

    def test_consecutiveErrors(self) -> None:
        """
        C{maxConsecutiveErrors} errors in a row make a connection unhealthy
        whatever its score.
        """
        policy = HealthPolicy(maxConsecutiveErrors=2, minScore=0.0)
        metrics = ConnectionMetrics(0.0, policy)
        metrics.recordError(0.0)
        self.assertFalse(policy.isUnhealthy(metrics))
        metrics.recordError(0.0)
        self.assertTrue(policy.isUnhealthy(metrics))

    def test_lowScore(self) -> None:
        """
        A score at or below C{minScore} is unhealthy.
        """
        policy = HealthPolicy(minScore=80.0)
        metrics = ConnectionMetrics(0.0, policy)
        metrics.recordSuccess(0.1, 0.0)
        metrics.recordError(0.0)
        self.assertTrue(policy.isUnhealthy(metrics))

    def test_maxErrors(self) -> None:
        """
        C{maxErrors} errors in all make a connection unhealthy even when
        successes keep its score up and break every streak.
        """
        policy = HealthPolicy(maxErrors=3, minScore=0.0)
        metrics = ConnectionMetrics(0.0, policy)
        for _ in range(2):
            metrics.recordError(0.0)
            metrics.recordSuccess(0.1, 0.0)
        self.assertFalse(policy.isUnhealthy(metrics))
        metrics.recordError(0.0)
        self.assertTrue(policy.isUnhealthy(metrics))

    def test_maxErrorsOffByDefault(self) -> None:
        """
        By default (C{maxErrors} 0) errors spread among many successes do
        not make a connection unhealthy.
        """
        policy = HealthPolicy()
        metrics = ConnectionMetrics(0.0, policy)
        for _ in range(100):
            metrics.recordError(0.0)
            for _ in range(9):
                metrics.recordSuccess(0.1, 0.0)
        self.assertFalse(policy.isUnhealthy(metrics))

    def test_maxErrorsNegative(self) -> None:
        """
        A negative C{maxErrors} is refused with L{ValueError}.
        """
        self.assertRaises(ValueError, HealthPolicy, maxErrors=-1)
