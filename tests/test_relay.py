"""
Tests for L{relaypool.upstream.relay}: one L{Relay} against a L{FakeRelay}
over a L{MemoryNetwork}, no real sockets and no real time.

Every answer comes from the fake relay's NIP-01 server; each test moves the
bytes with C{flush} and the time with C{advance}, so latencies, back-off
delays and keepalive timeouts are exact.
"""

from __future__ import annotations

from typing import Any

import txaio
from twisted.trial.unittest import SynchronousTestCase

from relaypool.nostr.event import Event, generatePrivateKey, publicKeyFor
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientCount, ClientEvent, ClientReq, RelayMessage
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.testing import FakeRelay, MemoryNetwork, makeEvent
from relaypool.transport.health import ConnectionMetrics
from relaypool.transport.mux import Backoff
from relaypool.transport.names import Address, StaticNameService
from relaypool.upstream.relay import Relay, RelayConnection, RelayOwner

KIND1 = Filter.fromDict({"kinds": [1]})
BACKOFF = Backoff(initial=2.0, maximum=16.0, jitter=0.0, resetAfter=10.0)
RATE_LIMIT_BACKOFF = Backoff(initial=2.0, maximum=60.0, jitter=0.0)
INTERVAL = 30.0


class RecordingOwner:
    """
    A L{RelayOwner} that records what the relay tells it, in order, and
    finds every event valid and new.

    @ivar calls: C{(what, ...)} tuples, connection changes left out.
    @ivar connectionChanges: how many times a connection opened or closed.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.connectionChanges = 0

    def relayEvent(self, relay: Relay, wireId: str, subscriptionId: str, event: Event) -> None:
        self.calls.append(("event", subscriptionId, event.id))
        relay.eventAccepted(wireId, event.createdAt)

    def relayDuplicate(
        self, relay: Relay, wireId: str, subscriptionId: str, eventId: str, raw: dict[str, Any]
    ) -> bool:
        return False

    def relayEOSE(self, relay: Relay, subscriptionId: str) -> None:
        self.calls.append(("eose", subscriptionId))

    def relayClosed(self, relay: Relay, subscriptionId: str, message: str) -> None:
        self.calls.append(("closed", subscriptionId, message))

    def relayOK(self, relay: Relay, eventId: str, accepted: bool, message: str) -> None:
        self.calls.append(("ok", eventId, accepted, message))

    def relayCount(self, relay: Relay, subscriptionId: str, count: int, approximate: bool) -> None:
        self.calls.append(("count", subscriptionId, count, approximate))

    def relayOther(self, relay: Relay, message: RelayMessage) -> None:
        self.calls.append(("other", message))

    def relayConnectionChanged(self, relay: Relay) -> None:
        self.connectionChanges += 1

    def heard(self, what: str) -> list[tuple[Any, ...]]:
        """
        @return: the recorded calls of one kind, without their kind.
        """
        return [call[1:] for call in self.calls if call[0] == what]


class RelayTestCase(SynchronousTestCase):
    """
    A fake relay listening on a L{MemoryNetwork}, a recording owner, and
    helpers to make L{Relay}s to it and drive them.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.addCleanup(self.assertNoTimersLeft)
        savedLoop = txaio.config.loop
        txaio.config.loop = self.network
        self.addCleanup(setattr, txaio.config, "loop", savedLoop)
        self.fake = FakeRelay(self.network)
        self.fake.start()
        self.addCleanup(self.stopFake)
        self.owner = RecordingOwner()
        self.names = StaticNameService()

    def assertNoTimersLeft(self) -> None:
        """
        Once the relays and the fake relay stopped, no timer is left.
        """
        self.assertEqual(self.network.getDelayedCalls(), [])

    def stopFake(self) -> None:
        stopped = self.fake.stop()
        self.flush()
        self.successResultOf(stopped)

    def makeRelay(self, url: str | None = None, **kwargs: Any) -> Relay:
        """
        A started L{Relay} to the fake relay (not connected before a
        L{flush}), stopped at the end of the test.
        """
        kwargs.setdefault("backoff", BACKOFF)
        kwargs.setdefault("rateLimitBackoff", RATE_LIMIT_BACKOFF)
        owner: RelayOwner = self.owner
        relay = Relay(self.network, url or self.fake.url, owner, self.names, **kwargs)
        relay.start()
        self.addCleanup(self.flush)
        self.addCleanup(relay.stop)
        return relay

    def connectedRelay(self, **kwargs: Any) -> Relay:
        """
        A L{Relay} whose connections are open.
        """
        relay = self.makeRelay(**kwargs)
        self.flush()
        self.assertEqual(len(relay.openConnections()), kwargs.get("connectionsPerAddress", 1))
        return relay

    def flush(self) -> None:
        self.network.flush()

    def tick(self, seconds: float) -> None:
        """
        Let C{seconds} pass, then deliver what is in flight.
        """
        self.network.advance(seconds)
        self.network.flush()

    def attemptTimes(self, seconds: int) -> list[float]:
        """
        Let C{seconds} pass, one at a time.

        @return: the times at which connection attempts were made.
        """
        times = []
        for _ in range(seconds):
            attempts = len(self.network.tcpClients)
            self.tick(1.0)
            if len(self.network.tcpClients) > attempts:
                times.append(self.network.seconds())
        return times

    def received(self, kind: type) -> list[Any]:
        """
        @return: the client messages of C{kind} the fake relay handled.
        """
        return [message for message in self.fake.received if isinstance(message, kind)]

    def successes(self, relay: Relay) -> list[int]:
        """
        @return: the successes recorded on each open connection of C{relay}.
        """
        metrics = [relay.pool.metrics(c) for c in relay.openConnections()]
        return [0 if m is None else m.successes for m in metrics]

    def metrics(self, relay: Relay, connection: RelayConnection) -> ConnectionMetrics:
        metrics = relay.pool.metrics(connection)
        assert metrics is not None
        return metrics

    def carrier(self, relay: Relay) -> RelayConnection:
        """
        @return: the one open connection carrying a subscription.
        """
        (connection,) = [c for c in relay.openConnections() if c.subscriptionCount]
        return connection

    def sicken(self, relay: Relay, connection: RelayConnection) -> None:
        """
        Record errors on C{connection} until its health policy finds it
        unhealthy.
        """
        for _ in range(relay.pool._policy.maxConsecutiveErrors):
            relay.pool.recordError(connection)
        self.assertFalse(relay.pool.isHealthy(connection))


