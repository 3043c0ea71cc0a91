"""
Tests for L{RelayPool.sync} (L{relaypool.upstream.syncing}): the pool's
SQLite store reconciled by NIP-77 with fake relays on 127.0.0.1, the REQ
fallback for relays without NIP-77, and the sync after a relay's outage.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from relaypool.errors import UnknownRelay
from relaypool.gateway.gateway import Gateway
from relaypool.gateway.limits import GatewayLimits
from relaypool.nostr.event import Event, generatePrivateKey
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientNegOpen, ClientReq
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.nostr.url import parseRelayURL
from relaypool.store.sqlite import SQLiteEventStore
from relaypool.testing import FakeRelay, makeEvent
from relaypool.transport.mux import Backoff
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import RelayPool
from relaypool.upstream.syncing import SyncSettings
from tests.test_gateway_protocol import waitUntil


def events(count: int, kind: int = 1, start: int = 1_700_000_000) -> list[Event]:
    key = generatePrivateKey()
    return [makeEvent(kind, f"s{n}", createdAt=start + n, privateKey=key) for n in range(count)]


@inlineCallbacks
def storedEventually(
    store: SQLiteEventStore, eventIds: list[str], timeout: float = 30.0
) -> Any:
    """
    The events of C{eventIds} that C{store} holds, once it holds them all:
    the pool hands what it received to the store after delivering it, and
    the store commits in its writer thread, so a query may come first.
    Polled every 10 ms; after C{timeout}, those it holds then.
    """
    for _ in range(int(timeout / 0.01)):
        found = yield store.fetch(eventIds)
        if len(found) == len(set(eventIds)):
            return found
        yield deferLater(reactor, 0.01, lambda: None)
    return (yield store.fetch(eventIds))


def key(relay: FakeRelay) -> str:
    """The relay's URL as the pool normalizes it, the key of its result."""
    return parseRelayURL(relay.url).url


def ids(some: list[Event]) -> set[str]:
    return {event.id for event in some}


class SyncTestCase(TestCase):
    """
    Fake relays and a pool with a SQLite store, stopped after each test.
    """

    timeout = 60

    @inlineCallbacks
    def startRelay(self, stored: list[Event] = (), **kwargs: Any) -> Any:  # type: ignore[assignment]
        relay = FakeRelay(reactor, **kwargs)
        relay.store(*stored)
        yield relay.start()
        self.addCleanup(relay.stop, True)
        return relay

    @inlineCallbacks
    def startPool(self, urls: list[str], stored: list[Event] = (), **kwargs: Any) -> Any:  # type: ignore[assignment]
        store = SQLiteEventStore(self.mktemp() + ".db", reactor)
        self.addCleanup(store.close)
        yield gatherResults([store.save(event) for event in stored])
        kwargs.setdefault("fetchInformation", False)
        pool = RelayPool(
            reactor, nameService=StaticNameService(), store=store, eoseTimeout=10.0, **kwargs
        )
        for url in urls:
            pool.addRelay(url)
        pool.startService()
        self.addCleanup(pool.stopService)
        yield waitUntil(lambda: len(pool.activeRelayURLs()) == len(urls))
        return pool, store


