"""
Tests for L{relaypool.cluster} end to end: three C{relaypool run} daemons
(subprocesses) on one real Redis server (L{tests.redisserver}) and two fake
relays, with 300 WebSocket clients spread over them on ten filter sets.

The cluster must make one upstream subscription per filter set whatever the
number of nodes and clients, deliver each event once to each client, and,
when a node is killed (C{SIGKILL}, as a crash), hand its filter sets over to
the surviving nodes within the lease time without losing or repeating an
event; the killed node's clients reconnect to a surviving node, as NIP-01
clients do.

Leases here last 1 s (renewed every third of it); every wait is a bounded
poll for something that must happen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from relaypool.nostr.event import Event
from relaypool.nostr.messages import ClientReq
from relaypool.testing import FakeRelay, makeEvent
from tests.redisserver import startRedis
from tests.test_cli import _CLI, _Daemon, _environment
from tests.wsclient import NostrClient

_log = Logger()

NODES = 3
TOPICS = 10
CLIENTS_PER_NODE_AND_TOPIC = 10
LEASE_TIME = 1.0

#: How long a wait for something that must happen may last: a safety net,
#: never a bound the test asserts.
WAIT = 20.0

#: How many clients connect to one node at once (the listen backlog is 50).
CONNECTING_AT_ONCE = 25

#: Seconds between two events of a topic while a node is killed.
PUBLISH_INTERVAL = 0.1


def _filter(topic: int) -> dict[str, Any]:
    """
    @return: the filter of a topic's filter set, as a client sends it.
    """
    return {"kinds": [1], "#t": [f"topic{topic}"]}


def _topicOf(req: ClientReq) -> str:
    """
    @return: the C{#t} value of a REQ made for one of the test's filter sets.
    """
    ((tagFilter,),) = (f.tags for f in req.filters)
    letter, values = tagFilter
    (value,) = values
    return f"#{letter}:{value}"


def _reqs(relay: FakeRelay) -> list[ClientReq]:
    """
    @return: the REQs a fake relay received.
    """
    return [message for message in relay.received if isinstance(message, ClientReq)]


def _filterSetReqs(relay: FakeRelay) -> list[ClientReq]:
    """
    @return: the REQs a fake relay received over filter sets: not those by
        id with which a NIP-77 sync fetches the events a node lacks.
    """
    return [req for req in _reqs(relay) if all(f.ids is None for f in req.filters)]


@inlineCallbacks
def _waitUntil(predicate: Callable[[], bool], what: Callable[[], str]) -> Any:
    """
    Poll C{predicate} every 20 ms until it holds.

    @param what: says, when the wait fails after L{WAIT} seconds, what was
        seen instead.
    """
    deadline = reactor.seconds() + WAIT
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not reached within {WAIT} s: {what()}")
        yield deferLater(reactor, 0.02, lambda: None)


@dataclass
class _Node:
    """
    One daemon run as a child process.
    """

    nodeId: str
    daemon: _Daemon
    process: IProcessTransport
    port: int = 0

    @inlineCallbacks
    def cluster(self) -> Any:
        """
        @return: a Deferred firing with the C{cluster} section of the
            node's C{/stats}.
        """
        response = yield treq.get(f"http://127.0.0.1:{self.port}/stats", persistent=False)
        document = yield treq.json_content(response)
        return document["cluster"]

    @inlineCallbacks
    def waitForCluster(self, predicate: Callable[[dict[str, Any]], bool]) -> Any:
        """
        Poll the node's C{/stats} every 50 ms until C{predicate} holds for
        its C{cluster} section.

        @return: a Deferred firing with that section.
        """
        deadline = reactor.seconds() + WAIT
        while True:
            cluster = yield self.cluster()
            if predicate(cluster):
                return cluster
            if reactor.seconds() > deadline:
                raise AssertionError(f"{self.nodeId}: not reached within {WAIT} s: {cluster}")
            yield deferLater(reactor, 0.05, lambda: None)


@dataclass(eq=False)
class _Member:
    """
    One downstream client: its topic, and its connections in order (a
    client moved after its node died has two).
    """

    topic: int
    nodes: list[int]
    connections: list[NostrClient] = field(default_factory=list)

    @property
    def subscriptionId(self) -> str:
        return f"topic{self.topic}"

    def eventIds(self, connection: int) -> list[str]:
        return self.connections[connection].eventIds(self.subscriptionId)

    def allIds(self) -> set[str]:
        """
        @return: the ids received over all its connections.
        """
        return {i for c in range(len(self.connections)) for i in self.eventIds(c)}


def _duplicates(members: list[_Member], *connections: int) -> list[str]:
    """
    @return: one line for each event a member got more than once on one of
        C{connections}, saying where in that connection's frames each copy
        and the EOSE came.
    """
    lines = []
    for member in members:
        for connection in connections:
            client = member.connections[connection]
            positions: dict[str, list[int]] = {}
            eose = None
            for index, frame in enumerate(client.frames):
                if frame[:2] == ["EOSE", member.subscriptionId]:
                    eose = index
                elif frame[:2] == ["EVENT", member.subscriptionId]:
                    positions.setdefault(frame[2]["id"], []).append(index)
            lines.extend(
                f"topic {member.topic}, nodes {member.nodes}, connection {connection}:"
                f" event {eventId[:8]} at frames {at} of {len(client.frames)}, EOSE at {eose}"
                for eventId, at in positions.items()
                if len(at) > 1
            )
    return lines


def _spawnNode(case: TestCase, logs: Path, nodeId: str, *args: str) -> _Node:
    """
    Start a daemon as a child process (as L{tests.test_cli._spawn} does),
    keeping its process to kill it. It is killed after C{case} if still
    running, and its output is written to C{logs/<nodeId>.log} then.
    """
    daemon = _Daemon()
    process = reactor.spawnProcess(daemon, args[0], list(args), env=_environment())

    def save(result: object = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{nodeId}.log").write_bytes(daemon.output)

    def kill() -> Any:
        if daemon.ended.called:
            return save()
        process.signalProcess("KILL")
        return daemon.ended.addBoth(save)

    case.addCleanup(kill)
    return _Node(nodeId, daemon, process)


class ClusterNodesTests(TestCase):
    """
    Three daemons on one Redis server, two relays, 300 clients.
    """

    timeout = 60
    logs: Path

    @inlineCallbacks
    def startCluster(self) -> Any:
        """
        Redis, the two relays and the three daemons, each daemon serving
        and on Redis.

        @return: a Deferred firing with the relays and the nodes.
        """
        redis = startRedis(self)
        relays = []
        for _ in range(2):
            relay = FakeRelay(reactor)
            yield relay.start()
            self.addCleanup(relay.stop, True)
            relays.append(relay)
        self.logs = Path(self.mktemp())
        nodes = [
            _spawnNode(
                self,
                self.logs,
                f"n{index + 1}",
                *_CLI,
                "run",
                *("--store", ":memory:"),
                *("--listen", "tcp:0:interface=127.0.0.1"),
                *("--relay", relays[0].url, "--relay", relays[1].url),
                *("--redis", redis.url, "--node-id", f"n{index + 1}"),
                *("--lease-time", str(LEASE_TIME), "--status-interval", "0"),
                # 100 clients per node, 150 once a node died, all from 127.0.0.1.
                *("--max-connections-per-ip", "1000"),
            )
            for index in range(NODES)
        ]
        for node in nodes:
            line = yield node.daemon.line(b"serving clients on 127.0.0.1:")
            node.port = int(line.rsplit(b":", 1)[1])
        for node in nodes:
            yield node.waitForCluster(lambda cluster: cluster["redisUp"])
        return relays, nodes

    @inlineCallbacks
    def connect(self, members: list[_Member], nodes: list[_Node]) -> Any:
        """
        Connect each member to its last node and send its REQ, at most
        L{CONNECTING_AT_ONCE} per node at a time, and wait for every EOSE.
        """

        failures: list[str] = []

        @inlineCallbacks
        def one(member: _Member) -> Any:
            client = NostrClient(reactor, WAIT)
            self.addCleanup(client.close)
            member.connections.append(client)
            where = f"topic {member.topic} on n{member.nodes[-1] + 1}"
            try:
                yield client.connect(nodes[member.nodes[-1]].port)
                client.send("REQ", member.subscriptionId, _filter(member.topic))
                frame = yield client.waitFor(
                    lambda f: (
                        f[:2]
                        in (["EOSE", member.subscriptionId], ["CLOSED", member.subscriptionId])
                    )
                )
            except Exception as e:
                failures.append(f"{where}: {e!r}")
            else:
                if frame[0] != "EOSE":
                    failures.append(f"{where}: {frame}")

        @inlineCallbacks
        def lane(queue: list[_Member]) -> Any:
            while queue:
                yield one(queue.pop())

        byNode: dict[int, list[_Member]] = {}
        for member in members:
            byNode.setdefault(member.nodes[-1], []).append(member)
        lanes = [lane(queue) for queue in byNode.values() for _ in range(CONNECTING_AT_ONCE)]
        yield gatherResults(lanes)
        self.assertEqual(failures, [], f"{len(failures)} of {len(members)} clients got no EOSE")

    def seeLogs(self) -> str:
        """
        @return: where the daemons' output is written after the test.
        """
        return f"the daemons' output is in {self.logs.resolve()}"

    def publish(
        self, relays: list[FakeRelay], published: dict[int, list[Event]], perTopic: int
    ) -> None:
        """
        Store C{perTopic} new events of each topic on both relays (as real
        relays would both carry them), and one event of no topic.
        """
        batch = []
        for topic in range(TOPICS):
            for _ in range(perTopic):
                event = makeEvent(kind=1, content=f"topic {topic}", tags=[["t", f"topic{topic}"]])
                published[topic].append(event)
                batch.append(event)
        batch.append(makeEvent(kind=1, content="no topic", tags=[["t", "elsewhere"]]))
        for relay in relays:
            relay.store(*batch)

    @inlineCallbacks
    def test_killedNodeHandsOver(self) -> Any:
        """
        300 clients on three nodes with ten filter sets make ten REQs on
        each relay, one per filter set, from the node whose first client
        asked first; each client gets each event of its filter set once.
        When a node is killed while events flow, the surviving nodes take
        its leases and subscribe upstream from the newest event they had:
        their clients get every event exactly once, the killed node's
        clients get every event over their old and new connections (and
        none twice on one), and each relay ends with one subscription per
        filter set.
        """
        started = reactor.seconds()
        relays, nodes = yield self.startCluster()
        _log.info("cluster started in {s:.1f} s", s=reactor.seconds() - started)

        # The first client of topic t is on node t % 3, alone, so that node
        # holds the filter set's lease: n1 4, n2 and n3 3 each.
        members = [
            _Member(topic, [node])
            for node in range(NODES)
            for topic in range(TOPICS)
            for _ in range(CLIENTS_PER_NODE_AND_TOPIC)
        ]
        first = [
            next(m for m in members if m.topic == t and m.nodes[0] == t % NODES)
            for t in range(TOPICS)
        ]
        yield self.connect(first, nodes)
        phase = reactor.seconds()
        yield self.connect([m for m in members if m not in first], nodes)
        _log.info("{n} clients past EOSE in {s:.1f} s", n=len(members), s=reactor.seconds() - phase)
        owners = {"n1": 4, "n2": 3, "n3": 3}
        for node in nodes:
            cluster = yield node.waitForCluster(lambda c: c["leaseOwners"] == owners)
            self.assertEqual(
                (cluster["filterSets"], cluster["leasesHeld"], cluster["following"]),
                (TOPICS, owners[node.nodeId], TOPICS - owners[node.nodeId]),
            )
        topics = sorted(f"#t:topic{t}" for t in range(TOPICS))
        for relay in relays:
            self.assertEqual(sorted(_topicOf(req) for req in _reqs(relay)), topics)

        # Each client gets the events of its filter set, once each.
        published: dict[int, list[Event]] = {topic: [] for topic in range(TOPICS)}
        self.publish(relays, published, 5)

        def expected(member: _Member) -> set[str]:
            return {event.id for event in published[member.topic]}

        def missing(candidates: list[_Member]) -> Callable[[], str]:
            def describe() -> str:
                # Clients short of events, by topic and nodes, with the
                # positions (in publishing order) of the events they lack.
                short: dict[tuple[int, str], list[_Member]] = {}
                for m in candidates:
                    if m.allIds() != expected(m):
                        nodeIds = "+".join(f"n{n + 1}" for n in m.nodes)
                        short.setdefault((m.topic, nodeIds), []).append(m)
                lines = []
                for (topic, nodeIds), group in sorted(short.items()):
                    order = [event.id for event in published[topic]]
                    lacking = sorted(
                        {order.index(i) for m in group for i in expected(m) - m.allIds()}
                    )
                    others = {i for m in group for i in m.allIds() - expected(m)}
                    lines.append(
                        f"topic {topic} on {nodeIds}: {len(group)} clients lack events"
                        f" #{lacking} of {len(order)}, {len(others)} unexpected"
                    )
                return "; ".join(lines) + f" ({self.seeLogs()})"

            return describe

        yield _waitUntil(lambda: all(m.allIds() == expected(m) for m in members), missing(members))
        self.assertEqual(_duplicates(members, 0), [], self.seeLogs())
        for relay in relays:
            self.assertEqual(len(_reqs(relay)), TOPICS)

        # Events flow, one per topic every PUBLISH_INTERVAL; once n3 passed
        # some on for each filter set it holds, it is killed, and events go
        # on for three lease times. Its clients reconnect to n1 and n2.
        killed = nodes[2]
        survivors = nodes[:2]
        moved = [m for m in members if m.nodes[0] == 2]
        staying = [m for m in members if m.nodes[0] != 2]
        streaming = LoopingCall(self.publish, relays, published, 1)
        streaming.clock = reactor
        streaming.start(PUBLISH_INTERVAL)
        self.addCleanup(lambda: streaming.stop() if streaming.running else None)
        firstStreamed = {topic: published[topic][-1].id for topic in (2, 5, 8)}
        watchers = [
            next(m for m in staying if m.topic == topic and m.nodes[0] == 0)
            for topic in firstStreamed
        ]
        yield _waitUntil(
            lambda: all(firstStreamed[m.topic] in m.allIds() for m in watchers),
            lambda: "n3 passed on no streamed event",
        )
        killed.process.signalProcess("KILL")
        killedAt = reactor.seconds()
        yield _waitUntil(
            lambda: all(m.connections[0].isClosed for m in moved),
            lambda: f"{sum(not m.connections[0].isClosed for m in moved)} still open",
        )
        for index, member in enumerate(moved):
            member.nodes.append(index % 2)
        yield self.connect(moved, nodes)
        _log.info(
            "moved clients past EOSE {s:.1f} s after the kill", s=reactor.seconds() - killedAt
        )
        yield deferLater(
            reactor, max(0.0, killedAt + 3 * LEASE_TIME - reactor.seconds()), lambda: None
        )
        streaming.stop()
        yield killed.daemon.ended
        _log.info("{n} events published per topic", n=len(published[0]))

        yield _waitUntil(lambda: all(m.allIds() == expected(m) for m in staying), missing(staying))
        yield _waitUntil(lambda: all(m.allIds() == expected(m) for m in moved), missing(moved))
        _log.info("every event delivered {s:.1f} s after the kill", s=reactor.seconds() - killedAt)
        self.assertEqual(_duplicates(staying, 0) + _duplicates(moved, 0, 1), [], self.seeLogs())

        # One live subscription per filter set on each relay again: the
        # killed node's went with its connections, and n1 and n2 took its
        # three leases, each subscribing from the newest event it had. (A
        # node whose reactor stalls for a lease time may lose a lease to
        # the other one, which then subscribes too; the REQs by id of a
        # handover's sync are not counted.)
        for relay in relays:
            yield _waitUntil(
                lambda r=relay: r.subscriptionCount() == TOPICS,
                lambda r=relay: f"{r.url}: {r.subscriptionCount()} subscriptions",
            )
            again = _filterSetReqs(relay)[TOPICS:]
            self.assertLessEqual(
                {f"#t:topic{t}" for t in (2, 5, 8)}, {_topicOf(req) for req in again}, again
            )
            self.assertTrue(all(f.since is not None for req in again for f in req.filters), again)
        for node in survivors:
            cluster = yield node.waitForCluster(
                lambda c: (
                    set(c["leaseOwners"]) <= {"n1", "n2"}
                    and c["cluster"]["nodes"] == 2
                    and c["cluster"]["leasesHeld"] == TOPICS
                )
            )
            self.assertEqual(sum(cluster["leaseOwners"].values()), TOPICS)
