"""
Tests for the gateway (L{relaypool.gateway.gateway.Gateway} and its relay
facade, L{relaypool.gateway.protocol}), driven by real WebSocket clients on
127.0.0.1 against fake relays from L{relaypool.testing}.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import treq
import txaio
from autobahn.websocket.protocol import WebSocketProtocol
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from relaypool import __version__
from relaypool.gateway.facade import RelayFacade
from relaypool.gateway.gateway import Gateway
from relaypool.gateway.limits import GatewayLimits
from relaypool.gateway.metrics import GatewayMetrics
from relaypool.gateway.protocol import _HANDSHAKE_STATE, GatewayFactory
from relaypool.gateway.publishing import RETRYING
from relaypool.gateway.registry import ConnectionRegistry
from relaypool.gateway.subscriptions import RECENT_IDS
from relaypool.nostr.event import Event, generatePrivateKey
from relaypool.nostr.filter import Filter, filtersKey
from relaypool.nostr.messages import ClientCount, ClientEvent, ClientReq
from relaypool.nostr.nip11 import RelayInformation
from relaypool.store.outbox import OutboxPublisher
from relaypool.store.sqlite import SQLiteEventStore
from relaypool.testing import FakeRelay, forgeSignature, makeEvent
from relaypool.transport.mux import Backoff
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import RelayPool
from tests.wsclient import NostrClient

#: How long a test waits for a frame or a condition that must come: a safety
#: net, never a bound a test asserts.
TIMEOUT = 20.0


def eventDict(event: Event) -> dict[str, Any]:
    return event.toDict()


@inlineCallbacks
def waitUntil(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> Any:
    """
    Poll C{predicate} every 10 ms until it holds; fail after C{timeout}.
    """
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")


class GatewayTestCase(TestCase):
    """
    Fixtures: fake relays, a relay pool over them, a gateway on a free port,
    and test clients; everything is stopped at the end of each test.
    """

    timeout = 30

    @inlineCallbacks
    def startRelays(self, count: int = 1) -> Any:
        relays = []
        for _ in range(count):
            relay = FakeRelay(reactor)
            yield relay.start()
            self.addCleanup(relay.stop, True)
            relays.append(relay)
        return relays

    @inlineCallbacks
    def startPool(self, relays: list[FakeRelay], **kwargs: Any) -> Any:
        kwargs.setdefault("eoseTimeout", 30.0)
        kwargs.setdefault("publishTimeout", 30.0)
        kwargs.setdefault("fetchInformation", False)
        pool = RelayPool(reactor, nameService=StaticNameService(), **kwargs)
        for relay in relays:
            pool.addRelay(relay.url)
        pool.startService()
        self.addCleanup(pool.stopService)
        yield waitUntil(lambda: len(pool.activeRelayURLs()) == len(relays))
        return pool

    def openStore(self) -> SQLiteEventStore:
        store = SQLiteEventStore(self.mktemp() + ".db", reactor)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def startGateway(self, pool: Any = None, **kwargs: Any) -> Any:
        gateway = Gateway(reactor, pool, "tcp:0:interface=127.0.0.1", **kwargs)
        gateway.startService()
        self.addCleanup(self._stopGateway, gateway)
        yield gateway.whenListening()
        return gateway

    def _stopGateway(self, gateway: Gateway) -> Deferred[None] | None:
        if gateway.running:
            return gateway.stopService()
        return None

    @inlineCallbacks
    def connect(self, gateway: Gateway, **kwargs: Any) -> Any:
        assert gateway.port is not None
        client = NostrClient(reactor, TIMEOUT)
        yield client.connect(gateway.port.getHost().port, **kwargs)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def relayAndGateway(self, relays: int = 1, **kwargs: Any) -> Any:
        fakes = yield self.startRelays(relays)
        pool = yield self.startPool(fakes)
        gateway = yield self.startGateway(pool, **kwargs)
        return fakes, pool, gateway

    @inlineCallbacks
    def get(self, gateway: Gateway, path: str, headers: dict[str, str] | None = None) -> Any:
        """
        C{GET} C{path} on the gateway's port.

        @return: a Deferred firing with the response and its body.
        """
        assert gateway.port is not None
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.get(
            f"http://127.0.0.1:{gateway.port.getHost().port}{path}",
            headers=headers,
            pool=pool,
        )
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def sync(self, client: NostrClient) -> Any:
        """
        Wait until the gateway handled everything C{client} sent before and
        the frames it answered arrived (a malformed message's NOTICE comes
        back after them).
        """
        marker = f"sync {len(client.frames)} {time.monotonic()}"
        client.sendRaw(orjson.dumps([marker]))
        yield client.waitFor(lambda f: f[0] == "NOTICE" and marker[:20] in f[1])


class SubscriptionTests(GatewayTestCase):
    """
    C{REQ}: stored events, EOSE once, live events; shared upstream
    subscriptions and their cleanup.
    """

    @inlineCallbacks
    def test_storedThenEOSEThenLive(self) -> Any:
        """
        A REQ gets the relay's stored events newest first, one EOSE, then
        live events.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        old, new = makeEvent(content="old"), makeEvent(content="new")
        relay.store(old, new)
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        self.assertEqual(client.eventIds("s"), [new.id, old.id])
        live = makeEvent(content="live")
        relay.store(live)
        yield client.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == live.id)
        self.assertEqual(client.verbs("s"), ["EVENT", "EVENT", "EOSE", "EVENT"])

    @inlineCallbacks
    def test_sharedUpstream(self) -> Any:
        """
        Identical filter sets from two clients share one upstream
        subscription, and both get every event once.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        stored = makeEvent()
        relay.store(stored)
        first = yield self.connect(gateway)
        second = yield self.connect(gateway)
        first.send("REQ", "a", {"kinds": [1], "limit": 10})
        yield first.waitForVerb("EOSE", "a")
        second.send("REQ", "b", {"limit": 10, "kinds": [1]})
        yield second.waitForVerb("EOSE", "b")
        yield waitUntil(lambda: relay.subscriptionCount() == 1)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 1)
        live = makeEvent()
        relay.store(live)
        yield first.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == live.id)
        yield second.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == live.id)
        yield self.sync(first)
        yield self.sync(second)
        self.assertEqual(first.eventIds("a"), [stored.id, live.id])
        self.assertEqual(second.eventIds("b"), [stored.id, live.id])
        self.assertEqual(first.verbs("a").count("EOSE"), 1)
        self.assertEqual(second.verbs("b").count("EOSE"), 1)

    @inlineCallbacks
    def test_sameSubscriptionIdOneRoom(self) -> Any:
        """
        Clients using the same subscription id for the same filters are one
        room: each event is one frame for all of them.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        clients = []
        for _ in range(3):
            client = yield self.connect(gateway)
            client.send("REQ", "feed", {"kinds": [1]})
            yield client.waitForVerb("EOSE", "feed")
            clients.append(client)
        key = filtersKey([Filter(kinds=frozenset([1]), limit=500)])
        self.assertEqual(gateway.registry.roomSize((key, "feed")), 3)
        sentBefore = gateway.registry.stats().framesSent
        live = makeEvent()
        relay.store(live)
        for client in clients:
            yield client.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == live.id)
        self.assertEqual(gateway.registry.stats().framesSent - sentBefore, 3)
        self.assertEqual(gateway.facade.stats().eventsDelivered, 1)

    @inlineCallbacks
    def test_lateJoinerNoGapNoDuplicate(self) -> Any:
        """
        A client joining a live shared subscription gets the stored events
        through its own query, one EOSE, then live events, none twice.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        first = yield self.connect(gateway)
        first.send("REQ", "a", {"kinds": [1]})
        yield first.waitForVerb("EOSE", "a")
        published = makeEvent()
        relay.store(published)
        yield first.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == published.id)
        late = yield self.connect(gateway)
        late.send("REQ", "b", {"kinds": [1]})
        yield late.waitForVerb("EOSE", "b")
        after = makeEvent()
        relay.store(after)
        yield late.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == after.id)
        yield self.sync(late)
        self.assertEqual(late.eventIds("b"), [published.id, after.id])
        self.assertEqual(late.verbs("b"), ["EVENT", "EOSE", "EVENT"])

    @inlineCallbacks
    def test_closeLastMemberClosesUpstream(self) -> Any:
        """
        When the last member sends CLOSE, the upstream subscription closes.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        first = yield self.connect(gateway)
        second = yield self.connect(gateway)
        for client in (first, second):
            client.send("REQ", "s", {"kinds": [1]})
            yield client.waitForVerb("EOSE", "s")
        first.send("CLOSE", "s")
        yield self.sync(first)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 1)
        second.send("CLOSE", "s")
        yield self.sync(second)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 0)
        self.assertEqual(gateway.registry.roomCount(), 0)
        yield waitUntil(lambda: relay.subscriptionCount() == 0)

    @inlineCallbacks
    def test_disconnectLeaves(self) -> Any:
        """
        A client that disconnects leaves its rooms; the upstream
        subscription closes with its last member.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        yield client.close()
        yield waitUntil(lambda: gateway.registry.connectionCount() == 0)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 0)
        yield waitUntil(lambda: relay.subscriptionCount() == 0)

    @inlineCallbacks
    def test_replaceSubscription(self) -> Any:
        """
        A REQ reusing an open subscription id replaces it: events of the old
        filters stop.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        client.send("REQ", "s", {"kinds": [7]})
        yield client.waitFor(lambda f: client.verbs("s").count("EOSE") == 2)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 1)
        relay.store(makeEvent(kind=1), reaction := makeEvent(kind=7))
        yield client.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == reaction.id)
        self.assertEqual(client.eventIds("s"), [reaction.id])

    @inlineCallbacks
    def test_eoseWaitsForUpstream(self) -> Any:
        """
        EOSE reaches a client only when the upstream subscription's EOSE
        fired (here: the relay never sends one and drops after its stored
        event).
        """
        fakes = yield self.startRelays()
        fakes[0].misbehaviour.neverEOSE = True
        pool = yield self.startPool(fakes, eoseTimeout=3600)
        gateway = yield self.startGateway(pool)
        stored = makeEvent()
        fakes[0].store(stored)
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EVENT", "s")
        yield fakes[0].stop(abort=True)
        yield client.waitForVerb("EOSE", "s")
        self.assertEqual(client.verbs("s"), ["EVENT", "EOSE"])

    @inlineCallbacks
    def test_limitClamped(self) -> Any:
        """
        A C{limit} over C{maxLimit}, or none, is sent upstream as
        C{maxLimit}.
        """
        (relay,), pool, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxLimit=5))
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1], "limit": 1000}, {"kinds": [2]})
        yield client.waitForVerb("EOSE", "s")
        (req,) = [m for m in relay.received if isinstance(m, ClientReq)]
        self.assertEqual(sorted(f.limit for f in req.filters), [5, 5])

    @inlineCallbacks
    def test_recentIdsBounded(self) -> Any:
        """
        A shared subscription remembers at most L{RECENT_IDS} delivered ids.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        (shared,) = gateway.facade.subscriptions._shared.values()
        for index in range(RECENT_IDS + 5):
            self.assertTrue(shared.markDelivered(f"{index:064x}"))
        self.assertEqual(len(shared.recent), RECENT_IDS)
        self.assertFalse(shared.markDelivered(f"{RECENT_IDS + 4:064x}"))


class PublishTests(GatewayTestCase):
    """
    C{EVENT}: local validation, honest C{OK} with a quorum, delivery to
    local subscriptions.
    """

    @inlineCallbacks
    def test_acceptedByRelay(self) -> Any:
        """
        A valid event accepted by the relay gets C{OK true}; the relay has
        it.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertEqual(ok, ["OK", event.id, True, ""])
        self.assertIn(event, relay.events)

    @inlineCallbacks
    def test_invalidNeverReachesRelay(self) -> Any:
        """
        An event with a bad signature or a wrong id gets C{OK false
        "invalid: ..."} and is never sent upstream.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        forged = forgeSignature(makeEvent())
        client.send("EVENT", eventDict(forged))
        ok = yield client.waitForVerb("OK", forged.id)
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("invalid: "))
        wrongId = dict(eventDict(makeEvent()), content="tampered")
        client.send("EVENT", wrongId)
        ok = yield client.waitForVerb("OK", wrongId["id"])
        self.assertEqual(ok[2:], [False, "invalid: event id does not match its content"])
        yield self.sync(client)
        self.assertEqual([m for m in relay.received if isinstance(m, ClientEvent)], [])
        self.assertEqual(gateway.facade.stats().eventsInvalid, 2)

    @inlineCallbacks
    def test_quorumNotReached(self) -> Any:
        """
        With quorum 2 and one relay rejecting, the client gets C{OK false}
        with the relays' common prefix and reasons.
        """
        relays, pool, gateway = yield self.relayAndGateway(2, quorum=2)
        relays[1].misbehaviour.rejectWith = "blocked: not welcome"
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("blocked: accepted by 1 of the 2 relays"), ok[3])
        self.assertIn("blocked: not welcome", ok[3])
        self.assertIn(relays[1].url, ok[3])

    @inlineCallbacks
    def test_quorumReached(self) -> Any:
        """
        With quorum 2 and two relays accepting, the client gets C{OK true}.
        """
        relays, pool, gateway = yield self.relayAndGateway(2, quorum=2)
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertTrue(ok[2])
        self.assertIn(event, relays[0].events)
        self.assertIn(event, relays[1].events)

    @inlineCallbacks
    def test_duplicateAnsweredTrue(self) -> Any:
        """
        Under the quorum policy, an event the relays already have (one
        answering C{OK false "duplicate: ..."}, the other C{OK true
        "duplicate: ..."}) is answered C{OK true "duplicate: ..."}: it is
        stored.
        """
        relays, pool, gateway = yield self.relayAndGateway(2, quorum=2)
        event = makeEvent()
        for relay in relays:
            relay.store(event)
        relays[0].misbehaviour.rejectDuplicates = True
        client = yield self.connect(gateway)
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertTrue(ok[2])
        self.assertTrue(ok[3].startswith("duplicate: "), ok[3])
        self.assertIn(relays[0].url, ok[3])

    @inlineCallbacks
    def test_silentRelayTimesOut(self) -> Any:
        """
        A relay that never answers makes the publish time out: C{OK false
        "error: ..."}, never a fake C{OK true}.
        """
        fakes = yield self.startRelays()
        fakes[0].misbehaviour.silentOK = True
        pool = yield self.startPool(fakes, publishTimeout=0.3)
        gateway = yield self.startGateway(pool)
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("error: "), ok[3])
        self.assertIn("timed out", ok[3])

    @inlineCallbacks
    def test_deliveredToOtherClientsOnce(self) -> Any:
        """
        An accepted event reaches the matching subscriptions of other
        clients once, although the relay echoes it back too.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        reader = yield self.connect(gateway)
        writer = yield self.connect(gateway)
        reader.send("REQ", "r", {"kinds": [1]})
        yield reader.waitForVerb("EOSE", "r")
        event = makeEvent()
        writer.send("EVENT", eventDict(event))
        yield writer.waitForVerb("OK", event.id)
        yield reader.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == event.id)
        marker = makeEvent()
        relay.store(marker)
        yield reader.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == marker.id)
        self.assertEqual(reader.eventIds("r"), [event.id, marker.id])

    @inlineCallbacks
    def test_expired(self) -> Any:
        """
        An event whose NIP-40 expiration passed is refused as invalid.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        event = makeEvent(tags=[["expiration", "1000"]])
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertEqual(ok[2:], [False, "invalid: event has expired"])

    @inlineCallbacks
    def test_authKindRefused(self) -> Any:
        """
        A kind-22242 event sent as EVENT is refused: it is never broadcast.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        event = makeEvent(kind=22242, createdAt=int(time.time()))
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("invalid: "))

    @inlineCallbacks
    def test_count(self) -> Any:
        """
        COUNT is answered with the relays' count.
        """
        (relay,), pool, gateway = yield self.relayAndGateway()
        relay.store(makeEvent(), makeEvent(), makeEvent(kind=7))
        client = yield self.connect(gateway)
        client.send("COUNT", "c", {"kinds": [1]})
        reply = yield client.waitForVerb("COUNT", "c")
        self.assertEqual(reply, ["COUNT", "c", {"count": 2}])


