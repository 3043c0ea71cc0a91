"""
Tests for relay roles (L{relaypool.upstream.roles}) and admit policies
(L{relaypool.upstream.admission}) in a L{RelayPool}: subscriptions go to read
relays, publishes to write relays, discovery relays get neither, and a
refused URL never becomes a relay.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.errors import RelayRefused, UnknownRelay
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientEvent, ClientReq
from relaypool.testing import FakeRelay, makeEvent
from relaypool.upstream.admission import RelayPatterns, denyOnion, refusal
from relaypool.upstream.roles import OUTBOX_ONLY, RelayRoles
from tests.test_gateway_protocol import waitUntil
from tests.test_relaypool import PoolTestMixin


def reqs(relay: FakeRelay) -> list[ClientReq]:
    return [m for m in relay.received if isinstance(m, ClientReq)]


def published(relay: FakeRelay) -> list[ClientEvent]:
    return [m for m in relay.received if isinstance(m, ClientEvent)]


class AdmissionTests(SynchronousTestCase):
    """
    The admit policies on their own.
    """

    def test_denyOnion(self) -> None:
        """
        L{denyOnion} refuses C{.onion} hosts and admits the others.
        """
        self.assertFalse(denyOnion("ws://abcdefghijklmnop.onion/"))
        self.assertTrue(denyOnion("wss://nos.lol/"))

    def test_patternsMatchURLOrHost(self) -> None:
        """
        A pattern matches the normalized URL or the host alone, ignoring
        case; deny wins over allow; with allow patterns, the rest is refused.
        """
        policy = RelayPatterns(allow=["wss://*", "127.0.0.1"], deny=["*.ONION", "wss://bad.example/*"])
        self.assertTrue(policy("wss://nos.lol/"))
        self.assertTrue(policy("ws://127.0.0.1:7777/"))
        self.assertFalse(policy("ws://plain.example/"))
        self.assertFalse(policy("wss://x.onion/"))
        self.assertFalse(policy("wss://bad.example/"))
        self.assertEqual(policy.refusal("wss://x.onion/"), "it matches the deny pattern '*.onion'")
        self.assertIn("matches no allow pattern", policy.refusal("ws://plain.example/") or "")

    def test_refusalOfAPlainCallable(self) -> None:
        """
        A plain callable's refusal names it.
        """

        def onlyLocal(url: str) -> bool:
            return "127.0.0.1" in url

        self.assertIsNone(refusal(onlyLocal, "ws://127.0.0.1:1/"))
        self.assertEqual(refusal(onlyLocal, "wss://nos.lol/"), "the admit policy onlyLocal refuses it")

    def test_roleNames(self) -> None:
        """
        L{RelayRoles.names} lists the roles held; the outbox model's relays
        have no configured role.
        """
        self.assertEqual(RelayRoles().names(), ("read", "write"))
        self.assertEqual(RelayRoles(read=False, write=False, discovery=True).names(), ("discovery",))
        self.assertEqual(OUTBOX_ONLY.names(), ("outbox",))
        self.assertFalse(OUTBOX_ONLY.configured())


class PoolAdmissionTests(PoolTestMixin, SynchronousTestCase):
    """
    The admit policy and role checks of L{RelayPool.addRelay}.
    """

    def test_refusedRelayIsNotAdded(self) -> None:
        """
        A URL the admit policy refuses raises L{RelayRefused} naming the URL
        and the reason, and is not added.
        """
        pool = self.makePool(start=False, admit=RelayPatterns(deny=["*.onion"]))
        e = self.assertRaises(RelayRefused, pool.addRelay, "ws://hidden.onion")
        self.assertEqual(
            str(e), "ws://hidden.onion/: refused by the pool's admit policy: it matches the deny pattern '*.onion'"
        )
        self.assertEqual(pool.relayURLs(), [])
        pool.addRelay("ws://127.0.0.1:1")
        self.assertEqual(pool.relayURLs(), ["ws://127.0.0.1:1/"])

    def test_aRelayNeedsARole(self) -> None:
        """
        A relay with no role is refused with a message naming the roles.
        """
        pool = self.makePool(start=False)
        e = self.assertRaises(ValueError, pool.addRelay, "ws://127.0.0.1:1", read=False, write=False)
        self.assertIn("read, write or discovery", str(e))
        self.assertRaises(ValueError, pool.relayURLs, "reader")
        self.assertRaises(UnknownRelay, pool.relayRoles, "ws://127.0.0.1:1")

    def test_relayURLsByRole(self) -> None:
        """
        L{RelayPool.relayURLs} with a role lists the relays that have it;
        the roles are in the relays' stats.
        """
        pool = self.makePool(start=False)
        pool.addRelay("ws://127.0.0.1:1", write=False)
        pool.addRelay("ws://127.0.0.1:2", read=False)
        pool.addRelay("ws://127.0.0.1:3", read=False, write=False, discovery=True)
        self.assertEqual(pool.relayURLs("read"), ["ws://127.0.0.1:1/"])
        self.assertEqual(pool.relayURLs("write"), ["ws://127.0.0.1:2/"])
        self.assertEqual(pool.relayURLs("discovery"), ["ws://127.0.0.1:3/"])
        self.assertEqual(pool.stats()["ws://127.0.0.1:3/"].roles, ("discovery",))
        pool.setRelayRoles("ws://127.0.0.1:3", discovery=True)
        self.assertEqual(pool.relayRoles("ws://127.0.0.1:3"), RelayRoles(True, True, True))


class RoleRoutingTests(PoolTestMixin, TestCase):
    """
    What each role gets, against fake relays on 127.0.0.1.
    """

    @inlineCallbacks
    def test_subscriptionsToReadPublishesToWrite(self) -> Any:
        """
        A subscription and a count reach only the read relays, a publish
        only the write relays (and its quorum counts them); a discovery
        relay gets neither.
        """
        reader = yield self.startRelay()
        writer = yield self.startRelay()
        discovery = yield self.startRelay()
        pool = self.makePool()
        pool.addRelay(reader.url, write=False)
        pool.addRelay(writer.url, read=False)
        pool.addRelay(discovery.url, read=False, write=False, discovery=True)
        yield self.connected(pool, 3)
        reader.store(makeEvent(1, "stored"))
        events = yield pool.query([Filter(kinds=frozenset({1}))])
        self.assertEqual([e.content for e in events], ["stored"])
        result = yield pool.publish(makeEvent(1, "published"), quorum=1)
        self.assertEqual(set(result.accepted), {pool.relay(writer.url).url})
        self.assertEqual((len(reqs(reader)), len(reqs(writer)), len(reqs(discovery))), (1, 0, 0))
        self.assertEqual((len(published(reader)), len(published(writer)), len(published(discovery))), (0, 1, 0))

    @inlineCallbacks
    def test_gainingAndLosingRead(self) -> Any:
        """
        A relay that becomes a read relay gets the live subscriptions made
        for every relay; one that stops being one gets a CLOSE for them.
        """
        first = yield self.startRelay()
        second = yield self.startRelay()
        pool = self.makePool(first)
        pool.addRelay(second.url, read=False)
        yield self.connected(pool, 2)
        subscription = pool.subscribe([Filter(kinds=frozenset({1}))])
        yield subscription.whenEOSE()
        self.assertEqual(len(reqs(second)), 0)
        pool.setRelayRoles(second.url, read=True, write=False)
        yield waitUntil(lambda: len(reqs(second)) == 1)
        self.assertEqual(second.subscriptionCount(), 1)
        pool.setRelayRoles(second.url, read=False, write=True)
        yield waitUntil(lambda: second.subscriptionCount() == 0)
        subscription.close()
