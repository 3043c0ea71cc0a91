"""
Tests for L{relaypool.daemon.collector}.
"""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from relaypool.daemon.collector import CollectorThreshold


class CollectorThresholdTests(SynchronousTestCase):
    """
    L{CollectorThreshold} sets the collector's first threshold while it
    runs.
    """

    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        gc.set_threshold(700, 11, 12)

    def test_setWhileRunning(self) -> None:
        """
        Started, it sets the first threshold and keeps the others; stopped,
        it restores the thresholds it found.
        """
        collector = CollectorThreshold(25_000)
        collector.startService()
        self.assertEqual(gc.get_threshold(), (25_000, 11, 12))
        collector.stopService()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))

    def test_stopWithoutStart(self) -> None:
        """
        Stopped without having started, it changes nothing.
        """
        collector = CollectorThreshold(25_000)
        collector.stopService()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))

    def test_atLeastOne(self) -> None:
        """
        A threshold under 1 (which would turn the collector off) is refused.
        """
        error = self.assertRaises(ValueError, CollectorThreshold, 0)
        self.assertEqual(str(error), "the collector threshold must be at least 1, got 0")