class StoreTests(GatewayTestCase):
    """
    With a store: answered from it first; without relays the gateway is a
    plain relay.
    """

    @inlineCallbacks
    def test_storeOnlyRelay(self) -> Any:
        """
        Without a pool, an EVENT is saved (C{OK true} after the commit),
        delivered to other clients' live subscriptions, and answered to
        later REQs from the store.
        """
        store = self.openStore()
        gateway = yield self.startGateway(None, store=store)
        reader = yield self.connect(gateway)
        writer = yield self.connect(gateway)
        reader.send("REQ", "r", {"kinds": [1]})
        yield reader.waitForVerb("EOSE", "r")
        event = makeEvent()
        writer.send("EVENT", eventDict(event))
        ok = yield writer.waitForVerb("OK", event.id)
        self.assertEqual(ok, ["OK", event.id, True, ""])
        stored = yield store.query([Filter(ids=frozenset([event.id]))])
        self.assertEqual(stored, [event])
        yield reader.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == event.id)
        writer.send("REQ", "w", {"kinds": [1]})
        yield writer.waitForVerb("EOSE", "w")
        self.assertEqual(writer.eventIds("w"), [event.id])

    @inlineCallbacks
    def test_storeOnlyDuplicate(self) -> Any:
        """
        Publishing a stored event again is answered C{OK true "duplicate:
        ..."}.
        """
        store = self.openStore()
        gateway = yield self.startGateway(None, store=store)
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        yield client.waitForVerb("OK", event.id)
        client.send("EVENT", eventDict(event))
        yield client.waitFor(lambda f: client.verbs().count("OK") == 2)
        self.assertEqual(client.frames[-1][2], True)
        self.assertTrue(client.frames[-1][3].startswith("duplicate: "))

    @inlineCallbacks
    def test_storeOnlyCount(self) -> Any:
        """
        Without a pool, COUNT is answered from the store.
        """
        store = self.openStore()
        yield store.save(makeEvent())
        gateway = yield self.startGateway(None, store=store)
        client = yield self.connect(gateway)
        client.send("COUNT", "c", {"kinds": [1]})
        reply = yield client.waitForVerb("COUNT", "c")
        self.assertEqual(reply, ["COUNT", "c", {"count": 1}])

    @inlineCallbacks
    def test_storeAndRelays(self) -> Any:
        """
        With a store and relays, a REQ gets the store's and the relays'
        events, each once, and one EOSE after both.
        """
        store = self.openStore()
        inStore, inBoth, inRelay = makeEvent(), makeEvent(), makeEvent()
        yield store.save(inStore)
        yield store.save(inBoth)
        (relay,) = yield self.startRelays()
        relay.store(inBoth, inRelay)
        pool = yield self.startPool([relay])
        gateway = yield self.startGateway(pool, store=store)
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        self.assertEqual(sorted(client.eventIds("s")), sorted([inStore.id, inBoth.id, inRelay.id]))
        self.assertEqual(client.eventIds("s")[:2], [inBoth.id, inStore.id])

    @inlineCallbacks
    def test_localPolicyForwards(self) -> Any:
        """
        Under the C{"local"} policy, C{OK true} follows the store's commit
        and the event reaches the relays in the background.
        """
        store = self.openStore()
        (relay,) = yield self.startRelays()
        pool = yield self.startPool([relay])
        gateway = yield self.startGateway(pool, store=store, okPolicy="local")
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertTrue(ok[2])
        yield waitUntil(lambda: event in relay.events)

    @inlineCallbacks
    def startOutbox(self, relays: int = 1) -> Any:
        store = self.openStore()
        fakes = yield self.startRelays(relays)
        pool = yield self.startPool(fakes)
        outbox = OutboxPublisher(reactor, pool, store, retryInterval=60.0)
        return store, fakes, pool, outbox

    @inlineCallbacks
    def test_outboxAccepted(self) -> Any:
        """
        With an outbox, an event is published through it: C{OK true} once
        the relay accepted, and the outbox row is done.
        """
        store, (relay,), pool, outbox = yield self.startOutbox()
        gateway = yield self.startGateway(pool, store=store, outbox=outbox)
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertEqual(ok[2:], [True, ""])
        self.assertIn(event, relay.events)
        pending = yield store.pending()
        self.assertEqual(pending, [])

    @inlineCallbacks
    def publishRefused(self, refusal: str) -> Any:
        """
        Publish an event through an outbox to one relay that answers C{OK
        false} with C{refusal}.

        @return: a Deferred firing with the client's C{OK} message, the
            event, and the events left in the outbox.
        """
        store, (relay,), pool, outbox = yield self.startOutbox()
        relay.misbehaviour.rejectWith = refusal
        gateway = yield self.startGateway(pool, store=store, outbox=outbox)
        client = yield self.connect(gateway)
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        pending = yield store.pending()
        return ok, event, [entry.event for entry in pending]

    @inlineCallbacks
    def test_outboxRejected(self) -> Any:
        """
        With an outbox, a relay's rejection is an honest C{OK false}, and the
        event stays in the outbox to be retried.
        """
        ok, event, pending = yield self.publishRefused("rate-limited: later")
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("rate-limited: "), ok[3])
        self.assertTrue(ok[3].endswith(f"; {RETRYING}"), ok[3])
        self.assertEqual(pending, [event])

    @inlineCallbacks
    def test_outboxRefusedForGood(self) -> Any:
        """
        With an outbox, a final refusal (C{blocked:}) is an honest C{OK
        false} that does not claim retries, and the event does not stay in
        the outbox: the relay would refuse it again.
        """
        ok, event, pending = yield self.publishRefused("blocked: not welcome")
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("blocked: "), ok[3])
        self.assertNotIn(RETRYING, ok[3])
        self.assertEqual(pending, [])

    @inlineCallbacks
    def test_outboxDuplicate(self) -> Any:
        """
        Through the outbox, an event the relay already has (C{OK false
        "duplicate: ..."}) is answered C{OK true "duplicate: ..."} and
        leaves nothing in the outbox.
        """
        store, (relay,), pool, outbox = yield self.startOutbox()
        event = makeEvent()
        relay.store(event)
        relay.misbehaviour.rejectDuplicates = True
        gateway = yield self.startGateway(pool, store=store, outbox=outbox)
        client = yield self.connect(gateway)
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertEqual(
            ok[2:],
            [
                True,
                f"duplicate: the relays already have this event "
                f"({relay.url}/: duplicate: already have this event)",
            ],
        )
        pending = yield store.pending()
        self.assertEqual(pending, [])

    def test_policyNeedsStore(self) -> None:
        """
        The C{"local"} policy, or no pool, without a store is refused.
        """
        self.assertRaises(ValueError, Gateway, reactor, object(), okPolicy="local")
        self.assertRaises(ValueError, Gateway, reactor, None)
        self.assertRaises(ValueError, Gateway, reactor, object(), okPolicy="maybe")