class ConnectionTests(RelayTestCase):
    """
    Connecting, reconnecting and stopping.
    """

    def test_connects(self) -> None:
        """
        A started relay is C{connecting} until its connection is open; then
        it reports C{open}, tells its owner, and counts the open.
        """
        relay = self.makeRelay()
        self.assertEqual((relay.state(), relay.isConnected()), ("connecting", False))
        self.assertEqual(relay.downSince, 0.0)
        self.network.advance(1.5)
        self.flush()
        self.assertEqual((relay.state(), relay.isConnected()), ("open", True))
        self.assertEqual((relay.connectedSince, relay.downSince), (1.5, None))
        self.assertEqual((relay.counters.opens, relay.counters.reconnects), (1, 0))
        self.assertGreater(self.owner.connectionChanges, 0)
        self.assertEqual(self.fake.connectionCount(), 1)

    def test_reconnectsAfterBackoff(self) -> None:
        """
        When the relay drops the connection, the relay is C{backing-off}
        and connects again once the back-off delay has passed, not before.
        """
        relay = self.connectedRelay()
        self.network.linkOf(relay.openConnections()[0]).disconnect()
        self.flush()
        self.assertEqual((relay.state(), relay.downSince), ("backing-off", 0.0))
        self.tick(1.9)
        self.assertEqual(len(self.network.tcpClients), 1)
        self.tick(0.1)
        self.assertEqual((relay.state(), len(self.network.tcpClients)), ("open", 2))
        self.assertEqual((relay.counters.opens, relay.counters.reconnects), (2, 1))

    def test_refusedAttemptsBackOffLonger(self) -> None:
        """
        While the relay refuses connections, each attempt in a row waits
        twice as long as the one before; once it listens again, the next
        attempt opens.
        """
        relay = self.connectedRelay()
        self.fake.stop(abort=True)
        self.flush()
        self.assertEqual(self.attemptTimes(20), [2.0, 6.0, 14.0])
        self.assertEqual(relay.state(), "backing-off")
        self.fake.start()
        self.assertEqual(self.attemptTimes(20), [30.0])
        self.assertEqual(relay.state(), "open")

    def test_subscriptionResentAfterReconnect(self) -> None:
        """
        A live subscription is sent again on the new connection after a
        reconnect, with C{since} set to the newest event seen and no
        C{limit}, and keeps delivering live events.
        """
        self.fake.store(makeEvent(createdAt=100), makeEvent(createdAt=200))
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1.withLimit(10)])
        self.flush()
        self.network.linkOf(relay.openConnections()[0]).disconnect()
        self.flush()
        self.tick(2.0)
        first, again = self.received(ClientReq)
        self.assertEqual((first.filters[0].since, first.filters[0].limit), (None, 10))
        self.assertEqual((again.subscriptionId, again.filters[0].since), ("s", 200))
        self.assertIsNone(again.filters[0].limit)
        self.assertEqual(self.carrier(relay), relay.openConnections()[0])
        live = makeEvent(createdAt=300)
        self.fake.store(live)
        self.flush()
        self.assertEqual(self.owner.calls[-1], ("event", "s", live.id))
        self.assertEqual(len(self.owner.heard("eose")), 1)

    def test_invalidUTF8IsAMalformedMessage(self) -> None:
        """
        A text message that is not UTF-8 is dropped and counted as a
        protocol error, as malformed JSON is (the JSON parser checks the
        encoding); the connection stays open and the next message arrives.
        """
        relay = self.connectedRelay()
        (protocol,) = self.fake._protocols
        protocol.sendMessages([b'["NOTICE","\xff"]', b'["NOTICE","fine"]'])
        self.flush()
        self.assertEqual(relay.counters.protocolErrors, 1)
        self.assertEqual([call[0].message for call in self.owner.heard("other")], ["fine"])
        self.assertEqual(len(relay.openConnections()), 1)

    def test_stopClosesAndFires(self) -> None:
        """
        L{Relay.stop} closes every connection with a close handshake and
        fires once they are closed; the relay is C{closed} and never
        reconnects.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        stopped = relay.stop()
        self.assertNoResult(stopped)
        self.flush()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual((relay.state(), relay.isStopped()), ("closed", True))
        self.assertEqual(self.fake.connectionCount(), 0)
        self.assertTrue(all(link.closed for link in self.network.links))
        self.tick(60.0)
        self.assertEqual(len(self.network.tcpClients), 2)

    def test_stopAbortsUnansweredClose(self) -> None:
        """
        L{Relay.stop} fires even when the relay never answers the close
        handshake: the connection is aborted after two seconds.
        """
        relay = self.connectedRelay()
        link = self.network.linkOf(relay.openConnections()[0])
        link.stalled = True
        stopped = relay.stop()
        self.tick(1.9)
        self.assertNoResult(stopped)
        self.tick(0.1)
        self.successResultOf(stopped)
        self.assertTrue(link.closed)


class SubscriptionTests(RelayTestCase):
    """
    REQ, EVENT and EOSE, and the latency of the first phase.
    """

    def test_storedEventsThenEOSE(self) -> None:
        """
        A subscription's stored events reach the owner, newest first, then
        one EOSE.
        """
        older, newer = makeEvent(createdAt=100), makeEvent(createdAt=200)
        self.fake.store(older, newer)
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(
            self.owner.calls, [("event", "s", newer.id), ("event", "s", older.id), ("eose", "s")]
        )
        self.assertEqual(relay.counters.eventsReceived, 2)

    def test_eoseLatencyOnItsConnection(self) -> None:
        """
        The time from REQ to EOSE is recorded as a success on the
        connection that carried the REQ, and on no other.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        relay.subscribe("s", [KIND1])
        self.tick(0.25)
        carrier = self.carrier(relay)
        self.assertEqual(self.successes(relay), [c.subscriptionCount for c in relay.openConnections()])
        self.assertEqual(sorted(self.successes(relay)), [0, 1])
        self.assertEqual(self.metrics(relay, carrier).lastLatency, 0.25)
        self.assertEqual(relay.latency(), 0.25)

    def test_liveEventAfterEOSE(self) -> None:
        """
        An event the relay gets after EOSE reaches the owner.
        """
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        event = makeEvent()
        self.fake.store(event)
        self.flush()
        self.assertEqual(self.owner.calls, [("eose", "s"), ("event", "s", event.id)])

    def test_unsubscribeSendsCLOSE(self) -> None:
        """
        Unsubscribing closes the subscription on the relay, which forwards
        it nothing more.
        """
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        relay.unsubscribe("s")
        self.flush()
        self.assertEqual(self.fake.subscriptionCount(), 0)
        self.fake.store(makeEvent())
        self.flush()
        self.assertEqual(self.owner.calls, [("eose", "s")])

    def test_closedErrorCountsAgainstConnection(self) -> None:
        """
        A C{CLOSED "error: ..."} ends the subscription for the owner and
        counts as an error on the connection that carried it.
        """
        self.fake.misbehaviour.closeWith = "error: shutting down"
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(self.owner.calls, [("closed", "s", "error: shutting down")])
        metrics = self.metrics(relay, relay.openConnections()[0])
        self.assertEqual((metrics.errors, metrics.successes), (1, 0))

    def test_closedBlockedIsNoError(self) -> None:
        """
        A C{CLOSED "blocked: ..."} ends the subscription but is a refusal by
        the relay's rules, not an error of the connection.
        """
        self.fake.misbehaviour.closeWith = "blocked: not allowed"
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(self.owner.calls, [("closed", "s", "blocked: not allowed")])
        metrics = relay.pool.metrics(relay.openConnections()[0])
        self.assertEqual(0 if metrics is None else metrics.errors, 0)


