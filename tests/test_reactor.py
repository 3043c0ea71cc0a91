"""
Tests for L{relaypool._reactor}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaypool._reactor import defaultReactor


class DefaultReactorTests(SynchronousTestCase):
    """
    L{defaultReactor} picks the reactor a part uses.
    """

    def test_given(self) -> None:
        """
        A given reactor is used as it is.
        """
        clock = Clock()
        self.assertIs(defaultReactor(clock), clock)

    def test_global(self) -> None:
        """
        Without one, the global reactor is used.
        """
        from twisted.internet import reactor

        self.assertIs(defaultReactor(None), reactor)