class LimitTests(GatewayTestCase):
    """
    Every per-connection limit is enforced with a clear answer, and the
    connection stays usable.
    """

    @inlineCallbacks
    def test_maxSubscriptions(self) -> Any:
        """
        A REQ over C{maxSubscriptions} is refused with C{CLOSED
        "blocked: ..."}; replacing an open one is still allowed.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxSubscriptions=2))
        client = yield self.connect(gateway)
        for name in ("a", "b"):
            client.send("REQ", name, {"kinds": [1]})
            yield client.waitForVerb("EOSE", name)
        client.send("REQ", "c", {"kinds": [1]})
        closed = yield client.waitForVerb("CLOSED", "c")
        self.assertTrue(closed[2].startswith("blocked: "))
        client.send("REQ", "a", {"kinds": [2]})
        yield client.waitFor(lambda f: client.verbs("a").count("EOSE") == 2)

    @inlineCallbacks
    def test_maxFilters(self) -> Any:
        """
        A REQ with more than C{maxFilters} filters is refused.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxFilters=2))
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]}, {"kinds": [2]}, {"kinds": [3]})
        closed = yield client.waitForVerb("CLOSED", "s")
        self.assertTrue(closed[2].startswith("invalid: "))

    @inlineCallbacks
    def test_subscriptionIdLength(self) -> Any:
        """
        A subscription id longer than C{maxSubscriptionIdLength} is refused.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxSubscriptionIdLength=4))
        client = yield self.connect(gateway)
        client.send("REQ", "toolong", {"kinds": [1]})
        closed = yield client.waitForVerb("CLOSED", "toolong")
        self.assertTrue(closed[2].startswith("invalid: "))

    @inlineCallbacks
    def test_messageSize(self) -> Any:
        """
        A message over C{maxMessageSize} gets a NOTICE and the connection
        stays usable.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxMessageSize=1000))
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1], "search": "x" * 1500})
        notice = yield client.waitForVerb("NOTICE")
        self.assertIn("over the limit of 1000 bytes", notice[1])
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")

    @inlineCallbacks
    def test_messageHardLimit(self) -> Any:
        """
        A message over twice C{maxMessageSize} fails the connection (close
        code 1009) before it is buffered.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxMessageSize=1000))
        client = yield self.connect(gateway)
        client.sendRaw(b"[" + b" " * 3000 + b"]")
        yield client.whenClosed()
        self.assertEqual(client.closeCode, 1009)

    @inlineCallbacks
    def test_eventRate(self) -> Any:
        """
        EVENTs over the rate are answered C{OK false "rate-limited: ..."}.
        """
        (relay,), _, gateway = yield self.relayAndGateway(
            limits=GatewayLimits(eventsPerSecond=0.001, eventBurst=2)
        )
        client = yield self.connect(gateway)
        events = [makeEvent() for _ in range(3)]
        for event in events:
            client.send("EVENT", eventDict(event))
        answers = yield gatherResults([client.waitForVerb("OK", e.id) for e in events])
        self.assertEqual([a[2] for a in answers], [True, True, False])
        self.assertTrue(answers[2][3].startswith("rate-limited: "))
        self.assertNotIn(events[2], relay.events)

    @inlineCallbacks
    def test_reqRate(self) -> Any:
        """
        REQs over the rate are answered C{CLOSED "rate-limited: ..."}.
        """
        _, _, gateway = yield self.relayAndGateway(
            limits=GatewayLimits(reqsPerSecond=0.001, reqBurst=1)
        )
        client = yield self.connect(gateway)
        client.send("REQ", "a", {"kinds": [1]})
        client.send("REQ", "b", {"kinds": [1]})
        closed = yield client.waitForVerb("CLOSED", "b")
        self.assertTrue(closed[2].startswith("rate-limited: "))
        yield client.waitForVerb("EOSE", "a")

    @inlineCallbacks
    def test_connectionsPerIP(self) -> Any:
        """
        A handshake over C{maxConnectionsPerIP} is refused; once a
        connection closes, a new one is admitted.
        """
        _, _, gateway = yield self.relayAndGateway(limits=GatewayLimits(maxConnectionsPerIP=2))
        first = yield self.connect(gateway)
        yield self.connect(gateway)
        refused = NostrClient(reactor, TIMEOUT)
        assert gateway.port is not None
        yield self.assertFailure(refused.connect(gateway.port.getHost().port), ConnectionError)
        self.assertEqual(gateway.facade.stats().deniedConnections, 1)
        yield first.close()
        yield waitUntil(lambda: gateway.factory.connectionsFrom("127.0.0.1") == 1)
        yield self.connect(gateway)


class MalformedInputTests(GatewayTestCase):
    """
    Malformed input of each kind gets a NOTICE, CLOSED or OK false with a
    reason, and the connection stays usable.
    """

    @inlineCallbacks
    def assertAnswered(
        self, payload: bytes, verb: str, *values: Any, isBinary: bool = False
    ) -> Any:
        _, _, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        client.sendRaw(payload, isBinary)
        frame = yield client.waitForVerb(verb, *values)
        self.assertTrue(frame[-1].startswith("invalid: "), frame)
        client.send("REQ", "after", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "after")

    def test_badJSON(self) -> Any:
        """
        Invalid JSON gets a NOTICE.
        """
        return self.assertAnswered(b'["REQ", "s", {', "NOTICE")

    def test_notAnArray(self) -> Any:
        """
        A JSON object gets a NOTICE.
        """
        return self.assertAnswered(b'{"REQ": 1}', "NOTICE")

    def test_unknownVerb(self) -> Any:
        """
        An unknown verb gets a NOTICE.
        """
        return self.assertAnswered(b'["HELLO", 1]', "NOTICE")

    def test_badFilter(self) -> Any:
        """
        A REQ with a malformed filter gets C{CLOSED} for its subscription.
        """
        return self.assertAnswered(b'["REQ", "s", {"kinds": "one"}]', "CLOSED", "s")

    def test_badEvent(self) -> Any:
        """
        A malformed event with a string id gets C{OK false}.
        """
        return self.assertAnswered(
            b'["EVENT", {"id": "' + b"a" * 64 + b'", "kind": "x"}]', "OK", "a" * 64, False
        )

    def test_binary(self) -> Any:
        """
        A binary message gets a NOTICE.
        """
        return self.assertAnswered(b"\x00\x01", "NOTICE", isBinary=True)


class AuthTests(GatewayTestCase):
    """
    NIP-42 toward clients, when C{authRequired}.
    """

    URL = "ws://gateway.example.com/"

    def authEvent(self, challenge: str, key: bytes | None = None) -> Event:
        return Event.sign(
            key or generatePrivateKey(),
            22242,
            "",
            [["relay", self.URL], ["challenge", challenge]],
            int(time.time()),
        )

    @inlineCallbacks
    def test_flow(self) -> Any:
        """
        The challenge comes on connect; REQ and EVENT are refused with
        C{auth-required:} until a valid AUTH, which gets C{OK true}.
        """
        (relay,), _, gateway = yield self.relayAndGateway(authRequired=True, relayURL=self.URL)
        client = yield self.connect(gateway)
        (_, challenge) = yield client.waitForVerb("AUTH")
        client.send("REQ", "s", {"kinds": [1]})
        closed = yield client.waitForVerb("CLOSED", "s")
        self.assertTrue(closed[2].startswith("auth-required: "))
        event = makeEvent()
        client.send("EVENT", eventDict(event))
        ok = yield client.waitForVerb("OK", event.id)
        self.assertTrue(ok[3].startswith("auth-required: "))
        key = generatePrivateKey()
        auth = self.authEvent(challenge, key)
        client.send("AUTH", eventDict(auth))
        ok = yield client.waitForVerb("OK", auth.id)
        self.assertEqual(ok[2:], [True, ""])
        connId = next(iter(gateway.facade._sessions))
        self.assertEqual(gateway.registry.claims(connId).pubkey, auth.pubkey)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")

    @inlineCallbacks
    def test_wrongChallenge(self) -> Any:
        """
        An AUTH event with another challenge gets C{OK false}.
        """
        _, _, gateway = yield self.relayAndGateway(authRequired=True, relayURL=self.URL)
        client = yield self.connect(gateway)
        yield client.waitForVerb("AUTH")
        auth = self.authEvent("not-the-challenge")
        client.send("AUTH", eventDict(auth))
        ok = yield client.waitForVerb("OK", auth.id)
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("invalid: "))

    @inlineCallbacks
    def test_notRequested(self) -> Any:
        """
        Without C{authRequired}, no challenge is sent and an AUTH is
        answered C{OK false "restricted: ..."}.
        """
        _, _, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        auth = self.authEvent("x")
        client.send("AUTH", eventDict(auth))
        ok = yield client.waitForVerb("OK", auth.id)
        self.assertTrue(ok[3].startswith("restricted: "))
        self.assertNotIn("AUTH", client.verbs())


class ConnectionManagementTests(GatewayTestCase):
    """
    Slow clients, idle clients and shutdown.
    """

    @inlineCallbacks
    def test_slowClientEvicted(self) -> Any:
        """
        A client that stops reading is evicted once its backlog reaches
        C{maxBacklogBytes}, while another client keeps receiving every
        event.
        """
        (relay,), _, gateway = yield self.relayAndGateway(
            limits=GatewayLimits(maxPendingBytes=256 * 1024, maxBacklogBytes=512 * 1024),
            closeTimeout=0.5,
        )
        fast = yield self.connect(gateway)
        slow = yield self.connect(gateway)
        # The fast client reads all its socket holds at each reactor turn,
        # as a client in a process of its own would. At Twisted's 64 KiB
        # per read, in the gateway's own reactor, it reads about as fast as
        # the pool delivers (about 64 KB per turn plus one event): in 3 of
        # about 40 full-suite runs its backlog reached maxBacklogBytes
        # together with the slow one's and it was evicted too.
        fast.protocol.transport.bufferSize = 16 << 20
        for client in (fast, slow):
            client.send("REQ", "s", {"kinds": [1]})
            yield client.waitForVerb("EOSE", "s")
        slow.protocol.transport.pauseProducing()
        events = [makeEvent(content="x" * 60000) for _ in range(150)]
        relay.store(*events)
        yield fast.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == events[-1].id)
        self.assertEqual(len(fast.eventIds("s")), 150)
        yield waitUntil(lambda: gateway.registry.stats().evictedSlow == 1)
        slow.protocol.transport.resumeProducing()
        yield slow.whenClosed()
        self.assertEqual(gateway.registry.connectionCount(), 1)

    @inlineCallbacks
    def test_largeStoredAnswerToReader(self) -> Any:
        """
        A stored answer many times larger than C{maxPendingBytes} and
        C{maxBacklogBytes} reaches a client that reads it in full, with one
        EOSE, and the client stays connected: the answer is paced by its
        reading instead of queued.
        """
        store = self.openStore()
        events = [makeEvent(content="x" * 4000) for _ in range(300)]
        for event in events:
            yield store.save(event)
        gateway = yield self.startGateway(
            None,
            store=store,
            limits=GatewayLimits(maxPendingBytes=32 * 1024, maxBacklogBytes=64 * 1024),
        )
        client = yield self.connect(gateway)
        client.send("REQ", "big", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "big")
        self.assertEqual(sorted(client.eventIds("big")), sorted(e.id for e in events))
        self.assertEqual(client.verbs().count("EOSE"), 1)
        self.assertEqual(gateway.registry.stats().evictedSlow, 0)
        self.assertFalse(client.isClosed)

    @inlineCallbacks
    def test_idleSweep(self) -> Any:
        """
        A client that answers nothing (not even pings) is closed after
        C{maxIdle}; a responsive one stays.
        """
        _, _, gateway = yield self.relayAndGateway(
            limits=GatewayLimits(pingInterval=0.1, maxIdle=0.3), closeTimeout=0.2
        )
        alive = yield self.connect(gateway)
        silent = yield self.connect(gateway)
        silent.protocol.transport.pauseProducing()
        yield waitUntil(lambda: gateway.registry.stats().reapedIdle == 1)
        silent.protocol.transport.resumeProducing()
        yield silent.whenClosed()
        self.assertFalse(alive.isClosed)
        alive.send("REQ", "s", {"kinds": [1]})
        yield alive.waitForVerb("EOSE", "s")

    @inlineCallbacks
    def test_stopClosesAll(self) -> Any:
        """
        Stopping the gateway closes every client with a close handshake
        (code 1001), refuses new handshakes meanwhile, and stops listening.
        """
        _, _, gateway = yield self.relayAndGateway()
        clients = []
        for _ in range(3):
            client = yield self.connect(gateway)
            client.send("REQ", "s", {"kinds": [1]})
            yield client.waitForVerb("EOSE", "s")
            clients.append(client)
        yield gateway.stopService()
        for client in clients:
            yield client.whenClosed()
            self.assertEqual(client.closeCode, 1001)
        self.assertIsNone(gateway.port)
        self.assertEqual(gateway.facade.stats().sharedSubscriptions, 0)

    @inlineCallbacks
    def test_listensBeforePrivilegesDrop(self) -> Any:
        """
        The gateway listens from C{privilegedStartService} (as C{twistd}
        calls it before dropping privileges) and keeps that port when it
        starts.
        """
        gateway = Gateway(reactor, None, "tcp:0:interface=127.0.0.1", store=self.openStore())
        gateway.privilegedStartService()
        self.addCleanup(self._stopGateway, gateway)
        port = yield gateway.whenListening()
        gateway.startService()
        self.assertIs(gateway.port, port)
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")


class HTTPTests(GatewayTestCase):
    """
    NIP-11, C{/stats} and C{/metrics} on the gateway's port.
    """

    @inlineCallbacks
    def test_information(self) -> Any:
        """
        C{GET /} with C{Accept: application/nostr+json} returns the NIP-11
        document with the gateway's limits.
        """
        _, _, gateway = yield self.relayAndGateway(
            limits=GatewayLimits(maxSubscriptions=7, maxLimit=99), name="test gateway"
        )
        response, body = yield self.get(gateway, "/", {"Accept": "application/nostr+json"})
        document = orjson.loads(body)
        self.assertEqual(document["name"], "test gateway")
        self.assertEqual(document["supported_nips"], [1, 11, 40, 42, 45])
        self.assertEqual(document["limitation"]["max_subscriptions"], 7)
        self.assertEqual(document["limitation"]["max_limit"], 99)
        self.assertEqual(document["limitation"]["auth_required"], False)
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])

    @inlineCallbacks
    def test_informationSoftware(self) -> Any:
        """
        The NIP-11 document has no C{software} (NIP-11 wants the URL of the
        software's project, and relaypool has none) but has the version.
        """
        _, _, gateway = yield self.relayAndGateway()
        _, body = yield self.get(gateway, "/", {"Accept": "application/nostr+json"})
        document = orjson.loads(body)
        self.assertNotIn("software", document)
        self.assertEqual(document["version"], __version__)

    @inlineCallbacks
    def test_stats(self) -> Any:
        """
        C{/stats} reports the registry, the facade, the pool and each relay.
        """
        (relay,), _, gateway = yield self.relayAndGateway()
        client = yield self.connect(gateway)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        _, body = yield self.get(gateway, "/stats")
        stats = orjson.loads(body)
        self.assertEqual(stats["registry"]["connections"], 1)
        self.assertEqual(stats["gateway"]["sharedSubscriptions"], 1)
        self.assertEqual(stats["pool"]["activeRelays"], 1)
        self.assertEqual(stats["relays"][relay.url + "/"]["state"], "open")

    @inlineCallbacks
    def test_statsTimes(self) -> Any:
        """
        A relay's C{connectedSince} (seconds since the epoch) comes with
        C{connectedAt} in ISO 8601 UTC and C{connectedFor}, seconds ago.
        """
        (relay,), _, gateway = yield self.relayAndGateway()
        _, body = yield self.get(gateway, "/stats")
        entry = orjson.loads(body)["relays"][relay.url + "/"]
        self.assertTrue(entry["connectedAt"].endswith("Z"), entry["connectedAt"])
        self.assertEqual(
            datetime.fromisoformat(entry["connectedAt"]).timestamp(),
            int(entry["connectedSince"]),
        )
        self.assertGreaterEqual(entry["connectedFor"], 0)
        self.assertLess(entry["connectedFor"], TIMEOUT * 6)

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        C{/metrics} is Prometheus text with the gateway's and the relays'
        figures.
        """
        (relay,), _, gateway = yield self.relayAndGateway()
        yield self.connect(gateway)
        response, body = yield self.get(gateway, "/metrics")
        text = body.decode("utf-8")
        self.assertIn("# TYPE relaypool_gateway_connections gauge", text)
        self.assertIn("relaypool_gateway_connections 1", text)
        self.assertIn(f'relaypool_relay_up{{relay="{relay.url}/"}} 1', text)
        self.assertIn('relaypool_gateway_ok_total{accepted="true"} 0', text)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))

    @inlineCallbacks
    def test_outboxFigures(self) -> Any:
        """
        C{/stats} and C{/metrics} show what waits in the outbox: events,
        the oldest one's age, and per relay (0 for a relay with nothing
        waiting); C{/stats} says when the outbox was read, in ISO 8601 UTC
        and seconds ago.
        """
        fakes = yield self.startRelays(2)
        fakes[1].misbehaviour.rejectWith = "error: try later"
        pool = yield self.startPool(fakes)
        store = self.openStore()
        outbox = OutboxPublisher(reactor, pool, store, retryInterval=60.0)
        gateway = yield self.startGateway(pool, store=store, outbox=outbox)
        yield outbox.submit(makeEvent())
        yield outbox.retryDue()
        _, body = yield self.get(gateway, "/stats")
        stats = orjson.loads(body)["outbox"]
        first, second = (relay.url + "/" for relay in fakes)
        self.assertEqual(
            (
                stats["retrying"],
                stats["waiting"],
                list(stats["relays"]),
                stats["relays"][second]["waiting"],
            ),
            (0, 1, [second], 1),
        )
        self.assertGreaterEqual(stats["oldestAge"], 0.0)
        self.assertTrue(datetime.fromisoformat(stats["readAt"].replace("Z", "+00:00")))
        self.assertGreaterEqual(stats["readAgo"], 0.0)
        _, body = yield self.get(gateway, "/metrics")
        text = body.decode("utf-8")
        self.assertIn("relaypool_outbox_retrying 0", text)
        self.assertIn("relaypool_outbox_waiting_events 1", text)
        self.assertIn("# TYPE relaypool_outbox_oldest_age_seconds gauge", text)
        self.assertIn(f'relaypool_outbox_relay_waiting_events{{relay="{second}"}} 1', text)
        self.assertIn(f'relaypool_outbox_relay_waiting_events{{relay="{first}"}} 0', text)
        self.assertIn(f'relaypool_outbox_relay_oldest_age_seconds{{relay="{first}"}} 0', text)


    @inlineCallbacks
    def test_healthz(self) -> Any:
        """
        C{/healthz} answers 200 with the status, the uptime and the version.
        """
        _, _, gateway = yield self.relayAndGateway()
        response, body = yield self.get(gateway, "/healthz")
        document = orjson.loads(body)
        self.assertEqual(
            (response.code, document["status"], document["version"]), (200, "ok", __version__)
        )
        self.assertGreaterEqual(document["uptime"], 0)

    @inlineCallbacks
    def test_readyWithStoreAlone(self) -> Any:
        """
        With no relays configured, C{/readyz} is 200 while the store can
        write.
        """
        gateway = yield self.startGateway(None, store=self.openStore())
        response, body = yield self.get(gateway, "/readyz")
        self.assertEqual(
            (response.code, orjson.loads(body)), (200, {"status": "ready", "reasons": []})
        )

    @inlineCallbacks
    def test_notReadyStoreClosed(self) -> Any:
        """
        C{/readyz} is 503 with the reason when the store cannot write.
        """
        store = self.openStore()
        gateway = yield self.startGateway(None, store=store)
        yield store.close()
        response, body = yield self.get(gateway, "/readyz")
        self.assertEqual(
            (response.code, orjson.loads(body)),
            (503, {"status": "not ready", "reasons": ["the store is closed"]}),
        )

    @inlineCallbacks
    def test_readyOnQuorum(self) -> Any:
        """
        With relays configured, C{/readyz} is 503 while fewer than
        C{quorum} of them are open, saying how many are, and 200 once
        enough are.
        """
        (first,) = yield self.startRelays(1)
        absent = FakeRelay(reactor)
        yield absent.start()
        port = absent.port
        yield absent.stop(True)
        pool = RelayPool(
            reactor,
            nameService=StaticNameService(),
            fetchInformation=False,
            backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.0),
        )
        pool.addRelay(first.url)
        pool.addRelay(f"ws://127.0.0.1:{port}")
        pool.startService()
        self.addCleanup(pool.stopService)
        yield waitUntil(lambda: len(pool.activeRelayURLs()) == 1)
        gateway = yield self.startGateway(pool, quorum=2)
        notReady = yield self.get(gateway, "/readyz")
        late = FakeRelay(reactor, port=port)
        yield late.start()
        self.addCleanup(late.stop, True)
        yield waitUntil(lambda: len(pool.activeRelayURLs()) == 2)
        ready = yield self.get(gateway, "/readyz")
        self.assertEqual(
            [(response.code, orjson.loads(body)) for response, body in (notReady, ready)],
            [
                (
                    503,
                    {
                        "status": "not ready",
                        "reasons": ["1 of 2 upstream write relays open, fewer than the quorum of 2"],
                        "relays": {"configured": 2, "open": 1, "quorum": 2},
                    },
                ),
                (
                    200,
                    {
                        "status": "ready",
                        "reasons": [],
                        "relays": {"configured": 2, "open": 2, "quorum": 2},
                    },
                ),
            ],
        )

    @inlineCallbacks
    def test_metricsRound(self) -> Any:
        """
        After a REQ and an EVENT, C{/metrics} parses as Prometheus text and
        has today's names, the latency histograms with observations
        (downstream REQ to EOSE and fan-out, each relay's EOSE and OK, the
        store's writes and queries) and the messages by verb.
        """
        metrics = GatewayMetrics()
        fakes = yield self.startRelays(1)
        pool = yield self.startPool(fakes, onLatency=metrics.observeRelay)
        store = SQLiteEventStore(self.mktemp() + ".db", reactor, onLatency=metrics.observeStore)
        self.addCleanup(store.close)
        gateway = yield self.startGateway(pool, store=store, metrics=metrics)
        reader = yield self.connect(gateway)
        reader.send("REQ", "r", {"kinds": [1]})
        yield reader.waitForVerb("EOSE", "r")
        writer = yield self.connect(gateway)
        event = makeEvent(content="measured")
        writer.send("EVENT", event.toDict())
        yield writer.waitForVerb("OK", event.id)
        yield reader.waitForVerb("EVENT", "r")
        yield waitUntil(
            lambda: (metrics.registry.get_sample_value("relaypool_store_write_seconds_count") or 0)
            >= 1
        )
        _, body = yield self.get(gateway, "/metrics")
        page = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        relay = (("relay", fakes[0].url + "/"),)
        exact = [
            ("relaypool_gateway_connections", (), 2),
            ("relaypool_relay_up", relay, 1),
            ("relaypool_gateway_ok_total", (("accepted", "true"),), 1),
            ("relaypool_pool_relays", (), 1),
            ("relaypool_gateway_req_eose_seconds_count", (), 1),
            ("relaypool_gateway_fanout_seconds_count", (), 1),
            ("relaypool_relay_ok_seconds_count", relay, 1),
            ("nostr_client_messages_total", (("verb", "EVENT"),), 1),
            ("nostr_client_messages_total", (("verb", "REQ"),), 1),
            ("nostr_client_messages_total", (("verb", "COUNT"),), 0),
            ("nostr_relay_messages_total", (("verb", "OK"),), 1),
            ("nostr_relay_messages_total", (("verb", "EOSE"),), 1),
            ("nostr_relay_messages_total", (("verb", "EVENT"),), 1),
        ]
        self.assertEqual(
            [(name, labels, page.get((name, labels))) for name, labels, _ in exact], exact
        )
        observed = [
            ("relaypool_relay_eose_seconds_count", relay),
            ("relaypool_store_write_seconds_count", ()),
            ("relaypool_store_query_seconds_count", ()),
            ("process_cpu_seconds_total", ()),
        ]
        self.assertEqual(
            [key for key in observed if (page.get(key) or 0) <= 0], [], "nothing observed"
        )

    @inlineCallbacks
    def test_metricsDocumented(self) -> Any:
        """
        Every metric family of a gateway with relays, a store and an outbox
        is named in the README's metrics tables.
        """
        fakes = yield self.startRelays(1)
        pool = yield self.startPool(fakes)
        store = self.openStore()
        gateway = yield self.startGateway(
            pool, store=store, outbox=OutboxPublisher(reactor, pool, store)
        )
        _, body = yield self.get(gateway, "/metrics")
        names = {
            line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")
        }
        readme = (Path(__file__).parent.parent / "README.md").read_text()
        section = readme[readme.index("### Health and metrics") : readme.index("### The status")]
        self.assertIn("nostr_client_messages_total", names)
        self.assertEqual(
            {name for name in names if f"`{name.removesuffix('_created')}`" not in section},
            set(),
        )

    @inlineCallbacks
    def test_metricsPerGateway(self) -> Any:
        """
        Two gateways in one process do not share metrics: each shows its
        own connections and latencies.
        """
        (_, _, busy) = yield self.relayAndGateway()
        idle = yield self.startGateway(None, store=self.openStore())
        client = yield self.connect(busy)
        client.send("REQ", "s", {"kinds": [1]})
        yield client.waitForVerb("EOSE", "s")
        figures = []
        for gateway in (busy, idle):
            _, body = yield self.get(gateway, "/metrics")
            values = {
                sample.name: sample.value
                for family in text_string_to_metric_families(body.decode())
                for sample in family.samples
            }
            figures.append(
                (
                    values["relaypool_gateway_connections"],
                    values["relaypool_gateway_req_eose_seconds_count"],
                )
            )
        self.assertEqual(figures, [(1, 1), (0, 0)])