class SyncTests(SyncTestCase):
    """
    L{RelayPool.sync} against real fake relays and a real store.
    """

    @inlineCallbacks
    def test_down(self) -> None:
        """
        C{down} fetches exactly the events the store lacks and stores them;
        the result counts both sides' differences and sends nothing.
        """
        common, onlyRelay, onlyStore = events(500), events(30), events(20)
        relay = yield self.startRelay(common + onlyRelay)
        pool, store = yield self.startPool([relay.url], common + onlyStore)
        results = yield pool.sync([Filter(kinds=frozenset({1}))])
        result = results[key(relay)]
        self.assertEqual(
            (result.method, result.need, result.have, result.fetched, result.sent, result.errors),
            ("negentropy", 30, 20, 30, 0, []),
        )
        stored = yield storedEventually(store, sorted(ids(onlyRelay)))
        self.assertEqual(ids(stored), ids(onlyRelay))
        self.assertEqual(len(relay.events), 530)
        self.assertTrue(any(isinstance(m, ClientNegOpen) for m in relay.received))

    @inlineCallbacks
    def test_upAndBoth(self) -> None:
        """
        C{up} sends the relay what it lacks (and fetches nothing); C{both}
        does both.
        """
        common, onlyRelay, onlyStore = events(300), events(10), events(15)
        relay = yield self.startRelay(common + onlyRelay)
        pool, store = yield self.startPool([relay.url], common + onlyStore)
        results = yield pool.sync([Filter()], direction="up")
        result = results[key(relay)]
        self.assertEqual((result.sent, result.fetched, result.have, result.need), (15, 0, 15, 10))
        self.assertTrue(ids(onlyStore) <= ids(relay.events))
        extra = events(5)
        yield gatherResults([store.save(event) for event in extra])
        results = yield pool.sync([Filter()], direction="both")
        result = results[key(relay)]
        self.assertEqual((result.sent, result.fetched), (5, 10))
        self.assertEqual(ids(relay.events), ids(common + onlyRelay + onlyStore + extra))

    @inlineCallbacks
    def test_smallFrames(self) -> None:
        """
        A relay whose NIP-11 C{max_message_length} is small gets smaller
        negentropy messages and more rounds, with the same outcome.
        """
        common, onlyRelay = events(3000), events(200)
        information = RelayInformation(
            supportedNips=(1, 11, 77), limitation=Limitation(maxMessageLength=10_000)
        )
        relay = yield self.startRelay(common + onlyRelay, information=information)
        pool, _ = yield self.startPool([relay.url], common, fetchInformation=True)
        results = yield pool.sync([Filter()])
        self.assertEqual((results[key(relay)].need, results[key(relay)].fetched), (200, 200))
        sizes = [len(m.toJSON()) for m in relay.received if isinstance(m, ClientNegOpen)]
        self.assertLessEqual(max(sizes), 10_000)

    @inlineCallbacks
    def test_fallbackNotice(self) -> None:
        """
        A relay answering C{NEG-OPEN} with a C{NOTICE} gets a REQ over the
        filter instead, which the result says; the next sync goes straight
        to the REQ.
        """
        common, onlyRelay, onlyStore = events(50), events(7), events(3)
        relay = yield self.startRelay(common + onlyRelay)
        relay.misbehaviour.negentropySupported = False
        pool, _ = yield self.startPool([relay.url], common + onlyStore)
        results = yield pool.sync([Filter()])
        result = results[key(relay)]
        self.assertEqual(
            (result.method, result.need, result.fetched, result.have), ("req", 7, 7, 3)
        )
        self.assertIn("notice: unknown message type: NEG-OPEN", result.fallback)
        opens = sum(1 for m in relay.received if isinstance(m, ClientNegOpen))
        results = yield pool.sync([Filter()])
        self.assertEqual(results[key(relay)].method, "req")
        self.assertEqual(sum(1 for m in relay.received if isinstance(m, ClientNegOpen)), opens)

    @inlineCallbacks
    def test_fallbackError(self) -> None:
        """
        A C{NEG-ERR "error: ..."} to the C{NEG-OPEN} also means a REQ.
        """
        onlyRelay = events(4)
        relay = yield self.startRelay(onlyRelay)
        relay.misbehaviour.negentropySupported = False
        relay.misbehaviour.negentropyRefusal = "error"
        pool, _ = yield self.startPool([relay.url])
        results = yield pool.sync([Filter()])
        self.assertEqual((results[key(relay)].method, results[key(relay)].fetched), ("req", 4))
        self.assertIn("negentropy is disabled", results[key(relay)].fallback)

    @inlineCallbacks
    def test_fallbackSilence(self) -> None:
        """
        A relay that does not answer the C{NEG-OPEN} within the timeout gets
        a REQ.
        """
        onlyRelay = events(4)
        relay = yield self.startRelay(onlyRelay)
        relay.misbehaviour.negentropySupported = False
        relay.misbehaviour.negentropyRefusal = "ignore"
        pool, _ = yield self.startPool([relay.url])
        results = yield pool.sync([Filter()], timeout=0.5)
        self.assertEqual((results[key(relay)].method, results[key(relay)].fetched), ("req", 4))
        self.assertIn("timeout", results[key(relay)].fallback)

    @inlineCallbacks
    def test_fallbackPages(self) -> None:
        """
        The REQ fallback pages with C{until} through a relay that caps its
        answers (a relaypool gateway with C{maxLimit} 10 here), so it finds
        events older than the first page, also across equal timestamps.
        """
        author = generatePrivateKey()
        stored = [
            makeEvent(1, f"p{n}", createdAt=1_700_000_000 + n // 4, privateKey=author)
            for n in range(45)
        ]
        relayStore = SQLiteEventStore(self.mktemp() + ".db", reactor)
        self.addCleanup(relayStore.close)
        yield gatherResults([relayStore.save(e) for e in stored])
        gateway = Gateway(
            reactor,
            None,
            "tcp:0:interface=127.0.0.1",
            store=relayStore,
            limits=GatewayLimits(maxLimit=10),
        )
        gateway.startService()
        self.addCleanup(gateway.stopService)
        port = yield gateway.whenListening()
        url = f"ws://127.0.0.1:{port.getHost().port}/"
        pool, store = yield self.startPool([url])
        pool.relay(url).negentropyRefused = "test: the REQ fallback"
        results = yield pool.sync([Filter()], direction="down")
        self.assertEqual((results[url].method, results[url].fetched), ("req", 45))
        found = yield storedEventually(store, [e.id for e in stored])
        self.assertEqual(len(found), 45)
        self.assertGreaterEqual(gateway.facade.stats().messagesReceived["REQ"], 5)

    @inlineCallbacks
    def test_informationWithout77(self) -> None:
        """
        A relay whose NIP-11 document lists its NIPs without 77 is never
        sent a C{NEG-OPEN}.
        """
        relay = yield self.startRelay(
            events(3), information=RelayInformation(supportedNips=(1, 11))
        )
        pool, _ = yield self.startPool([relay.url], fetchInformation=True)
        results = yield pool.sync([Filter()])
        self.assertEqual((results[key(relay)].method, results[key(relay)].fetched), ("req", 3))
        self.assertFalse(any(isinstance(m, ClientNegOpen) for m in relay.received))

    @inlineCallbacks
    def test_tooManyRecords(self) -> None:
        """
        A filter matching more stored events than C{maxRecords} is skipped
        with an error in the result; the other filters still sync.
        """
        relay = yield self.startRelay(events(5, kind=7))
        pool, _ = yield self.startPool(
            [relay.url], events(20), syncSettings=SyncSettings(maxRecords=10)
        )
        results = yield pool.sync([Filter(kinds=frozenset({1})), Filter(kinds=frozenset({7}))])
        result = results[key(relay)]
        self.assertEqual(result.fetched, 5)
        self.assertEqual(len(result.errors), 1)
        self.assertIn("more than 10 matching events", result.errors[0])

    @inlineCallbacks
    def test_severalRelays(self) -> None:
        """
        Every relay gets its own result; C{relays} restricts the sync, and a
        relay that is not connected is reported, not waited for.
        """
        first = yield self.startRelay(events(3))
        second = yield self.startRelay(events(4))
        pool, _ = yield self.startPool([first.url, second.url])
        results = yield pool.sync([Filter()])
        self.assertEqual(
            {url: r.fetched for url, r in results.items()}, {key(first): 3, key(second): 4}
        )
        results = yield pool.sync([Filter()], relays=[second.url])
        self.assertEqual(list(results), [key(second)])
        yield second.stop(True)
        yield waitUntil(lambda: not pool.relay(second.url).isConnected())
        results = yield pool.sync([Filter()], relays=[second.url])
        self.assertEqual(results[key(second)].errors, ["the relay is not connected"])

    @inlineCallbacks
    def test_badArguments(self) -> None:
        """
        An unknown direction, no filter or an unknown relay is refused at
        once; so is a sync of a pool without a store.
        """
        relay = yield self.startRelay()
        pool, _ = yield self.startPool([relay.url])
        self.assertRaises(ValueError, pool.sync, [Filter()], direction="sideways")
        self.assertRaises(ValueError, pool.sync, [])
        self.assertRaises(UnknownRelay, pool.sync, [Filter()], relays=["ws://127.0.0.1:1"])
        bare = RelayPool(reactor, nameService=StaticNameService())
        error = self.assertRaises(ValueError, bare.sync, [Filter()])
        self.assertIn("store", str(error))
        self.assertRaises(ValueError, RelayPool, reactor, syncAfterOutage=True)
        self.assertRaises(ValueError, SyncSettings, frameSize=100)


class OutageSyncTests(SyncTestCase):
    """
    With C{syncAfterOutage}, a relay that comes back is reconciled over the
    time it was away.
    """

    @inlineCallbacks
    def test_lateEventDelivered(self) -> None:
        """
        An event with an old C{created_at} that reached the relay while the
        pool was away, older than the C{since} of the resubscription, is
        delivered to the live subscription after the reconnect.
        """
        now = int(time.time())
        recent = events(3, start=now - 100)
        relay = yield self.startRelay(recent)
        pool, store = yield self.startPool(
            [relay.url],
            syncAfterOutage=True,
            backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.0),
        )
        subscription = pool.subscribe([Filter(kinds=frozenset({1}))])
        received: list[str] = []
        subscription.onEvent(lambda event, url: received.append(event.id))
        yield subscription.whenEOSE()
        self.assertEqual(set(received), ids(recent))
        yield relay.stop(True)
        yield waitUntil(lambda: not pool.relay(relay.url).isConnected())
        late = makeEvent(1, "late", createdAt=now - 150, privateKey=generatePrivateKey())
        relay.store(late)
        yield relay.start()
        yield waitUntil(lambda: late.id in received)
        # The resubscription alone could not have found it:
        resubscribe = [
            m for m in relay.received if isinstance(m, ClientReq) and m.filters[0].ids is None
        ][-1]
        self.assertGreater(resubscribe.filters[0].since, late.createdAt)
        self.assertEqual(received.count(late.id), 1)
        stored = yield storedEventually(store, [late.id])
        self.assertEqual(ids(stored), {late.id})

    @inlineCallbacks
    def test_onlyAfterOutage(self) -> None:
        """
        The first connection of a relay is no outage: no sync is started.
        """
        relay = yield self.startRelay(events(2))
        pool, _ = yield self.startPool([relay.url], syncAfterOutage=True)
        subscription = pool.subscribe([Filter()])
        yield subscription.whenEOSE()
        self.assertFalse(any(isinstance(m, ClientNegOpen) for m in relay.received))
