"""
Tests for L{relaypool.upstream.raw}: the pool's raw channel.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import PoolClosed
from relaypool.nostr.messages import RelayNotice
from relaypool.upstream.raw import RawChannel
from relaypool.upstream.results import PoolMessage


def _notice(text: str) -> PoolMessage:
    return PoolMessage("ws://relay/", RelayNotice(text))


class RawChannelTests(SynchronousTestCase):
    """
    Routing, bounds and closing of L{RawChannel}.
    """

    def setUp(self) -> None:
        self.pressure: list[int] = []
        self.channel = RawChannel(4, self.pressure.append)

    def test_noteRoutesReplies(self) -> None:
        """
        A raw REQ or COUNT makes its subscription id routed here until a raw
        CLOSE; a raw EVENT makes its id routed here.
        """
        self.channel.note(b'["REQ","a",{}]')
        self.channel.note(b'["COUNT","b",{}]')
        self.channel.note(b'["EVENT",{"id":"e1"}]')
        self.channel.note(b'["CLOSE","a"]')
        self.channel.note(b"not json")
        self.assertEqual(
            [
                self.channel.hasSubscription("a"),
                self.channel.hasSubscription("b"),
                self.channel.hasPublish("e1"),
            ],
            [False, True, True],
        )

    def test_rememberedIdsBounded(self) -> None:
        """
        At most C{capacity} raw subscription ids are remembered, the oldest
        forgotten first.
        """
        for index in range(5):
            self.channel.note(b'["REQ","s%d",{}]' % index)
        self.assertEqual(
            [self.channel.hasSubscription(f"s{index}") for index in range(5)],
            [False, True, True, True, True],
        )

    def test_fullQueuePausesUntilHalfDrained(self) -> None:
        """
        A queue that reaches C{capacity} asks to pause the relays once, and to
        resume once it drained to half.
        """
        for index in range(4):
            self.channel.push(_notice(str(index)), mayPause=True)
        pausedAtFull = list(self.pressure)
        self.channel.tryRecv()
        self.channel.tryRecv()
        self.assertEqual((pausedAtFull, self.pressure), ([+1], [+1, -1]))

    def test_fullQueueDropsWhatMayNotPause(self) -> None:
        """
        A message that may not pause the relays is dropped and counted when
        the queue is full.
        """
        for index in range(4):
            self.channel.push(_notice(str(index)), mayPause=True)
        self.channel.push(_notice("extra"), mayPause=False)
        self.assertEqual((self.channel.queued(), self.channel.dropped), (4, 1))

    def test_waiterGetsMessageAtOnce(self) -> None:
        """
        A waiting C{recv} gets the next message without queueing it.
        """
        received = []
        self.channel.recv().addCallback(received.append)
        message = _notice("hello")
        self.channel.push(message, mayPause=True)
        self.assertEqual((received, self.channel.queued()), ([message], 0))

    def test_closeFailsWaiters(self) -> None:
        """
        Closing fails waiting and later C{recv} calls with L{PoolClosed}.
        """
        waiting = self.channel.recv()
        self.channel.close()
        self.failureResultOf(waiting, PoolClosed)
        self.failureResultOf(self.channel.recv(), PoolClosed)
