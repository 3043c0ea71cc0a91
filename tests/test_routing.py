"""
Tests for the outbox model (NIP-65): L{relaypool.nostr.nip65.RelayList},
L{relaypool.upstream.routing.chooseRelays}, and a L{RelayPool} with
C{outboxModel=True} routing subscriptions and publishes over several fake
relays on 127.0.0.1 that hold relay lists.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.nostr.event import Event, generatePrivateKey, publicKeyFor
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientEvent, ClientReq
from relaypool.nostr.nip65 import RELAY_LIST_KIND, RelayList
from relaypool.nostr.url import parseRelayURL
from relaypool.store.sqlite import SQLiteEventStore
from relaypool.testing import FakeRelay, makeEvent
from relaypool.upstream.admission import RelayPatterns
from relaypool.upstream.routing import chooseRelays
from tests.test_gateway_protocol import waitUntil
from tests.test_relaypool import PoolTestMixin, deadURL

NOTES = Filter(kinds=frozenset({1}))


def url(relay: FakeRelay) -> str:
    """The relay's URL as the pool normalizes it."""
    return parseRelayURL(relay.url).url


def relayList(key: bytes, tags: list[list[str]], createdAt: int | None = None) -> Event:
    return makeEvent(RELAY_LIST_KIND, "", tags, createdAt=createdAt, privateKey=key)


def note(key: bytes, content: str) -> Event:
    return makeEvent(1, content, privateKey=key)


def reqFilters(relay: FakeRelay) -> list[Filter]:
    """Every filter of every REQ the relay received."""
    return [f for m in relay.received if isinstance(m, ClientReq) for f in m.filters]


def noteAuthors(relay: FakeRelay) -> set[str]:
    """The authors the relay was asked notes of."""
    return {a for f in reqFilters(relay) if f.kinds == NOTES.kinds and f.authors for a in f.authors}


class RelayListTests(SynchronousTestCase):
    """
    L{RelayList.fromEvent} reads a kind 10002 event as NIP-65 says.
    """

    def test_markers(self) -> None:
        """
        An C{r} tag without a marker is read and write; C{read} and C{write}
        markers make it one of them; URLs are normalized and kept once, in
        order; other tags are ignored.
        """
        key = generatePrivateKey()
        event = relayList(
            key,
            [
                ["r", "wss://Both.example"],
                ["r", "wss://write.example", "write"],
                ["r", "wss://read.example", "read"],
                ["p", "00" * 32],
                ["r", "wss://both.example/"],
            ],
        )
        parsed = RelayList.fromEvent(event)
        self.assertEqual(parsed.pubkey, publicKeyFor(key))
        self.assertEqual(parsed.createdAt, event.createdAt)
        self.assertEqual(parsed.write, ("wss://both.example/", "wss://write.example/"))
        self.assertEqual(parsed.read, ("wss://both.example/", "wss://read.example/"))
        self.assertEqual(parsed.skipped, 0)

    def test_badTagsAreSkipped(self) -> None:
        """
        URLs that are not ws(s) URLs and unknown markers are skipped and
        counted; a tag without a value is ignored.
        """
        event = relayList(
            generatePrivateKey(),
            [["r", "https://web.example"], ["r", "wss://ok.example", "sometimes"], ["r"], ["r", "wss://ok.example"]],
        )
        parsed = RelayList.fromEvent(event)
        self.assertEqual((parsed.write, parsed.read, parsed.skipped), (("wss://ok.example/",), ("wss://ok.example/",), 2))

    def test_otherKinds(self) -> None:
        """
        An event of another kind is not a relay list.
        """
        self.assertRaises(ValueError, RelayList.fromEvent, makeEvent(3, ""))


