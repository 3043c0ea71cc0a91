"""
Tests for the state machine of L{relaypool.cluster.shared.ClusterSubscription},
in memory: a recording stand-in for its node, no Redis and no relay.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from relaypool.cluster.shared import _TRANSITIONS, _UNCHANGED, STATES, ClusterSubscription
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter
from relaypool.testing import makeEvent

FILTERS = (Filter(kinds=frozenset({1}), limit=2),)


class _Upstream:
    def __init__(self, filters: tuple[Filter, ...]) -> None:
        self.filters = filters
        self.closed = False
        self.eventCallbacks: list[Any] = []
        self.eoseCallbacks: list[Any] = []

    def onEvent(self, callback: Any) -> None:
        self.eventCallbacks.append(callback)

    def onEOSE(self, callback: Any) -> None:
        self.eoseCallbacks.append(callback)

    def close(self) -> None:
        self.closed = True

    def send(self, event: Event) -> None:
        for callback in self.eventCallbacks:
            callback(event, "ws://relay/")

    def eose(self) -> None:
        for callback in self.eoseCallbacks:
            callback()


class _Node:
    """
    What a L{ClusterSubscription} uses of its node, recorded.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.upstreams: list[_Upstream] = []
        self.stored: list[Event] = []
        self.published: list[Event] = []
        self.histories: list[Deferred[Any]] = []

    def _subscribeUpstream(self, filters: tuple[Filter, ...]) -> _Upstream:
        upstream = _Upstream(filters)
        self.upstreams.append(upstream)
        return upstream

    def _history(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.histories.append(d)
        return d

    def _follow(self, subscription: ClusterSubscription, lastId: str) -> None:
        self.calls.append(("follow", lastId))

    def _unfollow(self, subscription: ClusterSubscription) -> None:
        self.calls.append(("unfollow",))

    def _forget(self, subscription: ClusterSubscription) -> None:
        self.calls.append(("forget",))

    def _publish(self, name: str, event: Event) -> None:
        self.published.append(event)

    def _backfill(self, filters: tuple[Filter, ...], newest: int) -> None:
        self.calls.append(("backfill", newest))


class ClusterSubscriptionTests(SynchronousTestCase):
    """
    Each change of state does what L{_TRANSITIONS} says, and delivery stays
    exactly-once across changes.
    """

    def setUp(self) -> None:
        self.node = _Node()
        self.subscription = ClusterSubscription(self.node, "name", FILTERS, 100)  # type: ignore[arg-type]
        self.delivered: list[tuple[Event, str]] = []
        self.eosed: list[bool] = []
        self.subscription.onEvent(lambda event, source: self.delivered.append((event, source)))
        self.subscription.onEOSE(lambda: self.eosed.append(True))

    def test_everyPairDecided(self) -> None:
        """
        Every (state, input) of an open subscription has a transition or
        changes nothing; a closed one takes none.
        """
        inputs = ("owned", "notOwned", "redisLost", "close")
        for state in STATES[:-1]:
            for name in inputs:
                self.assertTrue(
                    (state, name) in _TRANSITIONS or (state, name) in _UNCHANGED, (state, name)
                )

    def test_owner(self) -> None:
        """
        An owner subscribes upstream with the filters as they are, delivers
        and publishes each event once, and reaches EOSE with the relays.
        """
        self.subscription.becomeOwner()
        (upstream,) = self.node.upstreams
        self.assertEqual(upstream.filters, FILTERS)
        event = makeEvent()
        upstream.send(event)
        upstream.send(event)
        upstream.eose()
        self.assertEqual(self.delivered, [(event, "ws://relay/")])
        self.assertEqual(self.node.published, [event])
        self.assertEqual(self.eosed, [True])

    def test_follower(self) -> None:
        """
        A follower delivers the stream's stored events (limits applied,
        oldest first), reaches EOSE, then follows from the newest entry.
        """
        self.subscription.becomeFollower()
        events = [makeEvent() for _ in range(3)]
        self.node.histories[0].callback((list(reversed(events)), "9-0"))
        self.assertEqual([event for event, _ in self.delivered], events[1:])
        self.assertEqual(self.eosed, [True])
        self.assertEqual(self.node.calls, [("follow", "9-0")])
        self.assertEqual(self.node.upstreams, [])

    def test_takeOver(self) -> None:
        """
        A follower that takes the lease stops following, subscribes upstream
        from the newest event it delivered, and has its filter set synced
        from before it; what the relays send again is not delivered twice.
        """
        self.subscription.becomeFollower()
        seen = makeEvent()
        self.node.histories[0].callback(([seen], "1-0"))
        self.subscription.becomeOwner()
        (upstream,) = self.node.upstreams
        self.assertEqual([f.since for f in upstream.filters], [seen.createdAt])
        self.assertEqual(
            self.node.calls, [("follow", "1-0"), ("unfollow",), ("backfill", seen.createdAt)]
        )
        new = makeEvent()
        upstream.send(seen)
        upstream.send(new)
        self.assertEqual([event for event, _ in self.delivered], [seen, new])
        self.assertEqual(self.node.published, [new])

    def test_handOver(self) -> None:
        """
        An owner that lost the lease reads the stream, follows it, then
        closes its upstream subscription; the stream's events it delivered
        already are not delivered again.
        """
        self.subscription.becomeOwner()
        (upstream,) = self.node.upstreams
        first = makeEvent()
        upstream.send(first)
        self.subscription.becomeFollower()
        self.assertFalse(upstream.closed)
        later = makeEvent()
        self.node.histories[0].callback(([later, first], "2-0"))
        self.assertTrue(upstream.closed)
        self.assertEqual([event for event, _ in self.delivered], [first, later])
        self.assertEqual(self.node.calls, [("follow", "2-0")])

    def test_staleHistory(self) -> None:
        """
        A stream read for a state left meanwhile is dropped.
        """
        self.subscription.becomeFollower()
        self.subscription.goAlone()
        self.node.histories[0].callback(([makeEvent()], "3-0"))
        self.assertEqual(self.delivered, [])
        self.assertNotIn(("follow", "3-0"), self.node.calls)

    def test_alone(self) -> None:
        """
        Without Redis a deciding subscription subscribes upstream as a
        single node; an owner keeps its subscription and stops publishing.
        """
        self.subscription.goAlone()
        (upstream,) = self.node.upstreams
        upstream.send(makeEvent())
        self.assertEqual(self.node.published, [])
        self.subscription.becomeOwner()
        self.subscription.goAlone()
        self.assertEqual(len(self.node.upstreams), 1)

    def test_closed(self) -> None:
        """
        Closing closes the upstream subscription and forgets the filter set
        once; a closed subscription takes no input.
        """
        self.subscription.becomeOwner()
        self.subscription.close()
        self.subscription.close()
        self.subscription.becomeFollower()
        self.assertTrue(self.node.upstreams[0].closed)
        self.assertEqual(self.node.calls, [("forget",)])
        self.assertEqual(self.node.histories, [])
        self.assertEqual(self.subscription.state, "closed")
