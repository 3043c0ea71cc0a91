"""
Tests for L{relaypool.upstream.relaypool}: the RelayPool against real fake relays on
127.0.0.1.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from relaypool.errors import (
    CountUnavailable,
    InvalidRelayURL,
    PoolClosed,
    PublishFailed,
    TooManyRelays,
    UnknownRelay,
)
from relaypool.nostr.event import generatePrivateKey, publicKeyFor
from relaypool.nostr.filter import Filter, limitEvents
from relaypool.nostr.messages import ClientCount, ClientReq, RelayEOSE, RelayEvent
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.testing import FakeRelay, forgeSignature, makeEvent
from relaypool.transport.mux import Backoff
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import NO_ANSWER, RelayPool

FAST = Backoff(initial=0.05, maximum=0.2, jitter=0.0, resetAfter=0.5)
KIND1 = Filter.fromDict({"kinds": [1]})


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def waitUntil(predicate: Any, timeout: float = 30.0, step: float = 0.01) -> Any:
    """
    Poll C{predicate} until true, at most C{timeout} seconds: a safety net
    for a condition that must come, never a bound a test asserts.
    """
    for _ in range(int(timeout / step)):
        if predicate():
            return
        yield sleep(step)
    raise AssertionError(f"condition not reached within {timeout}s")


class PoolTestMixin:
    """
    Starts fake relays and a pool wired to them, and cleans both up.
    """

    timeout = 60

    def startRelay(self, **kwargs: Any) -> Deferred[FakeRelay]:
        relay = FakeRelay(**kwargs)
        self.addCleanup(relay.stop)  # type: ignore[attr-defined]
        return relay.start()

    def makePool(self, *relays: FakeRelay | str, start: bool = True, **kwargs: Any) -> RelayPool:
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("eoseTimeout", 5.0)
        kwargs.setdefault("publishTimeout", 5.0)
        # A safety net: REQs wait for the fake relay's NIP-11 document, which
        # always comes; a short bound would let them go out without its limits
        # on a loaded machine.
        kwargs.setdefault("informationTimeout", 60.0)
        pool = RelayPool(reactor, nameService=StaticNameService(), **kwargs)
        for relay in relays:
            pool.addRelay(relay if isinstance(relay, str) else relay.url)
        if start:
            pool.startService()
        self.addCleanup(lambda: pool.stopService() if pool.running else None)  # type: ignore[attr-defined]
        return pool

    def connected(self, pool: RelayPool, n: int | None = None) -> Deferred[None]:
        want = pool.countRelays() if n is None else n
        return waitUntil(lambda: pool.countActiveRelays() >= want)


def deadURL() -> str:
    """
    A ws:// URL on 127.0.0.1 where nothing listens.
    """
    port = reactor.listenTCP(0, WebSocketServerFactory(), interface="127.0.0.1")
    number = port.getHost().port
    port.stopListening()
    return f"ws://127.0.0.1:{number}"


class RelayManagementTests(PoolTestMixin, TestCase):
    def test_addRelayRejectsBadURLs(self) -> None:
        """
        addRelay refuses URLs that are not ws:// or wss:// with a host.
        """
        pool = self.makePool(start=False)
        for bad in ("http://example.com", "ws://", "example.com", "wss://:80"):
            self.assertRaises(InvalidRelayURL, pool.addRelay, bad)
        self.assertEqual(pool.relayURLs(), [])

    def test_addRelayPastMaxRelays(self) -> None:
        """
        Adding a relay past maxRelays raises TooManyRelays naming the limit.
        """
        pool = self.makePool(start=False, maxRelays=2)
        pool.addRelay("ws://127.0.0.1:1")
        pool.addRelay("ws://127.0.0.1:2")
        e = self.assertRaises(TooManyRelays, pool.addRelay, "ws://127.0.0.1:3")
        self.assertIn("maxRelays", str(e))

    def test_addRelayTwiceIsOneRelay(self) -> None:
        """
        Adding the same URL twice (even spelled differently) keeps one relay.
        """
        pool = self.makePool(start=False)
        pool.addRelay("ws://127.0.0.1:7")
        pool.addRelay("WS://127.0.0.1:7/")
        self.assertEqual(pool.relayURLs(), ["ws://127.0.0.1:7/"])

    @inlineCallbacks
    def test_removeRelay(self) -> Any:
        """
        removeRelay fires True once the relay's connections closed, and False
        for an unknown URL.
        """
        relay = yield self.startRelay()
        pool = self.makePool(relay)
        yield self.connected(pool)
        removed = yield pool.removeRelay(relay.url)
        self.assertTrue(removed)
        self.assertEqual(pool.relayURLs(), [])
        yield waitUntil(lambda: relay.connectionCount() == 0)
        unknown = yield pool.removeRelay("ws://127.0.0.1:9")
        self.assertFalse(unknown)

    @inlineCallbacks
    def test_activeRelayURLs(self) -> Any:
        """
        activeRelayURLs lists only relays with an open connection;
        countRelays counts every relay, countActiveRelays the connected ones
        (and seed 000's names, connectionCount and activeConnectionCount,
        say the same).
        """
        relay = yield self.startRelay()
        dead = deadURL()
        pool = self.makePool(relay, dead)
        yield self.connected(pool, 1)
        self.assertEqual(pool.activeRelayURLs(), [relay.url + "/"])
        self.assertEqual(
            (
                pool.countRelays(),
                pool.countActiveRelays(),
                pool.connectionCount(),
                pool.activeConnectionCount(),
            ),
            (2, 1, 2, 1),
        )

    @inlineCallbacks
    def test_cleanupRemovesDeadRelays(self) -> Any:
        """
        cleanup removes relays that had no open connection for deadAfter
        seconds and keeps connected ones.
        """
        relay = yield self.startRelay()
        pool = self.makePool(relay, deadURL(), deadAfter=0.1)
        yield self.connected(pool, 1)
        yield sleep(0.15)
        self.assertEqual(pool.cleanup(), 1)
        self.assertEqual(pool.relayURLs(), [relay.url + "/"])

    @inlineCallbacks
    def test_cleanupRemovesStoppedRelaysAtOnce(self) -> Any:
        """
        cleanup removes a relay that is already dead (stopped) at once,
        without waiting for deadAfter, while a relay that is only backing
        off stays for its grace period.
        """
        relay = yield self.startRelay()
        backingOff = deadURL()
        pool = self.makePool(relay, backingOff, deadAfter=300.0)
        yield self.connected(pool, 1)
        stopped = pool.relay(relay.url)
        yield stopped.stop()
        self.assertTrue(stopped.isStopped())
        self.assertEqual(pool.cleanup(), 1)
        self.assertEqual(pool.relayURLs(), [backingOff + "/"])
        self.assertEqual(pool.cleanup(), 0)

    def test_unknownRelayInSubscribe(self) -> None:
        """
        subscribe(relays=...) naming a relay not in the pool raises UnknownRelay.
        """
        pool = self.makePool(start=False)
        self.assertRaises(UnknownRelay, pool.subscribe, [KIND1], relays=["ws://127.0.0.1:5"])


class SubscriptionTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_eventsDeduplicatedAcrossRelays(self) -> Any:
        """
        An event served by several relays is delivered once per subscription.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        events = [makeEvent(content=f"note {i}") for i in range(6)]
        a.store(*events[:4])
        b.store(*events[2:])
        pool = self.makePool(a, b)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        seen: list[str] = []
        subscription.onEvent(lambda event, url: seen.append(event.id))
        yield subscription.whenEOSE()
        self.assertEqual(sorted(seen), sorted(e.id for e in events))

    @inlineCallbacks
    def test_twoSubscriptionsEachGetTheEvent(self) -> Any:
        """
        Dedup is per subscription: two subscriptions matching the same event
        both receive it.
        """
        a = yield self.startRelay()
        event = makeEvent()
        a.store(event)
        pool = self.makePool(a)
        yield self.connected(pool)
        first = yield pool.query([KIND1])
        second = yield pool.query([Filter.fromDict({"ids": [event.id]})])
        self.assertEqual([e.id for e in first], [event.id])
        self.assertEqual([e.id for e in second], [event.id])

    @inlineCallbacks
    def test_whenEOSEWaitsForEveryConnectedRelay(self) -> Any:
        """
        whenEOSE fires only after the slowest connected relay's EOSE, so its
        events are in before it.
        """
        fast = yield self.startRelay()
        slow = yield self.startRelay()
        late = makeEvent(content="from the slow relay")
        slow.store(late)
        pool = self.makePool(fast, slow)
        yield self.connected(pool)
        slow.misbehaviour.delay = 0.3
        subscription = pool.subscribe([KIND1])
        seen: list[str] = []
        subscription.onEvent(lambda event, url: seen.append(event.id))
        yield subscription.whenEOSE()
        self.assertEqual(seen, [late.id])

    @inlineCallbacks
    def test_neverEOSERelayTimesOut(self) -> Any:
        """
        A relay that never sends EOSE does not stall whenEOSE: it fires when
        the EOSE timeout passes.
        """
        good = yield self.startRelay()
        mute = yield self.startRelay()
        mute.misbehaviour.neverEOSE = True
        pool = self.makePool(good, mute)
        yield self.connected(pool)
        start = reactor.seconds()
        subscription = pool.subscribe([KIND1], eoseTimeout=0.4)
        yield subscription.whenEOSE()
        self.assertGreaterEqual(reactor.seconds() - start, 0.35)
        self.assertTrue(subscription.eosed)

    @inlineCallbacks
    def test_deadRelayDoesNotStallEOSE(self) -> Any:
        """
        A relay that cannot be reached is not waited for: EOSE comes with the
        live relays' EOSE, long before the timeout.
        """
        good = yield self.startRelay()
        pool = self.makePool(good, deadURL())
        yield self.connected(pool, 1)
        yield waitUntil(lambda: pool.stats()[pool.relayURLs()[1]].state == "backing-off")
        subscription = pool.subscribe([KIND1], eoseTimeout=3600)
        yield subscription.whenEOSE()
        self.assertTrue(subscription.eosed)

    @inlineCallbacks
    def test_closedCountsAsEOSE(self) -> Any:
        """
        A relay answering REQ with CLOSED counts as done for EOSE.
        """
        a = yield self.startRelay()
        a.misbehaviour.closeWith = "error: not today"
        pool = self.makePool(a)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1], eoseTimeout=3600)
        yield subscription.whenEOSE()
        self.assertTrue(subscription.eosed)

    @inlineCallbacks
    def test_liveEventsAfterEOSE(self) -> Any:
        """
        Events a relay receives after EOSE reach the subscription.
        """
        a = yield self.startRelay()
        pool = self.makePool(a)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        yield subscription.whenEOSE()
        event = makeEvent(content="live")
        a.store(event)
        got = yield subscription.next()
        self.assertEqual(got.id, event.id)

    @inlineCallbacks
    def test_closeSendsCLOSE(self) -> Any:
        """
        Closing a subscription closes it on the relays, and next() then
        fires with None.
        """
        a = yield self.startRelay()
        pool = self.makePool(a)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        yield subscription.whenEOSE()
        yield waitUntil(lambda: a.subscriptionCount() == 1)
        subscription.close()
        yield waitUntil(lambda: a.subscriptionCount() == 0)
        self.assertIsNone((yield subscription.next()))

    @inlineCallbacks
    def test_resubscribeAfterRelayRestart(self) -> Any:
        """
        When a relay is killed mid-subscription and comes back, the REQ is
        re-sent with since = the newest created_at seen, and every event
        published meanwhile arrives exactly once.
        """
        a = yield self.startRelay()
        before = [makeEvent(content=f"before {i}") for i in range(3)]
        a.store(*before)
        pool = self.makePool(a)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        seen: list[str] = []
        subscription.onEvent(lambda event, url: seen.append(event.id))
        yield subscription.whenEOSE()
        yield a.stop(abort=True)
        yield waitUntil(lambda: pool.countActiveRelays() == 0)
        meanwhile = [makeEvent(content=f"meanwhile {i}") for i in range(4)]
        a.store(*meanwhile)
        yield a.start()
        yield waitUntil(lambda: sum(isinstance(m, ClientReq) for m in a.received) == 2)
        # The relay answered the new REQ before it forwards this live event.
        marker = makeEvent(content="marker")
        a.store(marker)
        yield waitUntil(lambda: marker.id in seen)
        self.assertEqual(sorted(seen), sorted(e.id for e in before + meanwhile + [marker]))
        requests = [m for m in a.received if isinstance(m, ClientReq)]
        self.assertEqual(requests[-1].filters[0].since, max(e.createdAt for e in before))
        self.assertEqual(pool.stats()[pool.relayURLs()[0]].reconnects, 1)

    @inlineCallbacks
    def test_forgedCopyDoesNotHideGenuine(self) -> Any:
        """
        A relay forging signatures does not stop the genuine copy from
        another relay: it arrives, verified, and the forger is counted.
        """
        forger = yield self.startRelay()
        honest = yield self.startRelay()
        event = makeEvent(content="genuine")
        forger.store(event)
        forger.misbehaviour.forge = True
        pool = self.makePool(forger, honest)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1], relays=[forger.url])
        yield subscription.whenEOSE()
        honest.store(event)
        got = yield pool.query([KIND1])
        self.assertEqual([e.sig for e in got], [event.sig])
        stats = pool.stats()
        self.assertGreaterEqual(stats[forger.url + "/"].eventsInvalid, 1)
        self.assertLess(stats[forger.url + "/"].healthScore, 100)

    @inlineCallbacks
    def test_verifiedInAThreadInArrivalOrder(self) -> Any:
        """
        Verifying on the pool's worker thread, a subscription hears a
        relay's events in the order the relay sent them, then EOSE, as when
        verifying on the reactor thread; stopService ends the thread.
        """
        a = yield self.startRelay()
        a.store(*[makeEvent(content=str(i)) for i in range(300)])
        inline = self.makePool(a, verifyThreads=0)
        threaded = self.makePool(a)
        yield self.connected(inline)
        yield self.connected(threaded)
        orders: list[list[str]] = []
        for pool in (inline, threaded):
            heard: list[str] = []
            subscription = pool.subscribe([KIND1])
            subscription.onEvent(lambda e, url, heard=heard: heard.append(e.content))
            subscription.onEOSE(lambda heard=heard: heard.append("EOSE"))
            yield subscription.whenEOSE()
            orders.append(heard)
        self.assertEqual(len(orders[0]), 301)
        self.assertEqual(orders[1], orders[0])
        yield threaded.stopService()
        self.assertEqual([t.name for t in threading.enumerate() if "relaypool-verify" in t.name], [])

    @inlineCallbacks
    def test_knownIdIsDroppedBeforeParsing(self) -> Any:
        """
        A later copy of an event already verified and delivered to the
        subscription is counted and dropped by its id alone: even a copy with
        altered content is not delivered again nor counted invalid.
        """
        first = yield self.startRelay()
        late = yield self.startRelay()
        event = makeEvent(content="genuine")
        first.store(event)
        pool = self.makePool(first, late)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        seen: list[str] = []
        subscription.onEvent(lambda e, url: seen.append(e.content))
        yield subscription.whenEOSE()
        late.store(replace(event, content="altered"))
        yield waitUntil(lambda: pool.stats()[late.url + "/"].eventsReceived == 1)
        stats = pool.stats()[late.url + "/"]
        self.assertEqual(seen, ["genuine"])
        self.assertEqual((stats.eventsReceived, stats.eventsInvalid), (1, 0))

    @inlineCallbacks
    def test_verificationOff(self) -> Any:
        """
        With verify=False, events are delivered without checking.
        """
        a = yield self.startRelay(verify=False)
        forged = forgeSignature(makeEvent())
        a.store(forged)
        pool = self.makePool(a, verify=False)
        yield self.connected(pool)
        got = yield pool.query([KIND1])
        self.assertEqual([e.sig for e in got], [forged.sig])

    @inlineCallbacks
    def test_queryAppliesLimitAcrossRelays(self) -> Any:
        """
        query returns the union newest first with the filter's limit applied
        to the union.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        events = [makeEvent(content=str(i)) for i in range(6)]
        a.store(*events[0::2])
        b.store(*events[1::2])
        pool = self.makePool(a, b)
        yield self.connected(pool)
        got = yield pool.query([Filter.fromDict({"kinds": [1], "limit": 3})])
        self.assertEqual([e.id for e in got], [e.id for e in reversed(events)][:3])

    @inlineCallbacks
    def test_dedupCacheIsBounded(self) -> Any:
        """
        The dedup cache never holds more than dedupSize ids.
        """
        a = yield self.startRelay()
        a.store(*[makeEvent(content=str(i)) for i in range(10)])
        pool = self.makePool(a, dedupSize=4)
        yield self.connected(pool)
        got = yield pool.query([KIND1])
        self.assertEqual(len(got), 10)
        self.assertEqual(pool.totals().cachedIds, 4)

    @inlineCallbacks
    def test_subscriptionReachesRelayAddedLater(self) -> Any:
        """
        A subscription on all relays is opened on a relay added afterwards.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        pool = self.makePool(a)
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1])
        yield subscription.whenEOSE()
        pool.addRelay(b.url)
        event = makeEvent(content="on b")
        b.store(event)
        self.assertEqual((yield subscription.next()).id, event.id)


class CountTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_countFromRelays(self) -> Any:
        """
        count asks relays with NIP-45 COUNT and reports the largest answer.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        a.store(*[makeEvent(content=str(i)) for i in range(3)])
        b.store(*[makeEvent(content=str(i)) for i in range(5)])
        pool = self.makePool(a, b)
        yield self.connected(pool)
        result = yield pool.count([KIND1])
        self.assertEqual(result.count, 5)
        self.assertEqual(sorted(result.perRelay.values()), [3, 5])

    @inlineCallbacks
    def test_countWithoutSupportFallsBackToQuery(self) -> Any:
        """
        When no relay supports COUNT, the unique events are fetched and
        counted exactly.
        """
        a = yield self.startRelay()
        a.misbehaviour.countSupported = False
        events = [makeEvent(content=str(i)) for i in range(4)]
        a.store(*events)
        pool = self.makePool(a)
        yield self.connected(pool)
        result = yield pool.count([KIND1])
        self.assertEqual((result.count, result.approximate), (4, False))


class PublishTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_quorumReached(self) -> Any:
        """
        publish fires with the result once quorum relays answered OK true.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        pool = self.makePool(a, b)
        yield self.connected(pool)
        event = makeEvent()
        result = yield pool.publish(event, quorum=2)
        self.assertTrue(result.succeeded)
        self.assertEqual(set(result.accepted), {a.url + "/", b.url + "/"})
        self.assertEqual([e.id for e in a.events], [event.id])

    @inlineCallbacks
    def test_partialRejectionWithinQuorum(self) -> Any:
        """
        A rejection by one relay does not fail a publish whose quorum the
        others reach; the result names the rejection.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        a.misbehaviour.rejectWith = "blocked: not on this relay"
        pool = self.makePool(a, b)
        yield self.connected(pool)
        result = yield pool.publish(makeEvent(), quorum=1)
        yield waitUntil(lambda: pool.stats()[a.url + "/"].okRejected == 1)
        self.assertTrue(result.succeeded)

    @inlineCallbacks
    def test_rejectionBreaksQuorum(self) -> Any:
        """
        When too many relays reject, publish fails with PublishFailed carrying
        every relay's reason.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        a.misbehaviour.rejectWith = "blocked: not on this relay"
        pool = self.makePool(a, b)
        yield self.connected(pool)
        failure = yield self.assertFailure(pool.publish(makeEvent(), quorum=2), PublishFailed)
        self.assertEqual(dict(failure.result.rejected), {a.url + "/": "blocked: not on this relay"})
        self.assertIn("blocked: not on this relay", str(failure))
        self.assertFalse(failure.result.succeeded)

    @inlineCallbacks
    def test_publishTimesOut(self) -> Any:
        """
        A relay that never answers OK makes the publish fail at the timeout,
        with that relay listed as timed out.
        """
        a = yield self.startRelay()
        a.misbehaviour.silentOK = True
        pool = self.makePool(a)
        yield self.connected(pool)
        failure = yield self.assertFailure(pool.publish(makeEvent(), timeout=0.3), PublishFailed)
        self.assertEqual(failure.result.timedOut, frozenset({a.url + "/"}))

    @inlineCallbacks
    def test_quorumLargerThanRelays(self) -> Any:
        """
        A quorum larger than the number of relays fails at once.
        """
        a = yield self.startRelay()
        pool = self.makePool(a)
        yield self.connected(pool)
        yield self.assertFailure(pool.publish(makeEvent(), quorum=2), PublishFailed)

    @inlineCallbacks
    def test_publishToDisconnectedRelayIsQueued(self) -> Any:
        """
        An event published while a relay is still connecting waits in its
        outbound queue and is sent when the connection opens.
        """
        a = yield self.startRelay()
        pool = self.makePool(a)
        result = yield pool.publish(makeEvent())
        self.assertTrue(result.succeeded)

    @inlineCallbacks
    def test_authRequiredPublishWithKey(self) -> Any:
        """
        A relay answering auth-required gets a NIP-42 AUTH from a pool with a
        signing key, and the EVENT is retried and accepted.
        """
        a = yield self.startRelay()
        a.misbehaviour.requireAuth = True
        key = generatePrivateKey()
        pool = self.makePool(a, signingKey=key)
        yield self.connected(pool)
        result = yield pool.publish(makeEvent())
        self.assertTrue(result.succeeded)
        self.assertEqual(a.authenticated, {publicKeyFor(key)})

    @inlineCallbacks
    def test_authRequiredPublishWithoutKey(self) -> Any:
        """
        Without a signing key, auth-required is a rejection with the relay's
        reason.
        """
        a = yield self.startRelay()
        a.misbehaviour.requireAuth = True
        pool = self.makePool(a)
        yield self.connected(pool)
        failure = yield self.assertFailure(pool.publish(makeEvent()), PublishFailed)
        self.assertTrue(failure.result.rejected[a.url + "/"].startswith("auth-required:"))

    @inlineCallbacks
    def holdingRelay(self) -> Any:
        """
        A connected pool over one relay that already holds an event and
        answers its EVENT with C{OK false "duplicate: ..."}.

        @return: a Deferred firing with the relay, the pool and the event.
        """
        relay = yield self.startRelay()
        relay.misbehaviour.rejectDuplicates = True
        event = makeEvent()
        relay.store(event)
        pool = self.makePool(relay)
        yield self.connected(pool)
        return relay, pool, event

    @inlineCallbacks
    def test_duplicateRejectionCountsAsAccepted(self) -> Any:
        """
        A relay answering C{OK false "duplicate: ..."} has the event: it
        counts toward the quorum, and the result names it as accepting.
        """
        a, pool, event = yield self.holdingRelay()
        result = yield pool.publish(event)
        self.assertEqual(
            (dict(result.accepted), dict(result.rejected)),
            ({a.url + "/": "duplicate: already have this event"}, {}),
        )

    @inlineCallbacks
    def test_duplicateAnswersKeepHealth(self) -> Any:
        """
        C{duplicate:} answers, C{OK false} ones included, never count against
        a relay's health: its score stays 100 and no OK counts as rejected.
        """
        a, pool, event = yield self.holdingRelay()
        for _ in range(5):
            yield pool.publish(event)
        stats = pool.stats()[a.url + "/"]
        self.assertEqual((stats.healthScore, stats.okAccepted, stats.okRejected), (100.0, 5, 0))

    @inlineCallbacks
    def test_refusalsByRulesKeepHealth(self) -> Any:
        """
        Refusals by a relay's rules (final ones such as C{blocked:},
        C{invalid:}, C{pow:}, C{restricted:}, and C{rate-limited:} after
        the relay layer's one retry) are answers, not health errors: the
        score stays 100 while they count as rejected.
        """
        a = yield self.startRelay()
        pool = self.makePool(a, rateLimitBackoff=Backoff(initial=0.01, maximum=0.01, jitter=0))
        yield self.connected(pool)
        refusals = ("blocked: no", "invalid: no", "pow: 30", "restricted: no", "rate-limited: no")
        for message in refusals:
            a.misbehaviour.rejectWith = message
            yield self.assertFailure(pool.publish(makeEvent(content=message)), PublishFailed)
        stats = pool.stats()[a.url + "/"]
        self.assertEqual((stats.healthScore, stats.okRejected), (100.0, 5))

    @inlineCallbacks
    def test_failureAnswersCostHealth(self) -> Any:
        """
        An C{OK false "error: ..."}, or one without a known prefix, says the
        relay failed: it counts against the relay's health.
        """
        a = yield self.startRelay()
        pool = self.makePool(a)
        yield self.connected(pool)
        for message in ("error: disk full", "no idea"):
            a.misbehaviour.rejectWith = message
            yield self.assertFailure(pool.publish(makeEvent(content=message)), PublishFailed)
        self.assertLess(pool.stats()[a.url + "/"].healthScore, 100.0)

    @inlineCallbacks
    def test_answerHookHearsLateAnswers(self) -> Any:
        """
        C{onAnswer} hears every relay's answer, also those arriving after
        the quorum fired the publish's Deferred.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        b.misbehaviour.silentOK = True
        pool = self.makePool(a, b)
        yield self.connected(pool)
        answers: list[tuple[str, bool, str]] = []
        event = makeEvent()
        result = yield pool.publish(event, onAnswer=lambda *answer: answers.append(answer))
        self.assertEqual((set(result.accepted), result.timedOut), ({a.url + "/"}, {b.url + "/"}))
        b.sendOK(event.id, True, "")
        yield waitUntil(lambda: len(answers) == 2)
        self.assertEqual(sorted(answers), sorted([(a.url + "/", True, ""), (b.url + "/", True, "")]))

    @inlineCallbacks
    def test_answerHookHearsAnswersAfterFailedQuorum(self) -> Any:
        """
        A publish whose quorum became impossible still records the answers
        of the relays that were slower than the rejection.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        a.misbehaviour.rejectWith = "blocked: not here"
        b.misbehaviour.silentOK = True
        pool = self.makePool(a, b)
        yield self.connected(pool)
        answers: list[tuple[str, bool, str]] = []
        event = makeEvent()
        publishing = pool.publish(event, quorum=2, onAnswer=lambda *x: answers.append(x))
        yield self.assertFailure(publishing, PublishFailed)
        b.sendOK(event.id, True, "")
        yield waitUntil(lambda: len(answers) == 2)
        self.assertEqual(answers[1], (b.url + "/", True, ""))

    @inlineCallbacks
    def test_answerHookHearsTimeout(self) -> Any:
        """
        A relay still silent at the publish timeout is reported to
        C{onAnswer} as not having answered.
        """
        a = yield self.startRelay()
        a.misbehaviour.silentOK = True
        pool = self.makePool(a)
        yield self.connected(pool)
        answers: list[tuple[str, bool, str]] = []
        publishing = pool.publish(makeEvent(), timeout=0.2, onAnswer=lambda *x: answers.append(x))
        yield self.assertFailure(publishing, PublishFailed)
        self.assertEqual(answers, [(a.url + "/", False, NO_ANSWER)])

    @inlineCallbacks
    def test_joiningPublishSendsToItsOwnRelays(self) -> Any:
        """
        A publish joining an earlier one of the same event still in flight
        sends the event to the relays the earlier one did not target, and
        its hook hears each of its relays once.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        a.misbehaviour.silentOK = True
        pool = self.makePool(a, b)
        yield self.connected(pool)
        event = makeEvent()
        first = pool.publish(event, relays=[a.url])
        answers: list[tuple[str, bool, str]] = []
        second = pool.publish(event, relays=[b.url], onAnswer=lambda *x: answers.append(x))
        yield waitUntil(lambda: len(answers) == 1)
        self.assertEqual(answers, [(b.url + "/", True, "")])
        a.sendOK(event.id, True, "")
        yield first
        yield second
        self.assertEqual([e.id for e in b.events], [event.id])

    @inlineCallbacks
    def test_authRequiredSubscription(self) -> Any:
        """
        A REQ CLOSED with auth-required is retried once after AUTH.
        """
        a = yield self.startRelay()
        a.misbehaviour.requireAuth = True
        event = makeEvent()
        a.store(event)
        pool = self.makePool(a, signingKey=generatePrivateKey())
        yield self.connected(pool)
        got = yield pool.query([KIND1])
        self.assertEqual([e.id for e in got], [event.id])

    @inlineCallbacks
    def test_rateLimitedBacksOff(self) -> Any:
        """
        A REQ CLOSED with rate-limited is re-sent after the back-off delay.
        """
        a = yield self.startRelay()
        event = makeEvent()
        a.store(event)
        a.misbehaviour.closeWith = "rate-limited: slow down"
        pool = self.makePool(a, rateLimitBackoff=Backoff(initial=0.2, maximum=1, jitter=0))
        yield self.connected(pool)
        subscription = pool.subscribe([KIND1], eoseTimeout=3600)
        relay = pool.relay(a.url)
        yield waitUntil(lambda: relay.rateLimitedUntil() > 0)
        backedOffUntil = relay.rateLimitedUntil()
        a.misbehaviour.closeWith = None
        got = yield subscription.next()
        self.assertEqual(got.id, event.id)
        self.assertGreaterEqual(reactor.seconds(), backedOffUntil)


class FlowTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_rawTrafficThroughRecv(self) -> Any:
        """
        A raw REQ broadcast through sender() has its events (deduplicated)
        and EOSEs come out of recv().
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        event = makeEvent()
        a.store(event)
        b.store(event)
        pool = self.makePool(a, b)
        yield self.connected(pool)
        sender = pool.sender()
        self.assertEqual(sender.broadcast(ClientReq("raw", (KIND1,))), 2)
        messages = []
        for _ in range(3):
            messages.append((yield pool.recv()))
        kinds = sorted(type(m.message).__name__ for m in messages)
        self.assertEqual(kinds, ["RelayEOSE", "RelayEOSE", "RelayEvent"])
        # Each relay answers in order: whatever else it sent for "raw" comes
        # before its EOSE for "marker".
        sender.broadcast(ClientReq("marker", (Filter.fromDict({"kinds": [9999]}),)))
        later = []
        for _ in range(2):
            message = (yield pool.recv()).message
            later.append((type(message).__name__, getattr(message, "subscriptionId", None)))
        self.assertEqual(later, [("RelayEOSE", "marker")] * 2)

    @inlineCallbacks
    def test_fullInboundQueuePausesReading(self) -> Any:
        """
        When the recv queue is full the pool pauses reading from its relays
        instead of dropping or growing, and resumes when it drains; nothing
        is lost.
        """
        a = yield self.startRelay()
        events = [makeEvent(content=str(i)) for i in range(40)]
        a.store(*events)
        pool = self.makePool(a, ringCapacity=8)
        yield self.connected(pool)
        pool.sender().broadcast(ClientReq("raw", (KIND1,)))
        yield waitUntil(lambda: pool.totals().paused)
        readers = reactor.getReaders()
        for connection in pool.relay(a.url).openConnections():
            self.assertNotIn(connection.transport, readers)
        got: list[str] = []
        for _ in range(41):
            message = yield pool.recv()
            if isinstance(message.message, RelayEvent):
                got.append(message.message.event.id)
            else:
                self.assertIsInstance(message.message, RelayEOSE)
        self.assertEqual(sorted(got), sorted(e.id for e in events))
        self.assertFalse(pool.totals().paused)

    def test_outboundQueueFullIsCounted(self) -> None:
        """
        A disconnected relay queues at most broadcastCapacity messages; the
        next is refused and counted.
        """
        pool = self.makePool(deadURL(), broadcastCapacity=2)
        sender = pool.sender()
        self.assertEqual([sender.broadcast(b'["CLOSE","x"]') for _ in range(3)], [1, 1, 0])
        totals = pool.totals()
        self.assertEqual((totals.outboundQueued, totals.outboundDropped), (2, 1))

    @inlineCallbacks
    def test_recvFailsAfterStop(self) -> Any:
        """
        A recv() waiting when the pool stops fails with PoolClosed.
        """
        pool = self.makePool()
        waiting = pool.recv()
        yield pool.stopService()
        yield self.assertFailure(waiting, PoolClosed)


class LimitationTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_maxSubscriptionsQueuesREQs(self) -> Any:
        """
        With a NIP-11 max_subscriptions of 1, a second REQ waits in the queue
        until the first subscription closes, instead of being refused.
        """
        a = yield self.startRelay(maxSubscriptions=1)
        pool = self.makePool(a)
        yield self.connected(pool)
        first = pool.subscribe([KIND1])
        yield first.whenEOSE()
        second = pool.subscribe([Filter.fromDict({"kinds": [7]})], eoseTimeout=3600)
        self.assertEqual(pool.stats()[a.url + "/"].waitingSubscriptions, 1)
        first.close()
        yield second.whenEOSE()
        self.assertEqual(pool.stats()[a.url + "/"].waitingSubscriptions, 0)
        self.assertEqual(
            [(type(m).__name__, m.subscriptionId) for m in a.received],
            [("ClientReq", first.subscriptionId), ("ClientClose", first.subscriptionId),
             ("ClientReq", second.subscriptionId)],
        )

    @inlineCallbacks
    def test_maxFiltersSplitsREQ(self) -> Any:
        """
        A relay with max_filters 1 gets one REQ per filter; EOSE waits for
        all of them and events of both arrive.
        """
        information = RelayInformation(limitation=Limitation(maxFilters=1))
        a = yield self.startRelay(information=information)
        one, seven = makeEvent(kind=1), makeEvent(kind=7)
        a.store(one, seven)
        pool = self.makePool(a)
        yield self.connected(pool)
        got = yield pool.query([KIND1, Filter.fromDict({"kinds": [7]})])
        self.assertEqual({e.id for e in got}, {one.id, seven.id})
        requests = [m for m in a.received if isinstance(m, ClientReq)]
        self.assertEqual([len(r.filters) for r in requests], [1, 1])

    @inlineCallbacks
    def test_maxLimitClamps(self) -> Any:
        """
        A filter limit above the relay's max_limit is clamped to it.
        """
        information = RelayInformation(limitation=Limitation(maxLimit=2))
        a = yield self.startRelay(information=information)
        pool = self.makePool(a)
        yield self.connected(pool)
        yield pool.query([Filter.fromDict({"kinds": [1], "limit": 50})])
        requests = [m for m in a.received if isinstance(m, ClientReq)]
        self.assertEqual(requests[0].filters[0].limit, 2)