class ChooseRelaysTests(SynchronousTestCase):
    """
    L{chooseRelays}: a bounded number of each author's write relays,
    preferring the pool's own, then the shared ones.
    """

    def lists(self, **writes: tuple[str, ...]) -> dict[str, RelayList]:
        return {author: RelayList(author, 1, write=urls) for author, urls in writes.items()}

    def test_boundedPerAuthorSharedFirst(self) -> None:
        """
        Each author gets at most C{perAuthor} relays: the preferred ones
        first, then those more authors share; authors without a list are
        unrouted.
        """
        lists = self.lists(a=("ws://a1/", "ws://shared/", "ws://mine/"), b=("ws://b1/", "ws://shared/"))
        plan, unrouted = chooseRelays(["a", "b", "c"], lists, 2, {"ws://mine/"}, lambda url: True)
        self.assertEqual(plan, {"ws://mine/": {"a"}, "ws://shared/": {"a", "b"}, "ws://b1/": {"b"}})
        self.assertEqual(unrouted, {"c"})

    def test_unusableRelaysArePassedOver(self) -> None:
        """
        A relay C{usable} refuses is skipped (asked once) for the author's
        next one; an author none of whose relays is usable is unrouted.
        """
        asked: list[str] = []

        def usable(url: str) -> bool:
            asked.append(url)
            return url != "ws://shared/"

        lists = self.lists(a=("ws://shared/", "ws://a1/"), b=("ws://shared/",))
        plan, unrouted = chooseRelays(["a", "b"], lists, 1, set(), usable)
        self.assertEqual((plan, unrouted), ({"ws://a1/": {"a"}}, {"b"}))
        self.assertEqual(asked.count("ws://shared/"), 1)