class PublishTests(RelayTestCase):
    """
    EVENT and OK.
    """

    def test_okLatencyOnItsConnection(self) -> None:
        """
        A published event reaches the relay; its OK reaches the owner and
        the time from EVENT to OK is recorded on the connection that
        carried them.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        event = makeEvent()
        self.assertTrue(relay.publish(event))
        self.tick(0.5)
        self.assertEqual(self.owner.calls, [("ok", event.id, True, "")])
        self.assertEqual(self.fake.events, [event])
        self.assertEqual(relay.counters.okAccepted, 1)
        self.assertEqual(sorted(self.successes(relay)), [0, 1])
        self.assertEqual(relay.latency(), 0.5)

    def test_okErrorCountsAgainstConnection(self) -> None:
        """
        An C{OK false "error: ..."} reaches the owner as a rejection and
        counts as an error on the connection.
        """
        self.fake.misbehaviour.rejectWith = "error: disk full"
        relay = self.connectedRelay()
        event = makeEvent()
        relay.publish(event)
        self.flush()
        self.assertEqual(self.owner.calls, [("ok", event.id, False, "error: disk full")])
        self.assertEqual(relay.counters.okRejected, 1)
        metrics = self.metrics(relay, relay.openConnections()[0])
        self.assertEqual((metrics.errors, metrics.successes), (1, 0))

    def test_blockedIsNoError(self) -> None:
        """
        An C{OK false "blocked: ..."} is a rejection for the owner but an
        answer in time for the connection's health.
        """
        self.fake.misbehaviour.rejectWith = "blocked: spam"
        relay = self.connectedRelay()
        event = makeEvent()
        relay.publish(event)
        self.flush()
        self.assertEqual(self.owner.calls, [("ok", event.id, False, "blocked: spam")])
        metrics = self.metrics(relay, relay.openConnections()[0])
        self.assertEqual((metrics.errors, metrics.successes), (0, 1))

    def test_duplicateIsAcceptedAndNoError(self) -> None:
        """
        A C{duplicate:} answer, with C{OK true} or C{OK false}, means the
        relay has the event: accepted for the owner, never an error.
        """
        event = makeEvent()
        self.fake.store(event)
        relay = self.connectedRelay()
        relay.publish(event)
        self.flush()
        self.fake.misbehaviour.rejectDuplicates = True
        relay.publish(event)
        self.flush()
        self.assertEqual(
            [accepted for _, accepted, _ in self.owner.heard("ok")], [True, True]
        )
        self.assertEqual([m[:9] for _, _, m in self.owner.heard("ok")], ["duplicate"] * 2)
        metrics = self.metrics(relay, relay.openConnections()[0])
        self.assertEqual((metrics.errors, metrics.successes), (0, 2))
        self.assertEqual((relay.counters.okAccepted, relay.counters.okRejected), (2, 0))

    def test_outboundQueueBound(self) -> None:
        """
        While no connection is open, messages wait in the outbound queue, at
        most C{outboundCapacity} of them: one more is refused and counted in
        C{outboundDropped}. The waiting ones go out in order once connected.
        """
        relay = self.makeRelay(outboundCapacity=2)
        first, second, third = makeEvent(), makeEvent(), makeEvent()
        self.assertEqual([relay.publish(e) for e in (first, second, third)], [True, True, False])
        self.assertEqual((relay.outboundQueued(), relay.counters.outboundDropped), (2, 1))
        self.flush()
        self.assertEqual([m.event for m in self.received(ClientEvent)], [first, second])
        self.assertEqual(
            self.owner.heard("ok"), [(first.id, True, ""), (second.id, True, "")]
        )
        self.assertEqual(relay.outboundQueued(), 0)


class CountTests(RelayTestCase):
    """
    NIP-45 COUNT.
    """

    def test_count(self) -> None:
        """
        A COUNT's answer reaches the owner, and its latency is recorded on
        the connection that carried it.
        """
        self.fake.store(makeEvent(), makeEvent(), makeEvent(kind=7))
        relay = self.connectedRelay()
        relay.count("c", [KIND1])
        self.tick(0.125)
        self.assertEqual(self.owner.calls, [("count", "c", 2, False)])
        self.assertEqual(self.metrics(relay, relay.openConnections()[0]).lastLatency, 0.125)
        self.assertEqual(relay.openConnections()[0].subscriptionCount, 0)

    def test_countNotAskedWithoutNip45(self) -> None:
        """
        A relay whose NIP-11 document lists its NIPs without 45 is not sent
        the COUNT: the owner hears at once that it is closed.
        """
        relay = self.connectedRelay()
        relay.applyInformation(RelayInformation(supportedNips=(1, 11)))
        relay.count("c", [KIND1])
        self.flush()
        [(subscriptionId, message)] = self.owner.heard("closed")
        self.assertEqual(subscriptionId, "c")
        self.assertTrue(message.startswith("unsupported:"))
        self.assertEqual(self.received(ClientCount), [])


    def test_countLostWithConnection(self) -> None:
        """
        A COUNT whose connection closes before the answer is closed for the
        owner, not sent again.
        """
        self.fake.misbehaviour.countSupported = False
        self.fake.misbehaviour.countRefusal = "ignore"
        relay = self.connectedRelay()
        relay.count("c", [KIND1])
        self.flush()
        self.network.linkOf(relay.openConnections()[0]).disconnect()
        self.tick(BACKOFF.initial)
        self.assertEqual(
            self.owner.calls, [("closed", "c", "error: relaypool: connection lost before COUNT")]
        )
        self.assertEqual(len(self.received(ClientCount)), 1)


class AuthTests(RelayTestCase):
    """
    NIP-42: answering the relay's challenge and retrying once.
    """

    def setUp(self) -> None:
        super().setUp()
        self.fake.misbehaviour.requireAuth = True
        self.key = generatePrivateKey()

    def test_reqRetriedAfterAuth(self) -> None:
        """
        A REQ closed with C{auth-required:} is sent again once the relay
        accepted the relay's signed AUTH event.
        """
        event = makeEvent()
        self.fake.store(event)
        relay = self.connectedRelay(signingKey=self.key)
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(self.fake.authenticated, {publicKeyFor(self.key)})
        self.assertEqual(len(self.received(ClientReq)), 2)
        self.assertEqual(self.owner.calls, [("event", "s", event.id), ("eose", "s")])

    def test_publishRetriedAfterAuth(self) -> None:
        """
        An EVENT refused with C{auth-required:} is sent again after AUTH;
        the owner hears the answer to that one.
        """
        relay = self.connectedRelay(signingKey=self.key)
        event = makeEvent()
        relay.publish(event)
        self.flush()
        self.assertEqual(self.owner.calls, [("ok", event.id, True, "")])
        self.assertEqual(self.fake.events, [event])

    def test_withoutKey(self) -> None:
        """
        Without a signing key, C{auth-required:} answers reach the owner as
        they are, and are no health error.
        """
        relay = self.connectedRelay()
        event = makeEvent()
        relay.subscribe("s", [KIND1])
        relay.publish(event)
        self.flush()
        [(_, closedMessage)] = self.owner.heard("closed")
        [(_, accepted, okMessage)] = self.owner.heard("ok")
        self.assertTrue(closedMessage.startswith("auth-required:"))
        self.assertEqual(accepted, False)
        self.assertTrue(okMessage.startswith("auth-required:"))
        self.assertEqual(self.metrics(relay, relay.openConnections()[0]).errors, 0)


class KeepaliveTests(RelayTestCase):
    """
    The keepalive round: the ping is the connection's health probe.
    """

    def test_pongIsHealthProbe(self) -> None:
        """
        A keepalive round pings every connection; each pong records its
        round trip as a success on its connection.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        relay.keepalive(INTERVAL)
        self.tick(0.2)
        metrics = [self.metrics(relay, c) for c in relay.openConnections()]
        self.assertEqual([(m.successes, m.lastLatency) for m in metrics], [(1, 0.2), (1, 0.2)])

    def test_silentConnectionDropped(self) -> None:
        """
        A connection silent for more than two keepalive intervals is
        dropped at the next round, its unanswered ping counting as an
        error, and the slot connects again.
        """
        relay = self.connectedRelay()
        (address,) = relay.mux.addresses()
        link = self.network.linkOf(relay.openConnections()[0])
        link.stalled = True
        for _ in range(2):
            relay.keepalive(INTERVAL)
            self.tick(INTERVAL)
        relay.keepalive(INTERVAL)
        self.flush()
        self.assertFalse(link.closed)
        self.tick(INTERVAL)
        relay.keepalive(INTERVAL)
        self.flush()
        self.assertTrue(link.closed)
        self.assertEqual(relay.state(), "backing-off")
        aggregate = relay.pool.metrics(address)
        assert aggregate is not None
        self.assertEqual(aggregate.errors, 1)
        self.tick(BACKOFF.initial)
        self.assertEqual((relay.state(), relay.counters.reconnects), ("open", 1))


