"""
Tests for L{relaypool.cluster.outbox.RedisOutbox}, the cluster's shared
outbox on Redis Streams, under L{relaypool.store.outbox.OutboxPublisher}:
on a real Redis server, with fake relays and relay pools on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from relaypool.cluster.link import RedisLink, parseRedisURL
from relaypool.cluster.outbox import GROUP, RedisOutbox
from relaypool.errors import QueueFull
from relaypool.store.outbox import OutboxPublisher
from relaypool.testing import FakeRelay, makeEvent
from relaypool.transport.mux import Backoff
from tests.redisserver import startRedis
from tests.test_gateway_protocol import TIMEOUT, GatewayTestCase, waitUntil

# Retries as soon as the publisher's pass runs.
AT_ONCE = Backoff(initial=0.01, maximum=0.01)


class RedisOutboxTests(GatewayTestCase):
    """
    Events accepted by one node are published, kept until relays took
    them, and taken over by another node when theirs died.
    """

    timeout = 60

    def setUp(self) -> None:
        self.redis = startRedis(self)
        self.address = parseRedisURL(self.redis.url)

    @inlineCallbacks
    def startNode(self, relay: FakeRelay, nodeId: str, **kwargs: Any) -> Any:
        """
        A node's outbox: a pool over C{relay}, a link to Redis, its own
        store for the time Redis is away, the shared outbox and a
        publisher over it (whose passes the test runs).
        """
        pool = yield self.startPool([relay], publishTimeout=2.0)
        link = RedisLink(self.address, reactor)
        link.start()
        self.addCleanup(link.stop)
        yield waitUntil(lambda: link.up)
        store = self.openStore()
        outbox = RedisOutbox(link, nodeId, pool.relayURLs, store, reactor, **kwargs)
        publisher = OutboxPublisher(reactor, pool, outbox, backoff=AT_ONCE, retryInterval=3600)
        return link, outbox, publisher, store

    @inlineCallbacks
    def startRelay(self) -> Any:
        (relay,) = yield self.startRelays(1)
        return relay

    @inlineCallbacks
    def passesUntilPublished(self, publisher: OutboxPublisher, relay: FakeRelay, event: Any) -> Any:
        """
        Run C{publisher}'s passes, 50 ms apart, until C{relay} has
        C{event} (failing after L{TIMEOUT}).
        """
        for _ in range(int(TIMEOUT / 0.05)):
            yield publisher.retryDue()
            if event in relay.events:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{event.id} was not published")

    def streamLength(self, outbox: RedisOutbox, relay: FakeRelay) -> int:
        reply = self.redis.command("XLEN", outbox.streamKey(relay.url + "/"))
        return int(reply[1:].split(b"\r\n")[0])

    def pendingConsumers(self, outbox: RedisOutbox, relay: FakeRelay) -> bytes:
        return self.redis.command("XPENDING", outbox.streamKey(relay.url + "/"), GROUP)

    @inlineCallbacks
    def test_publishedAndSettled(self) -> Any:
        """
        An accepted event is published at once; the relay's acceptance
        settles its entry, which leaves the stream.
        """
        relay = yield self.startRelay()
        link, outbox, publisher, store = yield self.startNode(relay, "a")
        event = makeEvent()
        result = yield publisher.submit(event)
        self.assertTrue(result.succeeded)
        self.assertIn(event, relay.events)
        yield waitUntil(lambda: self.streamLength(outbox, relay) == 0)
        self.assertEqual((yield outbox.pending()), [])

    @inlineCallbacks
    def test_retriedUntilAccepted(self) -> Any:
        """
        A relay that refuses for now keeps the entry pending for the node
        that added it; a later pass publishes it again.
        """
        relay = yield self.startRelay()
        link, outbox, publisher, store = yield self.startNode(relay, "a")
        relay.misbehaviour.rejectWith = "error: try again later"
        event = makeEvent()
        result = yield publisher.submit(event)
        self.assertFalse(result.succeeded)
        self.assertEqual(self.streamLength(outbox, relay), 1)
        self.assertIn(b"a\r\n", self.pendingConsumers(outbox, relay))
        relay.misbehaviour.rejectWith = None
        yield self.passesUntilPublished(publisher, relay, event)
        yield waitUntil(lambda: self.streamLength(outbox, relay) == 0)

    @inlineCallbacks
    def test_deadNodesEntriesClaimed(self) -> Any:
        """
        The entries of a node that died are claimed by another node once
        idle for C{claimTime}, and published by it.
        """
        relay = yield self.startRelay()
        _, outboxA, publisherA, _ = yield self.startNode(relay, "a")
        linkB, outboxB, publisherB, _ = yield self.startNode(relay, "b", claimTime=0.3)
        relay.misbehaviour.rejectWith = "error: try again later"
        event = makeEvent()
        yield publisherA.submit(event)
        relay.misbehaviour.rejectWith = None
        # Node a is gone: nothing of it runs any more. Node b's passes
        # claim its entry once idle for 0.3 s.
        yield self.passesUntilPublished(publisherB, relay, event)
        yield waitUntil(lambda: self.streamLength(outboxA, relay) == 0)

    @inlineCallbacks
    def test_liveNodeKeepsItsEntries(self) -> Any:
        """
        Each pass of a live node claims its own entries again, so another
        node's pass right after takes none of them.
        """
        relay = yield self.startRelay()
        _, outboxA, publisherA, _ = yield self.startNode(relay, "a")
        _, outboxB, publisherB, _ = yield self.startNode(relay, "b", claimTime=0.3)
        relay.misbehaviour.rejectWith = "error: try again later"
        event = makeEvent()
        yield publisherA.submit(event)
        yield outboxA.pending()
        self.assertEqual((yield outboxB.pending()), [])
        (entry,) = yield outboxA.pending()
        self.assertEqual(entry.event, event)

    @inlineCallbacks
    def test_full(self) -> Any:
        """
        Past C{maxEvents} entries in a relay's stream, an event is refused
        with L{QueueFull}, and nothing of it is added.
        """
        relay = yield self.startRelay()
        relay.misbehaviour.rejectWith = "error: try again later"
        link, outbox, publisher, store = yield self.startNode(relay, "a", maxEvents=2)
        yield publisher.submit(makeEvent())
        yield publisher.submit(makeEvent())
        yield self.assertFailure(publisher.submit(makeEvent()), QueueFull)
        self.assertEqual(self.streamLength(outbox, relay), 2)

    @inlineCallbacks
    def test_redisAway(self) -> Any:
        """
        While Redis is away, an event goes to the node's own outbox, and is
        published from there.
        """
        relay = yield self.startRelay()
        link, outbox, publisher, store = yield self.startNode(relay, "a")
        self.redis.stop()
        yield waitUntil(lambda: not link.up)
        relay.misbehaviour.rejectWith = "error: try again later"
        event = makeEvent()
        yield publisher.submit(event)
        (entry,) = yield store.pending()
        self.assertEqual(entry.event, event)
        relay.misbehaviour.rejectWith = None
        yield self.passesUntilPublished(publisher, relay, event)
        self.assertEqual((yield store.pending()), [])
