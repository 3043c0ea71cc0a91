"""
Tests for L{relaypool.cluster}: several gateways on one real Redis server
(L{tests.redisserver}) sharing one upstream subscription per filter set,
with fake relays and real WebSocket clients on 127.0.0.1.

Leases here last 0.6 s (renewed every 0.2 s) so that handovers happen
within a second of real time; every wait is a bounded poll for something
that must happen.
"""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaypool.cluster.leases import Leases
from relaypool.cluster.link import RedisAddress, RedisLink, connectOnce, parseRedisURL
from relaypool.cluster.node import ClusterNode, filterSetName
from relaypool.cluster.outbox import RedisOutbox
from relaypool.daemon.config import buildConfig
from relaypool.errors import ConfigError, RedisUnavailable
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientClose, ClientNegOpen, ClientReq
from relaypool.testing import makeEvent
from tests.daemons import startDaemon
from tests.redisserver import freePort, startRedis
from tests.test_cli import _CLI, _run
from tests.test_gateway_protocol import TIMEOUT, GatewayTestCase, waitUntil

LEASE_TIME = 0.6
NOTES = Filter(kinds=frozenset({1}))


class RedisURLTests(SynchronousTestCase):
    """
    L{parseRedisURL}.
    """

    def test_full(self) -> None:
        """
        Host, port, database and credentials are read; the address shows
        without its password.
        """
        address = parseRedisURL("redis://user:s%40cret@redis.example:6380/3")
        self.assertEqual(address, RedisAddress("redis.example", 6380, 3, "user", "s@cret"))
        self.assertEqual(str(address), "redis://redis.example:6380/3")

    def test_defaults(self) -> None:
        """
        Port 6379 and database 0 by default.
        """
        self.assertEqual(parseRedisURL("redis://127.0.0.1"), RedisAddress("127.0.0.1"))

    def test_invalid(self) -> None:
        """
        Each wrong part is named.
        """
        for text, problem in [
            ("http://127.0.0.1:6379", "is not a redis:// URL"),
            ("redis://:6379/0", "names no host"),
            ("redis://127.0.0.1:port/0", "invalid port"),
            ("redis://127.0.0.1:6379/zero", "the database must be a number"),
            ("redis://127.0.0.1:6379/0?x=1", "takes no query"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseRedisURL(text)
            self.assertIn(problem, str(caught.exception))


class RedisTestCase(GatewayTestCase):
    """
    Fixtures: a Redis server, links to it, cluster nodes.
    """

    def setUp(self) -> None:
        self.redis = startRedis(self)
        self.address = parseRedisURL(self.redis.url)

    def startLink(self, **kwargs: Any) -> RedisLink:
        link = RedisLink(self.address, reactor, **kwargs)
        link.start()
        self.addCleanup(link.stop)
        return link

    @inlineCallbacks
    def startNode(self, relays: list[Any], nodeId: str, **kwargs: Any) -> Any:
        """
        A cluster node: a relay pool over C{relays}, a store, the node and
        a gateway serving through it.
        """
        store = self.openStore()
        pool = yield self.startPool(relays, store=store)
        kwargs.setdefault("leaseTime", LEASE_TIME)
        node = ClusterNode(self.address, pool, store, reactor, nodeId, **kwargs)
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        yield waitUntil(lambda: node.link.up)
        gateway = yield self.startGateway(pool, store=store, cluster=node)
        return node, gateway

    @inlineCallbacks
    def subscribed(self, gateway: Any, subscriptionId: str = "s") -> Any:
        """
        A client of C{gateway} subscribed to kind 1 notes, past EOSE.
        """
        client = yield self.connect(gateway)
        client.send("REQ", subscriptionId, NOTES.toDict())
        yield client.waitForVerb("EOSE", subscriptionId)
        return client

    def logged(self) -> list[str]:
        """
        @return: the cluster's log lines from now on.
        """
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            text = event.get("log_format") or ""
            if text.startswith("relaypool: cluster:"):
                from twisted.logger import formatEvent

                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines


def reqs(relay: Any) -> list[ClientReq]:
    """
    @return: the REQs a fake relay received.
    """
    return [message for message in relay.received if isinstance(message, ClientReq)]


class LinkTests(RedisTestCase):
    """
    L{RedisLink} and L{connectOnce} on a real server.
    """

    @inlineCallbacks
    def test_command(self) -> Any:
        """
        A command is answered once the link is up.
        """
        link = self.startLink()
        yield waitUntil(lambda: link.up)
        answer = yield link.command("SET", "k", "v")
        self.assertEqual(answer, "OK")
        self.assertEqual((yield link.command("GET", "k")), "v")

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        """
        Connecting to a port nothing listens on fails with
        L{RedisUnavailable} naming the address.
        """
        address = RedisAddress("127.0.0.1", freePort())
        factory, connecting = connectOnce(address, reactor, 2.0)
        error = yield self.assertFailure(connecting, RedisUnavailable)
        self.assertIn(f"cannot reach Redis at {address}: could not connect", str(error))

    @inlineCallbacks
    def test_downFailsAtOnce(self) -> Any:
        """
        While Redis is away a command fails at once, the link logs one line
        for the loss, none per reconnection attempt, and one when Redis is
        back.
        """
        link = self.startLink(retryDelay=0.05)
        yield waitUntil(lambda: link.up)
        lines = self.logged()
        self.redis.stop()
        yield waitUntil(lambda: not link.up)
        yield self.assertFailure(link.command("PING"), RedisUnavailable)
        attempts = link.commandsSent
        self.redis.start()
        yield waitUntil(lambda: link.up)
        self.assertEqual(link.commandsSent, attempts)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("lost Redis at", lines[0])
        self.assertIn("back on Redis at", lines[1])


class LeaseTests(RedisTestCase):
    """
    L{Leases} on a real server.
    """

    def leases(
        self, nodeId: str, changes: list[tuple[str, str, bool]], clock: Any = reactor
    ) -> Leases:
        link = self.startLink()
        return Leases(
            link,
            nodeId,
            LEASE_TIME,
            60.0,
            clock,
            lambda name: f"test:lease:{name}",
            lambda name: f"test:events:{name}",
            lambda name, owned: changes.append((nodeId, name, owned)),
        )

    @inlineCallbacks
    def startBoth(self) -> Any:
        changes: list[tuple[str, str, bool]] = []
        a, b = self.leases("a", changes), self.leases("b", changes)
        yield waitUntil(lambda: a._link.up and b._link.up)
        return a, b, changes

    @inlineCallbacks
    def test_oneHolder(self) -> Any:
        """
        Of two nodes wanting a lease, the first holds it; the other sees
        who does.
        """
        a, b, changes = yield self.startBoth()
        yield a.want("x")
        yield b.want("x")
        self.assertTrue(a.owns("x"))
        self.assertFalse(b.owns("x"))
        self.assertEqual(b.holders["x"], "a")
        self.assertEqual(changes, [("a", "x", True), ("b", "x", False)])
        self.assertEqual(self.redis.command("GET", "test:lease:x"), b"$1\r\na\r\n")

    @inlineCallbacks
    def test_dropHandsOver(self) -> Any:
        """
        A dropped lease is free: the other node's next round takes it.
        """
        a, b, changes = yield self.startBoth()
        yield a.want("x")
        yield b.want("x")
        yield a.drop("x")
        yield b.renew()
        self.assertTrue(b.owns("x"))
        self.assertEqual(changes, [("a", "x", True), ("b", "x", False), ("b", "x", True)])

    @inlineCallbacks
    def test_expiryHandsOver(self) -> Any:
        """
        A lease its holder stops renewing (it died, or lost Redis) expires,
        and the other node takes it.
        """
        a, b, changes = yield self.startBoth()
        yield a.want("x")
        yield b.want("x")
        yield a._link.stop()

        @inlineCallbacks
        def renewed() -> Any:
            yield b.renew()
            return b.owns("x")

        for _ in range(int(TIMEOUT / 0.05)):
            if (yield renewed()):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(b.owns("x"))

    @inlineCallbacks
    def test_ownDeadline(self) -> Any:
        """
        A holder that could not renew stops claiming the lease at its own
        deadline (the time it asked plus the lease time), before Redis lets
        it expire.
        """
        clock = Clock()
        a = self.leases("a", [], clock)
        yield waitUntil(lambda: a._link.up)
        yield a.want("x")
        clock.advance(LEASE_TIME - 0.01)
        self.assertTrue(a.owns("x"))
        clock.advance(0.01)
        self.assertFalse(a.owns("x"))
        self.assertEqual(a.held(), [])

    @inlineCallbacks
    def test_lateRenewal(self) -> Any:
        """
        A lease renewed after its holder's own deadline passed is lapsed
        until then, and the renewal is reported as taking it again.
        """
        clock = Clock()
        changes: list[tuple[str, str, bool]] = []
        a = self.leases("a", changes, clock)
        yield waitUntil(lambda: a._link.up)
        yield a.want("x")
        clock.advance(LEASE_TIME)
        self.assertTrue(a.lapsed("x"))
        yield a.renew()
        self.assertFalse(a.lapsed("x"))
        self.assertTrue(a.owns("x"))
        self.assertEqual(changes, [("a", "x", True), ("a", "x", True)])


class ClusterGatewayTests(RedisTestCase):
    """
    Gateways on one Redis server: one upstream subscription per filter set,
    each event delivered once to each client, and handovers that lose
    nothing.
    """

    timeout = 60

    @inlineCallbacks
    def twoNodes(self) -> Any:
        (relay,) = yield self.startRelays(1)
        first, gatewayA = yield self.startNode([relay], "a")
        second, gatewayB = yield self.startNode([relay], "b")
        return relay, (first, gatewayA), (second, gatewayB)

    @inlineCallbacks
    def test_oneUpstreamSubscription(self) -> Any:
        """
        Clients on two nodes with one filter set make one REQ upstream, from
        the lease holder, and each gets each event once, also those stored
        before.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        stored = makeEvent(kind=1, content="stored")
        relay.store(stored)
        clientA = yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        joinerB = yield self.subscribed(gatewayB, "t")
        name = filterSetName((NOTES.withLimit(500),))
        self.assertEqual(a.leases.holders[name], "a")
        self.assertEqual(b.leases.holders[name], "a")
        self.assertEqual(len(reqs(relay)), 1)
        live = [makeEvent(kind=1, content=f"live {i}") for i in range(20)]
        relay.store(*live)
        everything = {stored.id} | {event.id for event in live}
        for client, subscriptionId in [(clientA, "s"), (clientB, "s"), (joinerB, "t")]:
            yield waitUntil(lambda c=client, s=subscriptionId: set(c.eventIds(s)) == everything)
            ids = client.eventIds(subscriptionId)
            self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(len(reqs(relay)), 1)
        # The stream expires if no node renews its lease any more.
        ttl = self.redis.command("PTTL", f"relaypool:events:{name}")
        self.assertGreater(int(ttl[1:].split(b"\r\n")[0]), 0)
        # The stored event came to b with the stream's stored entries, the
        # live ones as they were added.
        self.assertEqual(b.eventsReceived, 20)

    @inlineCallbacks
    def test_handoverWhenOwnerLeaves(self) -> Any:
        """
        When the owner's last client leaves, the other node takes the lease
        and subscribes upstream from the newest event it had: its client
        misses nothing and gets nothing twice.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        clientA = yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        before = makeEvent(kind=1, content="before", createdAt=1_700_000_000)
        relay.store(before)
        yield waitUntil(lambda: clientB.eventIds("s") == [before.id])
        clientA.send("CLOSE", "s")
        name = filterSetName((NOTES.withLimit(500),))
        yield waitUntil(lambda: b.leases.owns(name))
        yield waitUntil(lambda: len(reqs(relay)) == 2)
        resubscribed = reqs(relay)[1]
        self.assertEqual([f.since for f in resubscribed.filters], [1_700_000_000])
        # Events that came late, with older timestamps, are synced.
        yield waitUntil(lambda: any(isinstance(m, ClientNegOpen) for m in relay.received))
        (negOpen,) = [m for m in relay.received if isinstance(m, ClientNegOpen)]
        self.assertEqual(negOpen.filter.since, 1_700_000_000 - 3600)
        self.assertTrue(any(isinstance(m, ClientClose) for m in relay.received))
        after = makeEvent(kind=1, content="after", createdAt=1_700_000_001)
        relay.store(after)
        yield waitUntil(lambda: clientB.eventIds("s") == [before.id, after.id])

    @inlineCallbacks
    def test_eventsOfALateRenewal(self) -> Any:
        """
        The events an owner gets while its renewal is late reach the stream
        once the renewal says it still holds the lease: the other node's
        clients miss none.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        name = filterSetName((NOTES.withLimit(500),))
        # The owner's own deadline passed before the renewal's answer came.
        a.leases._deadlines[name] = reactor.seconds() - 1
        late = makeEvent(kind=1, content="late")
        relay.store(late)
        yield waitUntil(lambda: a.leases.lapsed(name) and name in a._waitingForRenewal)
        yield a.leases.renew()
        yield waitUntil(lambda: clientB.eventIds("s") == [late.id])

    @inlineCallbacks
    def test_joinerHistoryUpToReadPosition(self) -> Any:
        """
        A client joining a filter set on a follower gets the stream's
        events up to those the node read: the newer ones come to it live,
        once.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        yield self.subscribed(gatewayA)
        yield self.subscribed(gatewayB)
        name = filterSetName((NOTES.withLimit(500),))
        yield waitUntil(lambda: name in b._following)
        # b reads nothing more for now.
        reads: list[Deferred[Any]] = []
        b.link.read = lambda *args: reads.append(Deferred()) or reads[-1]  # type: ignore[method-assign]
        # Its read in flight ended: its next one waits.
        yield waitUntil(lambda: reads != [])
        unread = makeEvent(kind=1, content="not read by b yet")
        relay.store(unread)
        yield waitUntil(lambda: a.eventsPublished == 1)
        stored = yield b.query((NOTES.withLimit(500),))
        self.assertEqual(stored, [])

    @inlineCallbacks
    def test_sameNodeId(self) -> Any:
        """
        Two running nodes with one id: a line says so (once per node at
        most).
        """
        lines = self.logged()
        (relay,) = yield self.startRelays(1)
        yield self.startNode([relay], "twin")
        yield self.startNode([relay], "twin")
        yield waitUntil(lambda: any("another running node has the id twin" in line for line in lines))

    @inlineCallbacks
    def test_streamOfAnotherType(self) -> Any:
        """
        A stream key Redis holds as another type makes the reads fail: the
        node logs it and reads again, and once the key is a stream again,
        events flow.
        """
        self.flushLoggedErrors()
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        name = filterSetName((NOTES.withLimit(500),))
        key = f"relaypool:events:{name}"
        self.redis.command("DEL", key)
        self.redis.command("SET", key, "not a stream")
        yield waitUntil(lambda: len(self.flushLoggedErrors()) > 0)
        self.redis.command("DEL", key)
        event = makeEvent(kind=1)
        relay.store(event)
        yield waitUntil(lambda: clientB.eventIds("s") == [event.id])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_ownerCutOff(self) -> Any:
        """
        An owner cut off from Redis serves its own clients on its own, and
        the other node takes the lease once it expires: both nodes' clients
        keep getting every event, once.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        clientA = yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        name = filterSetName((NOTES.withLimit(500),))
        yield a.link.stop()
        yield waitUntil(lambda: b.leases.owns(name))
        self.assertFalse(a.leases.owns(name))
        events = [makeEvent(kind=1, content=f"during {i}") for i in range(5)]
        relay.store(*events)
        ids = [event.id for event in events]
        for client in (clientA, clientB):
            yield waitUntil(lambda c=client: sorted(c.eventIds("s")) == sorted(ids))
        self.assertEqual(len(clientB.eventIds("s")), 5)

    @inlineCallbacks
    def test_redisRestart(self) -> Any:
        """
        While Redis is away both nodes subscribe upstream for their own
        clients; once it is back, one holds the lease again and the other
        closes its upstream subscription. No client misses an event.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        clientA = yield self.subscribed(gatewayA)
        clientB = yield self.subscribed(gatewayB)
        self.redis.stop()
        yield waitUntil(lambda: not a.link.up and not b.link.up)
        yield waitUntil(lambda: relay.subscriptionCount() == 2)
        during = makeEvent(kind=1, content="during")
        relay.store(during)
        for client in (clientA, clientB):
            yield waitUntil(lambda c=client: c.eventIds("s") == [during.id])
        self.redis.start()
        yield waitUntil(lambda: a.link.up and b.link.up)
        yield waitUntil(lambda: relay.subscriptionCount() == 1)
        after = makeEvent(kind=1, content="after")
        relay.store(after)
        for client in (clientA, clientB):
            yield waitUntil(lambda c=client: c.eventIds("s") == [during.id, after.id])

    @inlineCallbacks
    def test_status(self) -> Any:
        """
        C{/stats} shows the cluster: both nodes, the lease owners and the
        traffic through Redis.
        """
        relay, (a, gatewayA), (b, gatewayB) = yield self.twoNodes()
        yield self.subscribed(gatewayA)
        yield self.subscribed(gatewayB)
        relay.store(makeEvent(kind=1))
        yield waitUntil(lambda: b.eventsReceived == 1)
        yield waitUntil(lambda: "a" in gatewayB.stats()["cluster"]["nodes"])
        status = gatewayB.stats()["cluster"]
        self.assertEqual(status["node"], "b")
        self.assertTrue(status["redisUp"])
        self.assertEqual(status["leaseOwners"], {"a": 1})
        self.assertEqual(status["following"], 1)
        self.assertEqual(status["eventsReceived"], 1)
        self.assertEqual(status["cluster"]["nodes"], 2)
        _, body = yield self.get(gatewayB, "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(families["relaypool_cluster_nodes"].samples[0].value, 2)
        self.assertEqual(families["relaypool_cluster_redis_up"].samples[0].value, 1)
        self.assertEqual(families["relaypool_cluster_streams_following"].samples[0].value, 1)
        self.assertEqual(families["relaypool_cluster_events_received"].samples[0].value, 1)
        # The status page's document has the cluster's summary.
        _, body = yield self.get(gatewayB, "/status.json")
        summary = orjson.loads(body)["cluster"]
        self.assertEqual((summary["node"], summary["nodes"], summary["following"]), ("b", 2, 1))


class DaemonClusterTests(RedisTestCase):
    """
    The daemon's cluster settings: C{--redis}, C{--node-id},
    C{--redis-optional}, C{--lease-time}, C{--cluster-history}.
    """

    @inlineCallbacks
    def test_joins(self) -> Any:
        """
        With C{--redis} the daemon's gateway serves through a cluster node
        with the given id and settings, shown in C{/stats}.
        """
        (relay,) = yield self.startRelays(1)
        daemon, port = yield Deferred.fromCoroutine(
            startDaemon(
                self,
                [relay.url],
                redis=self.redis.url,
                **{"node-id": "first", "lease-time": "0.6", "cluster-history": "50"},
            )
        )
        node = daemon.cluster
        assert node is not None
        yield waitUntil(lambda: node.link.up)
        self.assertEqual((node.nodeId, node.leaseTime, node.historySize), ("first", 0.6, 50))
        self.assertEqual(daemon.gateway.stats()["cluster"]["node"], "first")
        # A client's EVENT goes through the cluster's outbox on Redis.
        client = yield self.connect(daemon.gateway)
        event = makeEvent(kind=1)
        client.send("EVENT", event.toDict())
        ok = yield client.waitForVerb("OK", event.id)
        self.assertTrue(ok[2], ok)
        self.assertIn(event, relay.events)
        outboxKey = RedisOutbox(node.link, "first", list, None, reactor).streamKey(relay.url + "/")
        self.assertEqual(self.redis.command("EXISTS", outboxKey), b":1\r\n")

    @inlineCallbacks
    def test_optional(self) -> Any:
        """
        With C{--redis-optional}, a daemon whose Redis is unreachable
        starts, serves its clients on its own, logs one line saying so,
        and joins once Redis is up.
        """
        lines = self.logged()
        self.redis.stop()
        (relay,) = yield self.startRelays(1)
        daemon, port = yield Deferred.fromCoroutine(
            startDaemon(self, [relay.url], redis=self.redis.url, **{"redis-optional": True})
        )
        gateway = daemon.gateway
        client = yield self.subscribed(gateway)
        event = makeEvent(kind=1)
        relay.store(event)
        yield client.waitFor(lambda frame: frame[0] == "EVENT")
        yield waitUntil(lambda: lines != [])
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"cannot reach Redis at {self.address}", lines[0])
        self.assertIn("serving this node's clients on its own until it is reachable", lines[0])
        self.redis.start()
        node = daemon.cluster
        assert node is not None
        yield waitUntil(lambda: node.link.up and node.leases.held() != [])

    def test_refusesWithoutRedis(self) -> None:
        """
        Without C{--redis-optional}, C{relaypool run} ends with status 1 and
        one line saying Redis cannot be reached and what to do.
        """
        url = f"redis://127.0.0.1:{freePort()}/0"
        result = _run(
            *_CLI,
            "run",
            "--store",
            ":memory:",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--relay",
            "ws://127.0.0.1:9/",
            "--redis",
            url,
        )
        lines = [line for line in result.stdout.splitlines() if "Redis" in line]
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(len(lines), 1, result.stdout)
        self.assertIn(f"relaypool: cannot reach Redis at {url}: could not connect", lines[0])
        self.assertIn("(start with --redis-optional to serve as a single node", lines[0])

    def test_needsRelays(self) -> None:
        """
        C{--redis} without relays is refused: a cluster shares upstream
        subscriptions.
        """
        with self.assertRaises(ConfigError) as caught:
            buildConfig(overrides={"redis": self.redis.url, "store": ":memory:"})
        self.assertIn("a cluster shares upstream subscriptions", str(caught.exception))

    def test_claimTimeAfterPublishTimeout(self) -> None:
        """
        An outbox claim time no longer than the publish timeout is refused:
        a node would take another's event in flight.
        """
        with self.assertRaises(ConfigError) as caught:
            buildConfig(
                overrides={
                    "redis": self.redis.url,
                    "relays": ["ws://127.0.0.1:9"],
                    "publish-timeout": "10",
                    "outbox-claim-time": "10",
                }
            )
        self.assertIn("outbox-claim-time: must be more than publish-timeout", str(caught.exception))

    def test_invalidURL(self) -> None:
        """
        An invalid C{--redis} URL is refused, naming the setting and the
        problem.
        """
        with self.assertRaises(ConfigError) as caught:
            buildConfig(overrides={"redis": "http://127.0.0.1", "relays": ["ws://127.0.0.1:9"]})
        self.assertIn("redis", str(caught.exception))
        self.assertIn("is not a redis:// URL", str(caught.exception))