class RateLimitTests(RelayTestCase):
    """
    Backing off after C{rate-limited}.
    """

    def test_rateLimitedREQBacksOff(self) -> None:
        """
        A REQ closed with C{rate-limited:} is sent again once the back-off
        delay has passed, not before; the delay doubles with each refusal
        in a row, and messages sent meanwhile wait for it too.
        """
        self.fake.misbehaviour.closeWith = "rate-limited: slow down"
        relay = self.connectedRelay()
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(relay.rateLimitedUntil(), 2.0)
        self.tick(1.9)
        event = makeEvent()
        relay.publish(event)
        self.flush()
        self.assertEqual((len(self.received(ClientReq)), relay.outboundQueued()), (1, 1))
        self.tick(0.1)
        self.assertEqual((len(self.received(ClientReq)), relay.outboundQueued()), (2, 0))
        self.assertEqual(self.owner.heard("ok"), [(event.id, True, "")])
        self.assertEqual(relay.rateLimitedUntil(), 6.0)
        self.fake.misbehaviour.closeWith = None
        self.tick(3.9)
        self.assertEqual(len(self.received(ClientReq)), 2)
        self.tick(0.1)
        self.assertEqual(len(self.received(ClientReq)), 3)
        self.assertEqual(self.owner.heard("eose"), [("s",)])
        self.assertEqual(self.owner.heard("closed"), [])

    def test_rateLimitedPublishRetriedOnce(self) -> None:
        """
        An C{OK false "rate-limited: ..."} backs the relay off and the event
        is sent once more after the delay; that answer is the owner's.
        """
        self.fake.misbehaviour.rejectWith = "rate-limited: slow down"
        relay = self.connectedRelay()
        event = makeEvent()
        relay.publish(event)
        self.flush()
        self.assertEqual((self.owner.calls, len(self.received(ClientEvent))), ([], 1))
        self.fake.misbehaviour.rejectWith = None
        self.tick(1.9)
        self.assertEqual(len(self.received(ClientEvent)), 1)
        self.tick(0.1)
        self.assertEqual(self.owner.calls, [("ok", event.id, True, "")])
        self.assertEqual(self.fake.events, [event])


    def test_rateLimitedPublishLatency(self) -> None:
        """
        The latency recorded for a publish sent again after C{rate-limited}
        is the retry's, from when it went out at the end of the back-off:
        the back-off is the relay's rule, not its slowness.
        """
        self.fake.misbehaviour.rejectWith = "rate-limited: slow down"
        self.fake.misbehaviour.delay = 0.1
        relay = self.connectedRelay()
        relay.publish(makeEvent())
        self.flush()
        self.tick(0.1)
        self.assertEqual(relay.rateLimitedUntil(), 2.1)
        self.fake.misbehaviour.rejectWith = None
        self.tick(2.0)
        self.tick(0.1)
        self.assertEqual(len(self.owner.heard("ok")), 1)
        metrics = self.metrics(relay, relay.openConnections()[0])
        self.assertEqual(metrics.successes, 1)
        self.assertAlmostEqual(metrics.lastLatency, 0.1)