class OutboxModelTests(PoolTestMixin, TestCase):
    """
    A pool with the outbox model over fake relays: C{discovery} holds the
    relay lists, C{home} is the pool's own read and write relay, C{alice}
    and C{bob} are where the authors write.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.discovery = yield self.startRelay()
        self.home = yield self.startRelay()
        self.alice = yield self.startRelay()
        self.bob = yield self.startRelay()
        self.aliceKey, self.bobKey, self.carolKey = (generatePrivateKey() for _ in range(3))
        self.authors = [publicKeyFor(k) for k in (self.aliceKey, self.bobKey, self.carolKey)]
        self.discovery.store(
            relayList(self.aliceKey, [["r", self.alice.url, "write"], ["r", self.home.url, "read"]]),
            relayList(self.bobKey, [["r", self.bob.url]]),
        )
        self.alice.store(note(self.aliceKey, "alice on her relay"), note(self.bobKey, "bob on alice's relay"))
        self.bob.store(note(self.bobKey, "bob on his relay"))
        self.home.store(note(self.carolKey, "carol at home"), note(self.aliceKey, "alice at home"))

    def outboxPool(self, **kwargs: Any) -> Any:
        kwargs.setdefault("outboxModel", True)
        pool = self.makePool(**kwargs)
        pool.addRelay(self.home.url)
        pool.addRelay(self.discovery.url, read=False, write=False, discovery=True)
        return pool

    @inlineCallbacks
    def test_authorsReadFromTheirWriteRelays(self) -> Any:
        """
        A query with C{authors} finds each author's relay list on the
        discovery relay, asks each author's write relay for that author
        only, and the home relay for the author without a list; the new
        relays are C{outbox} relays, and EOSE comes once over all.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        events = yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset(self.authors))])
        self.assertEqual(
            sorted(e.content for e in events), ["alice on her relay", "bob on his relay", "carol at home"]
        )
        alice, bob, carol = self.authors
        self.assertEqual(noteAuthors(self.alice), {alice})
        self.assertEqual(noteAuthors(self.bob), {bob})
        self.assertEqual(noteAuthors(self.home), {carol})
        self.assertEqual(noteAuthors(self.discovery), set())
        self.assertEqual(sorted(pool.relayURLs("outbox")), sorted([url(self.alice), url(self.bob)]))
        self.assertEqual(pool.stats()[url(self.bob)].roles, ("outbox",))

    @inlineCallbacks
    def test_storeFirst(self) -> Any:
        """
        Relay lists in the pool's store are used without asking the
        discovery relays.
        """
        store = SQLiteEventStore(self.mktemp() + ".db", reactor)
        self.addCleanup(store.close)
        yield gatherResults([store.save(e) for e in self.discovery.events])
        pool = self.outboxPool(store=store)
        yield self.connected(pool, 2)
        alice, bob, _ = self.authors
        events = yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset({alice, bob}))])
        self.assertEqual(sorted(e.content for e in events), ["alice on her relay", "bob on his relay"])
        lookups = [f for f in reqFilters(self.discovery) if f.kinds == frozenset({RELAY_LIST_KIND}) and f.since is None]
        self.assertEqual(lookups, [])

    @inlineCallbacks
    def test_filtersWithoutAuthorsStayOnReadRelays(self) -> Any:
        """
        In a routed subscription, a filter without C{authors} goes to the
        read relays only.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        alice = self.authors[0]
        filters = [Filter(kinds=NOTES.kinds, authors=frozenset({alice})), Filter(kinds=frozenset({7}))]
        yield pool.query(filters)
        self.assertIn(Filter(kinds=frozenset({7})), reqFilters(self.home))
        self.assertNotIn(Filter(kinds=frozenset({7})), reqFilters(self.alice))
        self.assertEqual(noteAuthors(self.alice), {alice})

    @inlineCallbacks
    def test_maxRelaysBoundsOutboxRelays(self) -> Any:
        """
        The outbox relays share C{maxRelays}: an author whose relays cannot
        be added is read from the read relays instead.
        """
        self.home.store(note(self.bobKey, "bob at home"))
        pool = self.outboxPool(maxRelays=3)
        yield self.connected(pool, 2)
        alice, bob, _ = self.authors
        events = yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset({alice, bob}))])
        self.assertEqual(pool.countRelays(), 3)
        [added] = pool.relayURLs("outbox")
        routed, fellBack = (alice, bob) if added == url(self.alice) else (bob, alice)
        self.assertEqual(noteAuthors(self.home), {fellBack})
        self.assertEqual(noteAuthors(self.alice if routed == alice else self.bob), {routed})
        self.assertEqual(len(events), 2)

    @inlineCallbacks
    def test_admitPolicyAppliesToOutboxRelays(self) -> Any:
        """
        A relay the admit policy refuses is never connected: its authors go
        to the read relays.
        """
        deny = RelayPatterns(deny=[f"ws://127.0.0.1:{self.bob.port}/"])
        pool = self.outboxPool(admit=deny)
        yield self.connected(pool, 2)
        bob = self.authors[1]
        yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset({bob}))])
        self.assertFalse(pool.hasRelay(self.bob.url))
        self.assertEqual(noteAuthors(self.home), {bob})
        self.assertEqual(self.bob.received, [])

    @inlineCallbacks
    def test_idleOutboxRelaysClose(self) -> Any:
        """
        Once no subscription uses an outbox relay, it is removed after the
        idle time; the configured relays stay.
        """
        pool = self.outboxPool(outboxIdleTimeout=0.05)
        yield self.connected(pool, 2)
        yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset(self.authors[:2]))])
        yield waitUntil(lambda: pool.relayURLs("outbox") == [])
        self.assertEqual(sorted(pool.relayURLs()), sorted([url(self.home), url(self.discovery)]))
        yield waitUntil(lambda: self.alice.connectionCount() == 0 and self.bob.connectionCount() == 0)

    @inlineCallbacks
    def test_publishToAuthorAndTaggedRelays(self) -> Any:
        """
        A publish goes to the write relays, the author's write relays and
        the read relays of the pubkeys it tags.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        bob = self.authors[1]
        event = makeEvent(1, "hi bob", [["p", bob]], privateKey=self.aliceKey)
        result = yield pool.publish(event, quorum=3)
        self.assertEqual(set(result.accepted), {url(self.home), url(self.alice), url(self.bob)})
        for relay in (self.home, self.alice, self.bob):
            self.assertIn(event.id, {e.id for e in relay.events})
        self.assertEqual([m for m in self.discovery.received if isinstance(m, ClientEvent)], [])
        targets = yield pool.publishTargets(event)
        self.assertEqual(targets, [url(self.home), url(self.alice), url(self.bob)])

    @inlineCallbacks
    def test_changedRelayListIsFollowed(self) -> Any:
        """
        When an author publishes a newer relay list, a live subscription
        reading that author moves to the new write relay and gets the
        author's new events there.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        alice = self.authors[0]
        received: list[str] = []
        subscription = pool.subscribe([Filter(kinds=NOTES.kinds, authors=frozenset({alice}))])
        subscription.onEvent(lambda event, relayURL: received.append(event.content))
        yield subscription.whenEOSE()
        self.assertEqual(noteAuthors(self.bob), set())
        moved = relayList(self.aliceKey, [["r", self.bob.url]], createdAt=int(reactor.seconds()) + 5)
        self.discovery.store(moved)
        yield waitUntil(lambda: alice in noteAuthors(self.bob))
        self.bob.store(note(self.aliceKey, "alice moved"))
        yield waitUntil(lambda: "alice moved" in received)
        yield waitUntil(lambda: self.alice.subscriptionCount() == 0)
        subscription.close()

    @inlineCallbacks
    def test_stopWithRoutedSubscriptions(self) -> Any:
        """
        A pool stops cleanly while routed subscriptions are live, one of
        them still waiting for its relay lists.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        alice, bob, _ = self.authors
        routed = pool.subscribe([Filter(kinds=NOTES.kinds, authors=frozenset({alice}))])
        yield routed.whenEOSE()
        waiting = pool.subscribe([Filter(kinds=NOTES.kinds, authors=frozenset({bob}))])
        yield pool.stopService()
        self.assertTrue(routed.closed and waiting.closed)
        self.assertEqual(pool.relayURLs("outbox"), [url(self.alice)])

    @inlineCallbacks
    def test_mentionsReadFromTheirReadRelays(self) -> Any:
        """
        A filter without authors asking mentions of pubkeys (C{#p}) goes,
        per pubkey, to that pubkey's read relays; a pubkey without a relay
        list goes to the read relays.
        """
        alice, bob, carol = self.authors
        toAlice = makeEvent(1, "for alice", [["p", alice]], privateKey=self.bobKey)
        toCarol = makeEvent(1, "for carol", [["p", carol]], privateKey=self.bobKey)
        self.home.store(toAlice, toCarol)
        toBob = makeEvent(1, "for bob", [["p", bob]], privateKey=self.aliceKey)
        self.bob.store(toBob)
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        mentions = Filter(kinds=NOTES.kinds, tags=(("p", frozenset(self.authors)),))
        events = yield pool.query([mentions])
        self.assertEqual(sorted(e.content for e in events), ["for alice", "for bob", "for carol"])
        asked = {url(r): [dict(f.tags)["p"] for f in reqFilters(r) if f.tags] for r in (self.home, self.bob)}
        # alice reads on home, carol has no list: both on home; bob reads on his relay.
        self.assertEqual(asked, {url(self.home): [frozenset({alice, carol})], url(self.bob): [frozenset({bob})]})
        self.assertFalse(pool.hasRelay(self.alice.url))

    @inlineCallbacks
    def test_concurrentLookupsAreShared(self) -> Any:
        """
        Subscriptions made at once for overlapping authors look each
        author's relay list up once.
        """
        pool = self.outboxPool()
        yield self.connected(pool, 2)
        alice, bob, carol = self.authors
        first = pool.subscribe([Filter(kinds=NOTES.kinds, authors=frozenset({alice, bob}))])
        second = pool.subscribe([Filter(kinds=NOTES.kinds, authors=frozenset({bob, carol}))])
        yield first.whenEOSE()
        yield second.whenEOSE()
        lookups = [f.authors for f in reqFilters(self.discovery) if f.since is None]
        self.assertEqual(lookups, [frozenset({alice, bob}), frozenset({carol})])
        first.close()
        second.close()

    @inlineCallbacks
    def test_unreachableRelayIsRoutedAround(self) -> Any:
        """
        An author's write relay that cannot be connected is left out: the
        author is routed to their next write relay, and the query gets the
        author's events there before its EOSE.
        """
        daveKey = generatePrivateKey()
        dave = publicKeyFor(daveKey)
        self.discovery.store(relayList(daveKey, [["r", deadURL()], ["r", self.bob.url]]))
        self.bob.store(note(daveKey, "dave on bob's relay"))
        pool = self.outboxPool(outboxRelaysPerAuthor=1)
        yield self.connected(pool, 2)
        events = yield pool.query([Filter(kinds=NOTES.kinds, authors=frozenset({dave}))])
        self.assertEqual([e.content for e in events], ["dave on bob's relay"])
        self.assertEqual(noteAuthors(self.bob), {dave})
        self.assertEqual(noteAuthors(self.home), set())