class _FakeSubscription:
    def __init__(self, filters: tuple[Filter, ...]) -> None:
        self.filters = filters
        self.closed = False
        self.eventCallbacks: list[Callable[[Event, str], None]] = []
        self.eoseCallbacks: list[Callable[[], None]] = []

    def onEvent(self, callback: Callable[[Event, str], None]) -> None:
        self.eventCallbacks.append(callback)

    def onEOSE(self, callback: Callable[[], None]) -> None:
        self.eoseCallbacks.append(callback)

    def emit(self, event: Event) -> None:
        for callback in self.eventCallbacks:
            callback(event, "ws://fake/")

    def eose(self) -> None:
        for callback in self.eoseCallbacks:
            callback()

    def close(self) -> None:
        self.closed = True


class _FakePool:
    """
    The part of the RelayPool API the facade uses, driven by the test.
    """

    def __init__(self) -> None:
        self.subscriptions: list[_FakeSubscription] = []
        self.queries: list[Deferred[list[Event]]] = []

    def subscribe(self, filters: tuple[Filter, ...]) -> _FakeSubscription:
        subscription = _FakeSubscription(filters)
        self.subscriptions.append(subscription)
        return subscription

    def query(self, filters: tuple[Filter, ...]) -> Deferred[list[Event]]:
        d: Deferred[list[Event]] = Deferred()
        self.queries.append(d)
        return d