class HealthTests(RelayTestCase):
    """
    Several connections: picking skips unhealthy ones, subscriptions move
    off connections that go, the relay's health is their aggregate.
    """

    def test_pickSkipsUnhealthyConnection(self) -> None:
        """
        While a healthy connection is open, publishes and REQs go out on it
        and never on an unhealthy one.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        sick, well = relay.openConnections()
        self.sicken(relay, sick)
        for i in range(4):
            relay.publish(makeEvent(content=str(i)))
        relay.subscribe("s", [KIND1])
        self.flush()
        self.assertEqual(len(self.owner.heard("ok")), 4)
        self.assertEqual(self.metrics(relay, sick).successes, 0)
        self.assertEqual(self.metrics(relay, well).successes, 5)
        self.assertIs(self.carrier(relay), well)

    def test_subscriptionMovesOffEvictedConnection(self) -> None:
        """
        The keepalive round replaces an unhealthy connection; the
        subscription it carried moves to the healthy one with C{since},
        and the slot connects again at once.
        """
        self.fake.store(makeEvent(createdAt=100))
        relay = self.connectedRelay(connectionsPerAddress=2)
        relay.subscribe("s", [KIND1])
        self.flush()
        sick = self.carrier(relay)
        self.sicken(relay, sick)
        relay.keepalive(INTERVAL)
        self.assertNotIn(sick, relay.openConnections())
        self.flush()
        self.assertFalse(sick.live)
        self.assertEqual(len(relay.openConnections()), 2)
        self.assertIsNot(self.carrier(relay), sick)
        first, again = self.received(ClientReq)
        self.assertEqual(again.filters[0].since, 100)
        live = makeEvent(createdAt=200)
        self.fake.store(live)
        self.flush()
        self.assertEqual(self.owner.calls[-1], ("event", "s", live.id))

    def test_subscriptionMovesOffDroppedConnection(self) -> None:
        """
        When the relay drops the connection carrying a subscription, the
        subscription moves at once to the relay's other open connection.
        """
        relay = self.connectedRelay(connectionsPerAddress=2)
        relay.subscribe("s", [KIND1])
        self.flush()
        dropped = self.carrier(relay)
        self.network.linkOf(dropped).disconnect()
        self.flush()
        self.assertEqual(len(relay.openConnections()), 1)
        self.assertEqual(self.carrier(relay), relay.openConnections()[0])
        self.assertEqual(len(self.received(ClientReq)), 2)
        self.assertEqual(self.fake.subscriptionCount(), 1)

    def test_healthIsAggregateOfAddresses(self) -> None:
        """
        The relay's health score and latency are the mean, over its
        addresses, of the pool's aggregate for each address.
        """
        port = self.fake.port
        self.names = StaticNameService(
            {f"relay.test:{port}": [Address("10.0.0.1", port), Address("10.0.0.2", port)]}
        )
        relay = self.makeRelay(f"ws://relay.test:{port}")
        self.flush()
        first, second = relay.openConnections()
        relay.pool.recordError(first)
        relay.pool.recordSuccess(second, 0.25)
        aggregates = relay.pool.addressMetrics()
        self.assertEqual(len(aggregates), 2)
        scores = sorted(m.healthScore() for m in aggregates.values())
        self.assertEqual(scores[1], 100.0)
        self.assertLess(scores[0], 100.0)
        self.assertEqual(relay.healthScore(), sum(scores) / 2)
        self.assertEqual(relay.latency(), 0.25)


class LimitationTests(RelayTestCase):
    """
    The relay's NIP-11 limits.
    """

    def test_maxSubscriptionsQueuesREQs(self) -> None:
        """
        Beyond the relay's C{max_subscriptions} on a connection, REQs wait
        and go out as earlier subscriptions close.
        """
        relay = self.connectedRelay()
        relay.applyLimitation(Limitation(maxSubscriptions=1))
        relay.subscribe("a", [KIND1])
        relay.subscribe("b", [KIND1])
        self.flush()
        self.assertEqual(relay.waitingSubscriptions(), 1)
        self.assertEqual([m.subscriptionId for m in self.received(ClientReq)], ["a"])
        relay.unsubscribe("a")
        self.flush()
        self.assertEqual([m.subscriptionId for m in self.received(ClientReq)], ["a", "b"])
        self.assertEqual(self.owner.heard("eose"), [("a",), ("b",)])

    def test_maxFiltersSplitsREQ(self) -> None:
        """
        A subscription with more filters than the relay's C{max_filters}
        goes out as several REQs; the owner hears one EOSE, once all of
        them ended their stored events.
        """
        relay = self.connectedRelay()
        relay.applyLimitation(Limitation(maxFilters=1))
        relay.subscribe("s", [KIND1, Filter.fromDict({"kinds": [7]})])
        self.flush()
        self.assertEqual([m.subscriptionId for m in self.received(ClientReq)], ["s:0", "s:1"])
        self.assertEqual(self.owner.calls, [("eose", "s")])

    def test_holdForInformation(self) -> None:
        """
        A relay told to hold for its NIP-11 document sends no REQ before it
        comes, and sends them under its limits after.
        """
        relay = self.connectedRelay()
        relay.holdForInformation()
        relay.subscribe("s", [KIND1.withLimit(500)])
        self.flush()
        self.assertEqual(self.received(ClientReq), [])
        relay.applyInformation(RelayInformation(limitation=Limitation(maxLimit=100)))
        self.flush()
        [req] = self.received(ClientReq)
        self.assertEqual(req.filters[0].limit, 100)
        self.assertEqual(self.owner.calls, [("eose", "s")])