class _NoPong(WebSocketServerProtocol):  # type: ignore[misc]
    def sendPong(self, payload: bytes | None = None) -> None:
        pass


class KeepaliveTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_silentConnectionIsDropped(self) -> Any:
        """
        The one keepalive sweep pings connections and drops one that stays
        silent for two intervals; its slot reconnects.
        """
        factory = WebSocketServerFactory()
        factory.protocol = _NoPong
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}"
        pool = self.makePool(url, pingInterval=0.1, fetchInformation=False)
        yield self.connected(pool)
        yield waitUntil(lambda: pool.stats()[url + "/"].reconnects >= 1, timeout=3)


class StatsTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_statsCountEvents(self) -> Any:
        """
        stats() reports per relay the events received, unique and OKs, and
        the state.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        event = makeEvent()
        a.store(event)
        b.store(event)
        pool = self.makePool(a, b)
        yield self.connected(pool)
        yield pool.query([KIND1])
        yield pool.publish(makeEvent(content="x"), quorum=2)
        stats = pool.stats()
        self.assertEqual(sum(s.eventsReceived for s in stats.values()), 2)
        self.assertEqual(sum(s.eventsUnique for s in stats.values()), 1)
        self.assertEqual({s.state for s in stats.values()}, {"open"})
        self.assertEqual([s.okAccepted for s in stats.values()], [1, 1])
        totals = pool.totals()
        self.assertEqual((totals.relays, totals.activeRelays, totals.eventsUnique), (2, 2, 1))


class LimitEventsTests(TestCase):
    def test_eachFilterKeepsItsOwnLimit(self) -> None:
        """
        limitEvents keeps each filter's newest `limit` matches and merges them.
        """
        notes = [makeEvent(kind=1, content=str(i)) for i in range(4)]
        reactions = [makeEvent(kind=7, content=str(i)) for i in range(4)]
        kept = limitEvents(
            [Filter.fromDict({"kinds": [1], "limit": 1}), Filter.fromDict({"kinds": [7], "limit": 2})],
            notes + reactions,
        )
        self.assertEqual({e.id for e in kept}, {notes[-1].id, reactions[-1].id, reactions[-2].id})


class LifecycleTests(PoolTestMixin, TestCase):
    @inlineCallbacks
    def test_stopWithOwnNameService(self) -> Any:
        """
        A pool that made its own DNS name service starts and stops it, and
        stopping fires once the relays' connections closed.
        """
        a = yield self.startRelay()
        pool = RelayPool(reactor, backoff=FAST, informationTimeout=1.0)
        pool.addRelay(a.url)
        pool.startService()
        yield self.connected(pool)
        yield pool.stopService()
        yield waitUntil(lambda: a.connectionCount() == 0)

    @inlineCallbacks
    def test_stopRightAfterStart(self) -> Any:
        """
        Stopping a pool whose relays are still connecting (and fetching their
        NIP-11 documents) leaves nothing behind.
        """
        pool = self.makePool(deadURL())
        yield pool.stopService()

    @inlineCallbacks
    def test_publishAgainAfterQuorum(self) -> Any:
        """
        Publishing an event again after its first publish reached quorum
        while another relay was still silent sends it again and collects new
        answers.
        """
        a = yield self.startRelay()
        b = yield self.startRelay()
        b.misbehaviour.silentOK = True
        pool = self.makePool(a, b)
        yield self.connected(pool)
        event = makeEvent()
        yield pool.publish(event)
        b.misbehaviour.silentOK = False
        result = yield pool.publish(event, quorum=2)
        self.assertEqual(set(result.accepted), {a.url + "/", b.url + "/"})


class LateInformationTests(PoolTestMixin, TestCase):
    """
    REQs and COUNTs made while a relay's NIP-11 document is still on its way
    follow the document once it arrives (the document is injected, so the
    order is certain).
    """

    @inlineCallbacks
    def heldPool(self, relay: FakeRelay, **kwargs: Any) -> Any:
        """
        A pool connected to C{relay} whose REQs wait for a NIP-11 document
        that only the test gives.
        """
        pool = self.makePool(relay, start=False, fetchInformation=False, **kwargs)
        pool.relay(relay.url).holdForInformation()
        pool.startService()
        yield self.connected(pool)
        return pool

    @inlineCallbacks
    def test_lateMaxFiltersSplitsWaitingREQ(self) -> Any:
        """
        A REQ made before the relay's max_filters is known is split by it
        when the document arrives: one REQ per filter, events of both.
        """
        a = yield self.startRelay()
        one, seven = makeEvent(kind=1), makeEvent(kind=7)
        a.store(one, seven)
        pool = yield self.heldPool(a)
        query = pool.query([KIND1, Filter.fromDict({"kinds": [7]})])
        pool.relay(a.url).applyInformation(RelayInformation(limitation=Limitation(maxFilters=1)))
        got = yield query
        self.assertEqual({e.id for e in got}, {one.id, seven.id})
        requests = [m for m in a.received if isinstance(m, ClientReq)]
        self.assertEqual([len(r.filters) for r in requests], [1, 1])

    @inlineCallbacks
    def test_lateMaxLimitClampsWaitingREQ(self) -> Any:
        """
        A REQ made before the relay's max_limit is known has its limit
        clamped when the document arrives.
        """
        a = yield self.startRelay()
        pool = yield self.heldPool(a)
        query = pool.query([Filter.fromDict({"kinds": [1], "limit": 50})])
        pool.relay(a.url).applyInformation(RelayInformation(limitation=Limitation(maxLimit=2)))
        yield query
        (request,) = [m for m in a.received if isinstance(m, ClientReq)]
        self.assertEqual(request.filters[0].limit, 2)

    @inlineCallbacks
    def test_lateDocumentWithoutCountEndsWaitingCOUNT(self) -> Any:
        """
        A COUNT waiting for the relay's NIP-11 document is dropped for that
        relay when the document lists its NIPs without 45: the events are
        counted by fetching them, without waiting for the COUNT timeout.
        """
        a = yield self.startRelay()
        a.misbehaviour.countSupported = False
        a.misbehaviour.countRefusal = "ignore"
        a.store(makeEvent(), makeEvent())
        pool = yield self.heldPool(a)
        counting = pool.count([KIND1], timeout=3600)
        pool.relay(a.url).applyInformation(RelayInformation(supportedNips=(1, 11)))
        result = yield counting
        self.assertEqual((result.count, result.perRelay), (2, {}))
        self.assertEqual([m for m in a.received if isinstance(m, ClientCount)], [])


def _noCount(*nips: int) -> RelayInformation:
    """
    A NIP-11 document listing C{nips} (without 45).
    """
    return RelayInformation(supportedNips=nips or (1, 11))


class CountSupportTests(PoolTestMixin, TestCase):
    """
    COUNT leaves out, at once, the relays that cannot count; only silent
    relays are waited for.
    """

    @inlineCallbacks
    def test_relayWithoutNip45IsNotAsked(self) -> Any:
        """
        A relay whose NIP-11 document lists its NIPs without 45 is not sent
        the COUNT; the counting relay's answer is the result at once.
        """
        counting = yield self.startRelay()
        silent = yield self.startRelay(information=_noCount())
        silent.misbehaviour.countSupported = False
        silent.misbehaviour.countRefusal = "ignore"
        counting.store(*[makeEvent() for _ in range(3)])
        pool = self.makePool(counting, silent)
        yield self.connected(pool)
        yield waitUntil(lambda: pool.relay(silent.url).information is not None)
        result = yield pool.count([KIND1], timeout=3600)
        self.assertEqual((result.count, result.perRelay), (3, {counting.url + "/": 3}))
        self.assertEqual([m for m in silent.received if isinstance(m, ClientCount)], [])

    @inlineCallbacks
    def test_noticeAnswerIsLeftOut(self) -> Any:
        """
        A relay without a NIP-11 list that answers COUNT with a NOTICE is
        left out at once; with no relay counting, the events are fetched.
        """
        a = yield self.startRelay(information=RelayInformation())
        a.misbehaviour.countSupported = False
        a.misbehaviour.countRefusal = "notice"
        a.store(makeEvent(), makeEvent())
        pool = self.makePool(a)
        yield self.connected(pool)
        result = yield pool.count([KIND1], timeout=3600)
        self.assertEqual((result.count, result.approximate, result.perRelay), (2, False, {}))

    @inlineCallbacks
    def test_closedAnswerIsLeftOut(self) -> Any:
        """
        A relay answering COUNT with CLOSED is left out at once.
        """
        counting = yield self.startRelay()
        refusing = yield self.startRelay()
        refusing.misbehaviour.countSupported = False
        counting.store(makeEvent())
        pool = self.makePool(counting, refusing)
        yield self.connected(pool)
        result = yield pool.count([KIND1], timeout=3600)
        self.assertEqual(result.perRelay, {counting.url + "/": 1})

    @inlineCallbacks
    def test_noticeFromCountingRelayIsNotARefusal(self) -> Any:
        """
        A NOTICE from a relay whose NIP-11 document lists 45 does not end its
        COUNT: its answer still counts.
        """
        a = yield self.startRelay()
        a.store(makeEvent())
        pool = self.makePool(a)
        yield self.connected(pool)
        yield waitUntil(lambda: pool.relay(a.url).information is not None)
        # The relay answers the unknown verb with a NOTICE before the COUNT.
        pool.sender().broadcast(b'["HELLO"]')
        counting = pool.count([KIND1], timeout=3600)
        result = yield counting
        self.assertEqual(result.perRelay, {a.url + "/": 1})

    @inlineCallbacks
    def test_noFetchFailsWhenNoRelayCounts(self) -> Any:
        """
        count(fetch=False) fails with CountUnavailable when no relay
        counted, instead of fetching the events.
        """
        a = yield self.startRelay()
        a.misbehaviour.countSupported = False
        pool = self.makePool(a)
        yield self.connected(pool)
        yield self.assertFailure(pool.count([KIND1], fetch=False), CountUnavailable)
        self.assertEqual([m for m in a.received if isinstance(m, ClientReq)], [])

    @inlineCallbacks
    def test_countIsNeverSplit(self) -> Any:
        """
        A COUNT with more filters than the relay's max_filters is not split
        (counts of OR'd filters cannot be added): the relay is left out.
        """
        information = RelayInformation(
            supportedNips=(1, 45), limitation=Limitation(maxFilters=1)
        )
        a = yield self.startRelay(information=information)
        a.store(makeEvent(kind=1), makeEvent(kind=7))
        pool = self.makePool(a)
        yield self.connected(pool)
        yield waitUntil(lambda: pool.relay(a.url).information is not None)
        result = yield pool.count([KIND1, Filter.fromDict({"kinds": [7]})], timeout=3600)
        self.assertEqual((result.count, result.perRelay), (2, {}))
        self.assertEqual([m for m in a.received if isinstance(m, ClientCount)], [])


class ConnectionHealthTests(PoolTestMixin, TestCase):
    """
    A relay's connections live in its L{Pool}: each exchange is recorded on
    the connection that carried it, picking prefers healthy connections,
    and the keepalive sweep replaces unhealthy ones.
    """

    @inlineCallbacks
    def twoConnections(self, **kwargs: Any) -> Any:
        """
        @return: a started fake relay, a pool with two connections to it,
            and the pool's L{Relay} for it.
        """
        a = yield self.startRelay()
        pool = self.makePool(a, connectionsPerAddress=2, **kwargs)
        relay = pool.relay(a.url)
        yield waitUntil(lambda: len(relay.openConnections()) == 2)
        yield waitUntil(lambda: relay.information is not None)
        return a, pool, relay

    def successes(self, relay: Any) -> list[int]:
        """
        @return: the successes recorded on each open connection of C{relay}.
        """
        metrics = [relay.pool.metrics(c) for c in relay.openConnections()]
        return [0 if m is None else m.successes for m in metrics]

    def sicken(self, relay: Any, connection: Any) -> None:
        for _ in range(relay.pool._policy.maxConsecutiveErrors):
            relay.pool.recordError(connection)
        self.assertFalse(relay.pool.isHealthy(connection))

    @inlineCallbacks
    def test_latencyObserver(self) -> Any:
        """
        C{onLatency} hears each relay's OK, EOSE and COUNT latencies, with
        the relay's URL.
        """
        observed: list[tuple[str, str, float]] = []
        a = yield self.startRelay()
        pool = self.makePool(a, onLatency=lambda *args: observed.append(args))
        yield self.connected(pool)
        yield pool.publish(makeEvent())
        yield pool.query([KIND1])
        yield pool.count([KIND1])
        self.assertEqual(
            [(kind, url) for kind, url, _ in observed],
            [("ok", a.url + "/"), ("eose", a.url + "/"), ("count", a.url + "/")],
        )
        self.assertTrue(all(seconds >= 0 for _, _, seconds in observed), observed)

    @inlineCallbacks
    def test_okLatencyOnItsConnection(self) -> Any:
        """
        A publish's OK records its latency on the connection that carried
        the EVENT and the OK, and on no other.
        """
        a, pool, relay = yield self.twoConnections()
        yield pool.publish(makeEvent())
        self.assertEqual(sorted(self.successes(relay)), [0, 1])
        latencies = [relay.pool.metrics(c).lastLatency for c in relay.openConnections()]
        self.assertEqual(sum(latency is not None for latency in latencies), 1)

    @inlineCallbacks
    def test_eoseLatencyOnItsConnection(self) -> Any:
        """
        A REQ's EOSE records its latency on the connection the REQ went out
        on.
        """
        a, pool, relay = yield self.twoConnections()
        subscription = pool.subscribe([KIND1])
        yield subscription.whenEOSE()
        for connection in relay.openConnections():
            metrics = relay.pool.metrics(connection)
            successes = 0 if metrics is None else metrics.successes
            self.assertEqual(successes, connection.subscriptionCount)
        self.assertEqual(sorted(self.successes(relay)), [0, 1])

    @inlineCallbacks
    def test_countLatencyOnItsConnection(self) -> Any:
        """
        A COUNT's answer records its latency on the connection that carried
        it.
        """
        a, pool, relay = yield self.twoConnections()
        yield pool.count([KIND1])
        self.assertEqual(sorted(self.successes(relay)), [0, 1])

    @inlineCallbacks
    def test_failureOnItsConnection(self) -> Any:
        """
        An C{OK false "error: ..."} counts as an error on the connection
        that carried it, not on the relay's other connection.
        """
        a, pool, relay = yield self.twoConnections()
        a.misbehaviour.rejectWith = "error: disk full"
        yield self.assertFailure(pool.publish(makeEvent()), PublishFailed)
        errors = [relay.pool.metrics(c) for c in relay.openConnections()]
        self.assertEqual(sorted(0 if m is None else m.errors for m in errors), [0, 1])

    @inlineCallbacks
    def test_pickSkipsUnhealthyConnection(self) -> Any:
        """
        While a relay has a healthy connection, publishes go out on it and
        never on an unhealthy one.
        """
        a, pool, relay = yield self.twoConnections()
        sick, well = relay.openConnections()
        self.sicken(relay, sick)
        for i in range(4):
            yield pool.publish(makeEvent(content=str(i)))
        self.assertEqual(relay.pool.metrics(sick).successes, 0)
        self.assertEqual(relay.pool.metrics(well).successes, 4)

    @inlineCallbacks
    def test_healthIsAggregateOfConnections(self) -> Any:
        """
        A relay's health score and latency in L{RelayPool.stats} are the
        aggregate of its connections: the pool's aggregate for the relay's
        address, counting the exchanges of both connections.
        """
        a, pool, relay = yield self.twoConnections()
        sick, well = relay.openConnections()
        relay.pool.recordError(sick)
        relay.pool.recordSuccess(well, 0.25)
        stats = pool.stats()[relay.url]
        (address,) = relay.mux.addresses()
        aggregate = relay.pool.metrics(address)
        self.assertEqual((aggregate.errors, aggregate.successes), (1, 1))
        self.assertEqual(
            (stats.healthScore, stats.latency), (aggregate.healthScore(), aggregate.latencyEwma)
        )
        self.assertLess(stats.healthScore, 100.0)

    @inlineCallbacks
    def test_pongIsHealthProbe(self) -> Any:
        """
        The keepalive sweep pings every connection; each pong records its
        round trip on its connection.
        """
        a, pool, relay = yield self.twoConnections()
        pool._sweepConnections()
        yield waitUntil(lambda: self.successes(relay) == [1, 1])

    @inlineCallbacks
    def test_unhealthyConnectionReplacedAndSubscriptionMoves(self) -> Any:
        """
        The keepalive sweep replaces an unhealthy connection with a fresh
        one; the subscription it carried moves to a healthy connection and
        keeps receiving events.
        """
        a, pool, relay = yield self.twoConnections()
        subscription = pool.subscribe([KIND1])
        seen: list[str] = []
        subscription.onEvent(lambda event, url: seen.append(event.id))
        yield subscription.whenEOSE()
        (sick,) = [c for c in relay.openConnections() if c.subscriptionCount == 1]
        self.sicken(relay, sick)
        pool._sweepConnections()
        self.assertNotIn(sick, relay.openConnections())
        yield waitUntil(lambda: not sick.live)
        yield waitUntil(lambda: len(relay.openConnections()) == 2)
        carriers = [c for c in relay.openConnections() if c.subscriptionCount == 1]
        self.assertEqual(len(carriers), 1)
        self.assertIsNot(carriers[0], sick)
        yield waitUntil(lambda: sum(isinstance(m, ClientReq) for m in a.received) == 2)
        marker = makeEvent(content="marker")
        a.store(marker)
        yield waitUntil(lambda: marker.id in seen)