class _FakeRegistry:
    """
    The part of the ConnectionRegistry API the facade uses; records what
    each connection receives.
    """

    def __init__(self) -> None:
        self.received: dict[int, list[Any]] = {}
        self.rooms: dict[Any, set[int]] = {}
        # Per connection, how many more frames its transport takes before
        # it is full; unlimited when absent.
        self.room: dict[int, int] = {}
        self.waiters: dict[int, list[Any]] = {}

    def isWritable(self, connId: int) -> bool:
        return self.room.get(connId, 1) > 0

    def notifyWritable(self, connId: int, callback: Any) -> bool:
        self.waiters.setdefault(connId, []).append(callback)
        return True

    def drain(self, connId: int, frames: int) -> None:
        """
        The client read what it had: its transport takes C{frames} more.
        """
        self.room[connId] = frames
        for callback in self.waiters.pop(connId, []):
            callback()

    def claims(self, connId: int) -> Any:
        from relaypool.gateway.registry import Claims

        self.received[connId] = []
        return Claims()

    def sendText(self, connId: int, text: bytes) -> bool:
        self.received[connId].append(orjson.loads(text))
        if connId in self.room:
            self.room[connId] -= 1
        return True

    def joinRoom(self, connId: int, room: Any) -> None:
        self.rooms.setdefault(room, set()).add(connId)

    def leaveRoom(self, connId: int, room: Any) -> bool:
        self.rooms[room].discard(connId)
        if not self.rooms[room]:
            del self.rooms[room]
        return room not in self.rooms

    def broadcastRoomText(self, room: Any, text: bytes) -> int:
        for connId in self.rooms.get(room, ()):
            self.received[connId].append(orjson.loads(text))
        return len(self.rooms.get(room, ()))


class FacadeCatchUpTests(SynchronousTestCase):
    """
    The facade's join phases, with a fake pool whose EOSE and queries the
    test fires.
    """

    def setUp(self) -> None:
        self.pool = _FakePool()
        self.registry = _FakeRegistry()
        self.facade = RelayFacade(
            self.registry,  # type: ignore[arg-type]
            self.pool,
            limits=GatewayLimits(maxCatchUpEvents=2),
            reactor=Clock(),
        )

    def req(self, connId: int, subscriptionId: str = "s") -> Any:
        session = self.facade.connect(connId)
        self.facade.handleMessage(session, orjson.dumps(["REQ", subscriptionId, {"kinds": [1]}]))
        return session

    def summary(self, connId: int) -> list[str]:
        return [
            f[2]["content"] if f[0] == "EVENT" else f[0] for f in self.registry.received[connId]
        ]

    def test_creatorWaitsForUpstreamEOSE(self) -> None:
        """
        The client that creates the shared subscription gets the upstream
        stored events, then EOSE when the upstream EOSE fires, then live
        events through the room.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.emit(makeEvent(content="stored"))
        self.assertEqual(self.summary(1), ["stored"])
        upstream.eose()
        upstream.emit(makeEvent(content="live"))
        self.assertEqual(self.summary(1), ["stored", "EOSE", "live"])
        self.assertEqual(len(self.registry.rooms), 1)

    def test_joinerBuffersWhileQuerying(self) -> None:
        """
        A client joining a live shared subscription gets its query's events,
        then the live events that arrived meanwhile (without the ones the
        query already had), then EOSE.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.eose()
        self.req(2)
        (query,) = self.pool.queries
        old, both, new = (
            makeEvent(content="old"),
            makeEvent(content="both"),
            makeEvent(content="new"),
        )
        upstream.emit(both)
        upstream.emit(new)
        self.assertEqual(self.summary(2), [])
        query.callback([both, old])
        self.assertEqual(self.summary(2), ["both", "old", "new", "EOSE"])
        self.assertEqual(self.summary(1), ["EOSE", "both", "new"])
        self.assertEqual(len(self.pool.subscriptions), 1)

    def test_joinerBeforeUpstreamEOSE(self) -> None:
        """
        A client whose query finished before the upstream EOSE gets the
        events that arrive meanwhile at once, and EOSE with the upstream's.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        self.req(2)
        (query,) = self.pool.queries
        first = makeEvent(content="first")
        query.callback([first])
        upstream.emit(first)
        upstream.emit(makeEvent(content="second"))
        self.assertEqual(self.summary(2), ["first", "second"])
        upstream.eose()
        self.assertEqual(self.summary(2), ["first", "second", "EOSE"])

    def test_catchUpOverflow(self) -> None:
        """
        More live events than C{maxCatchUpEvents} while a joiner's query
        runs close its subscription with C{CLOSED "error: ..."}; the shared
        subscription keeps serving the others.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.eose()
        session = self.req(2)
        for index in range(3):
            upstream.emit(makeEvent(content=str(index)))
        (frame,) = self.registry.received[2]
        self.assertEqual(frame[:2], ["CLOSED", "s"])
        self.assertTrue(frame[2].startswith("error: "))
        self.assertEqual(session.subscriptions, {})
        self.pool.queries[0].callback([])
        self.assertEqual(len(self.registry.received[2]), 1)
        self.assertFalse(upstream.closed)

    def test_storedAnswerPacedByReading(self) -> None:
        """
        Stored events are written while the client's connection is writable;
        the rest, then the events that arrived meanwhile, then EOSE, follow
        each time the client drained what it had.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.eose()
        self.registry.room[2] = 2
        self.req(2)
        stored = [makeEvent(content=f"stored {i}", createdAt=1000 - i) for i in range(5)]
        self.pool.queries[0].callback(stored)
        self.assertEqual(self.summary(2), ["stored 0", "stored 1"])
        upstream.emit(makeEvent(content="live"))
        self.registry.drain(2, 2)
        self.assertEqual(self.summary(2)[2:], ["stored 2", "stored 3"])
        self.registry.drain(2, 10)
        self.assertEqual(self.summary(2)[4:], ["stored 4", "live", "EOSE"])
        upstream.emit(makeEvent(content="later"))
        self.assertEqual(self.summary(2)[7:], ["later"])

    def test_pacedAnswerHoldsBoundedLiveEvents(self) -> None:
        """
        While a stored answer waits for the client to read, at most
        C{maxCatchUpEvents} new events are held for it; one more closes the
        subscription with C{CLOSED "error: ..."}.
        """
        self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.eose()
        self.registry.room[2] = 1
        session = self.req(2)
        self.pool.queries[0].callback([makeEvent(content=f"stored {i}") for i in range(3)])
        for index in range(3):
            upstream.emit(makeEvent(content=f"live {index}"))
        frame = self.registry.received[2][-1]
        self.assertEqual(frame[:2], ["CLOSED", "s"])
        self.assertTrue(frame[2].startswith("error: more than 2 new events"))
        self.assertEqual(session.subscriptions, {})
        self.registry.drain(2, 10)
        self.assertEqual(self.registry.received[2][-1], frame)

    def test_closeWhileQuerying(self) -> None:
        """
        A CLOSE while the history query runs cancels it; the last member
        leaving closes the upstream subscription.
        """
        session = self.req(1)
        (upstream,) = self.pool.subscriptions
        upstream.eose()
        self.facade.disconnect(session)
        self.assertTrue(upstream.closed)
        other = self.req(2)
        second = self.pool.subscriptions[1]
        second.eose()
        self.req(3)
        (query,) = self.pool.queries
        self.facade.handleMessage(self.facade._sessions[3], b'["CLOSE", "s"]')
        self.assertTrue(query.called)
        self.assertFalse(second.closed)
        self.facade.disconnect(other)
        self.assertTrue(second.closed)


class _PagedStore:
    """
    The paged-read part of the store API, in memory: records each page the
    facade reads.
    """

    def __init__(self, events: list[Event]) -> None:
        self.events = {event.id: event for event in events}
        self.order = [event.id for event in events]
        self.pages: list[int] = []

    def queryIds(self, filters: Any) -> Deferred[list[str]]:
        return succeed(list(self.order))

    def fetch(self, eventIds: list[str]) -> Deferred[list[Event]]:
        self.pages.append(len(eventIds))
        return succeed([self.events[i] for i in eventIds if i in self.events])


class FacadeStorePagingTests(SynchronousTestCase):
    """
    A REQ answered from the store alone is read a page at a time, as the
    client reads.
    """

    def setUp(self) -> None:
        self.registry = _FakeRegistry()
        self.events = [makeEvent(content=f"stored {i}") for i in range(5)]
        self.store = _PagedStore(self.events)
        self.facade = RelayFacade(
            self.registry,  # type: ignore[arg-type]
            store=self.store,
            limits=GatewayLimits(storePageEvents=2),
            okPolicy="local",
            reactor=Clock(),
        )

    def contents(self) -> list[str]:
        return [
            f[2]["content"] if f[0] == "EVENT" else f[0] for f in self.registry.received[1]
        ]

    def test_pageReadWhenPreviousSent(self) -> None:
        """
        The next page is read from the store only once the previous one was
        written to the client, so one page at most is held for it.
        """
        self.registry.room[1] = 1
        session = self.facade.connect(1)
        self.facade.handleMessage(session, orjson.dumps(["REQ", "s", {"kinds": [1]}]))
        self.assertEqual((self.contents(), self.store.pages), (["stored 0"], [2]))
        self.registry.drain(1, 2)
        self.assertEqual(self.contents(), ["stored 0", "stored 1", "stored 2"])
        self.assertEqual(self.store.pages, [2, 2])
        self.registry.drain(1, 10)
        self.assertEqual(self.contents()[3:], ["stored 3", "stored 4", "EOSE"])
        self.assertEqual(self.store.pages, [2, 2, 1])

    def test_eventsGoneMeanwhileSkipped(self) -> None:
        """
        Stored events deleted between the id query and their page are left
        out; the answer still ends with EOSE.
        """
        del self.store.events[self.events[1].id]
        session = self.facade.connect(1)
        self.facade.handleMessage(session, orjson.dumps(["REQ", "s", {"kinds": [1]}]))
        self.assertEqual(
            self.contents(), ["stored 0", "stored 2", "stored 3", "stored 4", "EOSE"]
        )


class CountFallbackTests(GatewayTestCase):
    """
    C{COUNT} asks only the upstream relays that can count, and falls back at
    once (to the store when there is one) when none can: it never waits for
    the EOSE timeout, which is an hour here so that a wait hangs the test.
    """

    def informedPool(self, relays: list[FakeRelay]) -> Deferred[RelayPool]:
        """
        A pool that fetches its relays' NIP-11 documents, with an EOSE
        (and COUNT) timeout of an hour.
        """
        return self.startPool(  # type: ignore[no-any-return]
            relays, fetchInformation=True, eoseTimeout=3600, informationTimeout=60
        )

    @inlineCallbacks
    def silentRelay(self, refusal: str = "ignore", nips: tuple[int, ...] = (1, 11)) -> Any:
        """
        A relay that does not count, answering COUNT as C{refusal} says,
        whose NIP-11 document lists C{nips}.
        """
        relay = FakeRelay(reactor, information=RelayInformation(supportedNips=nips))
        relay.misbehaviour.countSupported = False
        relay.misbehaviour.countRefusal = refusal
        yield relay.start()
        self.addCleanup(relay.stop, True)
        return relay

    @inlineCallbacks
    def count(self, gateway: Gateway, *filters: dict[str, Any]) -> Any:
        client = yield self.connect(gateway)
        client.send("COUNT", "c", *filters)
        reply = yield client.waitForVerb("COUNT", "c")
        return reply[2]

    @inlineCallbacks
    def test_withoutNip45Fetches(self) -> Any:
        """
        Without a store, a COUNT to relays whose NIP-11 document lacks 45 is
        answered at once by fetching and counting the events.
        """
        relay = yield self.silentRelay()
        relay.store(makeEvent(), makeEvent(), makeEvent(kind=7))
        pool = yield self.informedPool([relay])
        gateway = yield self.startGateway(pool)
        answer = yield self.count(gateway, {"kinds": [1]})
        self.assertEqual(answer, {"count": 2})
        self.assertEqual([m for m in relay.received if isinstance(m, ClientCount)], [])

    @inlineCallbacks
    def test_withoutNip45AnsweredFromStore(self) -> Any:
        """
        With a store, a COUNT to relays whose NIP-11 document lacks 45 is
        answered at once from the store.
        """
        store = self.openStore()
        yield store.save(makeEvent())
        relay = yield self.silentRelay()
        relay.store(makeEvent(), makeEvent())
        pool = yield self.informedPool([relay])
        gateway = yield self.startGateway(pool, store=store)
        answer = yield self.count(gateway, {"kinds": [1]})
        self.assertEqual(answer, {"count": 1})

    @inlineCallbacks
    def test_refusedAnsweredFromStore(self) -> Any:
        """
        With a store, when every relay refuses the COUNT (C{CLOSED}, or a
        C{NOTICE} from a relay whose document does not list its NIPs), the
        store answers, without fetching the events from the relays.
        """
        store = self.openStore()
        yield store.save(makeEvent())
        closing = yield self.silentRelay("closed", (1, 11, 45))
        noticing = yield self.silentRelay("notice", ())
        for relay in (closing, noticing):
            relay.store(makeEvent(), makeEvent())
        pool = yield self.informedPool([closing, noticing])
        gateway = yield self.startGateway(pool, store=store)
        answer = yield self.count(gateway, {"kinds": [1]})
        self.assertEqual(answer, {"count": 1})
        for relay in (closing, noticing):
            self.assertEqual([m for m in relay.received if isinstance(m, ClientReq)], [])

    @inlineCallbacks
    def test_countingRelayBeatsStore(self) -> Any:
        """
        With a store, a relay that can count answers; relays that cannot are
        left out.
        """
        store = self.openStore()
        yield store.save(makeEvent())
        silent = yield self.silentRelay()
        (counting,) = yield self.startRelays()
        counting.store(*[makeEvent() for _ in range(3)])
        pool = yield self.informedPool([silent, counting])
        gateway = yield self.startGateway(pool, store=store)
        answer = yield self.count(gateway, {"kinds": [1]})
        self.assertEqual(answer, {"count": 3})


class AbortedClientTests(GatewayTestCase):
    """
    A client that never answers the gateway's close frame is aborted
    without leaving Autobahn's close handshake timer behind.
    """

    @inlineCallbacks
    def test_abortLeavesNoTimer(self) -> Any:
        """
        Stopping the gateway while a client does not read aborts that
        client after C{closeTimeout}; no timer of its connection outlives
        it (trial fails the test on a leftover timer).
        """
        _, _, gateway = yield self.relayAndGateway(closeTimeout=0.1)
        client = yield self.connect(gateway)
        client.protocol.transport.pauseProducing()
        yield gateway.stopService()
        client.protocol.transport.resumeProducing()
        yield client.whenClosed()
        self.assertEqual(gateway.registry.connectionCount(), 0)


def _maskedText(payload: bytes) -> bytes:
    """
    A short client text frame; an all-zero mask leaves the payload as is.
    """
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class MemoryProtocolTests(SynchronousTestCase):
    """
    L{GatewayProtocol}s over memory transports, with a real registry, a
    fake pool and a clock: what an open one keeps of its handshake, and how
    members leave.
    """

    def setUp(self) -> None:
        self.clock = clock = Clock()
        savedLoop = txaio.config.loop
        txaio.config.loop = clock
        self.addCleanup(setattr, txaio.config, "loop", savedLoop)
        registry = ConnectionRegistry(reactor=clock)
        self.pool = _FakePool()
        facade = RelayFacade(registry, self.pool, reactor=clock)
        self.factory = GatewayFactory(registry, facade)
        self.factory.setProtocolOptions(closeHandshakeTimeout=0)

    def openClient(self) -> tuple[Any, StringTransport]:
        """
        @return: an open L{GatewayProtocol} and its transport.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4567))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567))
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        return protocol, transport

    def test_handshakeStateShed(self) -> None:
        """
        Once open, the protocol holds none of the attributes only the
        handshake reads, its instance dictionary is rebuilt at the small size
        (at most 85 entries), and the connection still serves a C{REQ}.
        """
        protocol, transport = self.openClient()
        self.assertEqual(protocol.state, WebSocketProtocol.STATE_OPEN)
        self.assertEqual([name for name in _HANDSHAKE_STATE if hasattr(protocol, name)], [])
        self.assertLessEqual(len(protocol.__dict__), 85)
        transport.clear()
        protocol.dataReceived(_maskedText(b'["REQ","s",{"kinds":[1]}]'))
        self.pool.subscriptions[0].eose()
        self.clock.advance(0)
        self.assertIn(b'["EOSE","s"]', transport.value())

    def test_abortedMembersLeave(self) -> None:
        """
        Members of one room that the registry aborts together (they did not
        answer its Close frame) leave cleanly when their connections are
        lost: the registry unregistered them all first, yet each leaves, the
        upstream subscription closes, and their IPs are uncounted.
        """
        protocols = [self.openClient() for _ in range(3)]
        for protocol, _ in protocols:
            protocol.dataReceived(_maskedText(b'["REQ","s",{"kinds":[1]}]'))
        self.pool.subscriptions[0].eose()
        for query in self.pool.queries:
            query.callback([])
        self.assertEqual(
            (self.factory.registry.roomCount(), self.factory.facade.subscriptions.catchingUpCount()),
            (1, 0),
        )
        self.factory.registry.closeAll()
        self.clock.advance(10)
        self.assertEqual(self.factory.registry.connectionCount(), 0)
        for protocol, _ in protocols:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            (
                self.factory.facade.subscriptions.sharedCount(),
                self.pool.subscriptions[0].closed,
                self.factory.connectionsFrom("10.1.2.3"),
            ),
            (0, True, 0),
        )

    def test_smallSendQueue(self) -> None:
        """
        Once open, the protocol's queue of chopped writes takes less memory
        than Autobahn's empty deque and still works.
        """
        protocol, transport = self.openClient()
        self.assertLess(sys.getsizeof(protocol.send_queue), sys.getsizeof(deque()))
        transport.clear()
        protocol.sendData(b"abc", chopsize=1)
        for _ in range(4):
            self.clock.advance(1)
        self.assertEqual(transport.value(), b"abc")
