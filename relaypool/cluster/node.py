"""
A cluster node: the part of a relaypool daemon that makes several daemons
on one Redis server act as one.

The gateway's shared subscriptions ask the node instead of the relay pool
for their upstream subscriptions (L{ClusterNode.subscribe}) and for the
stored events of a filter set a client joins (L{ClusterNode.query}). For
each filter set, one node of the cluster holds a lease
(L{relaypool.cluster.leases}) and subscribes upstream; it adds each event
to the filter set's Redis stream (capped at C{historySize} entries), which
the other nodes that want the filter set read (L{ClusterSubscription}).
So the upstream relays get one subscription per filter set, whatever the
number of nodes, and each node frames each event once for its clients.

Redis keys, under C{<prefix>:} (default C{relaypool:}):

    - C{lease:<name>}: the node id holding a filter set's lease;
    - C{events:<name>}: the filter set's stream (field C{e} the event's
      JSON, C{n} the node that added it), expiring C{streamTime} after its
      lease was last renewed;
    - C{nodes}: the set of node ids, C{node:<id>} each node's status
      (JSON), expiring after three renewal rounds without one.

A filter set's name is the first 32 hex characters of the SHA-256 of its
canonical form (L{relaypool.nostr.filter.filtersKey}).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaypool.cluster.leases import Leases
from relaypool.cluster.link import RedisAddress, RedisLink
from relaypool.cluster.shared import ClusterSubscription
from relaypool.errors import InvalidEvent, RedisUnavailable
from relaypool.interfaces import IClusterNode, IEventStore
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter, filtersKey, limitEvents

_log = Logger()

DEFAULT_LEASE_TIME = 5.0
DEFAULT_HISTORY_SIZE = 500
DEFAULT_READ_BLOCK = 0.1
READ_COUNT = 1000


def generatedNodeId() -> str:
    """
    @return: a node id for a node given none: host name, process id and 24
        random bits, unique across restarts.
    """
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def filterSetName(filters: Sequence[Filter]) -> str:
    """
    @return: the name of a filter set in Redis keys.
    """
    return hashlib.sha256(filtersKey(filters)).hexdigest()[:32]


@implementer(IClusterNode)
class ClusterNode(service.Service):
    """
    One node of a cluster (see the module docstring).

    @ivar nodeId: this node's id.
    @ivar link: the L{RedisLink}.
    @ivar leases: the L{Leases} of the filter sets this node's clients want.
    @ivar eventsPublished: events this node added to streams.
    @ivar eventsReceived: events this node read from streams (once each).
    """

    def __init__(
        self,
        address: RedisAddress,
        pool: Any,
        store: IEventStore | None,
        reactor: Any,
        nodeId: str | None = None,
        leaseTime: float = DEFAULT_LEASE_TIME,
        historySize: int = DEFAULT_HISTORY_SIZE,
        readBlock: float = DEFAULT_READ_BLOCK,
        commandTimeout: float = 2.0,
        prefix: str = "relaypool",
        onUnreachable: Callable[[str], object] | None = None,
        handoverLookback: float | None = 3600.0,
    ) -> None:
        """
        @param pool: the L{relaypool.upstream.relaypool.RelayPool} whose
            relays the owned filter sets are subscribed on.
        @param store: the node's own store: the events read from streams
            are saved to it too, as the pool saves what relays send.
        @param reactor: an L{IReactorTCP} and L{IReactorTime}.
        @param leaseTime: seconds a lease lasts without renewal: the
            longest a filter set has no owner after its owner died. Leases
            are renewed every third of it.
        @param historySize: entries kept in each filter set's stream: the
            most stored events a follower's clients get from it.
        @param readBlock: seconds a stream read waits for new entries
            before it starts again with the streams followed meanwhile.
        @param commandTimeout: seconds a Redis command may take before the
            node counts Redis as lost.
        @param onUnreachable: called with the reason (one line) if Redis
            cannot be reached when the node starts; if L{None}, the reason
            is logged and the node serves its clients on its own until
            Redis is reachable.
        @param handoverLookback: when this node starts to subscribe upstream
            for a filter set whose events it had from another node, it
            syncs (NIP-77, down) the filter set with the relays from this
            many seconds before the newest event it had, for events that
            came late; L{None}: no sync (the resubscription from the newest
            event alone).
        """
        self.nodeId = nodeId or generatedNodeId()
        self._pool = pool
        self._store = store
        self._reactor = reactor
        self.leaseTime = leaseTime
        self.historySize = historySize
        self.readBlock = readBlock
        self._prefix = prefix
        self.link = RedisLink(
            address, reactor, commandTimeout, min(1.0, leaseTime / 3), self._linkChanged
        )
        self.leases = Leases(
            self.link,
            self.nodeId,
            leaseTime,
            max(60.0, 10 * leaseTime),
            reactor,
            lambda name: f"{prefix}:lease:{name}",
            self._streamKey,
            self._leaseChanged,
        )
        self._subscriptions: dict[str, ClusterSubscription] = {}
        # The streams followed, by name, with the last entry id read.
        self._following: dict[str, str] = {}
        # The streams this node added to since it took their lease, whose
        # expiry it set.
        self._expiring: set[str] = set()
        # The events of leases whose renewal is late, by name.
        self._waitingForRenewal: dict[str, deque[Event]] = {}
        self._wakeReader: Deferred[None] | None = None
        self._wakeCall: Any = None
        self._onUnreachable = onUnreachable
        self.handoverLookback = handoverLookback
        self._rounds = LoopingCall(self._round)
        self._rounds.clock = reactor
        self.eventsPublished = 0
        self.eventsReceived = 0
        # This process's mark in its status document, to tell another
        # process with the same node id.
        self._instance = os.urandom(8).hex()
        self._wroteStatus = False
        self._warnedSameId = False
        self.nodes: dict[str, dict[str, Any]] = {}

    # --- the service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.link.firstAttempt.addErrback(self._unreachable)
        self.link.start()
        self._rounds.start(self.leaseTime / 3, now=False)
        self._read()

    def _unreachable(self, failure: Failure) -> None:
        reason = failure.getErrorMessage()
        if self._onUnreachable is not None:
            self._onUnreachable(reason)
        else:
            _log.warn(
                "relaypool: cluster: {reason}; serving this node's clients on its own until"
                " it is reachable",
                reason=reason,
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._rounds.running:
            self._rounds.stop()
        self._poke()
        releases = [self.leases.drop(name) for name in list(self._subscriptions)]
        if self.link.up:
            releases.append(self.link.command("SREM", self._key("nodes"), self.nodeId))
            releases.append(self.link.command("DEL", self._key("node:" + self.nodeId)))
        done = DeferredList(releases, consumeErrors=True)
        return done.addCallback(lambda _: self.link.stop())

    # --- what the gateway uses -------------------------------------------------------

    def subscribe(self, filters: Sequence[Filter]) -> ClusterSubscription:
        """
        The shared upstream subscription of C{filters} on this node: at most
        one per filter set at a time.
        """
        filters = tuple(filters)
        name = filterSetName(filters)
        if name in self._subscriptions:
            raise ValueError(f"filter set {name} is subscribed on this node already")
        subscription = ClusterSubscription(self, name, filters, 2 * self.historySize + 1024)
        self._subscriptions[name] = subscription
        # Without Redis, asking fails at once; the next round asks again.
        self.leases.want(name).addErrback(lambda _: None)
        if not self.link.up:
            subscription.goAlone()
        return subscription

    def query(self, filters: Sequence[Filter]) -> Deferred[list[Event]]:
        """
        The stored events of C{filters} a joining client gets: the filter
        set's stream, or without Redis the relays' answer (as a single node).
        """
        filters = tuple(filters)
        name = filterSetName(filters)
        subscription = self._subscriptions.get(name)
        state = None if subscription is None else subscription.state
        # The stream's entries up to those this node delivered: the owner
        # delivered every entry it added, a follower those up to its read
        # position; before its first stored part no client is live yet
        # (each one catching up drops what it got already). Otherwise (a
        # follower between an upstream subscription and its first read),
        # or without Redis, the relays answer, as on a single node.
        if not self.link.up or subscription is None or state not in ("owner", "deciding", "follower"):
            return self._relaysAnswer(filters)
        newest = "+"
        if state == "follower" and name in self._following:
            newest = self._following[name]
        elif state == "follower" and subscription.eosed:
            return self._relaysAnswer(filters)
        d = self._history(name, newest)
        return d.addCallbacks(
            lambda stored: limitEvents(filters, stored[0]),
            lambda failure: self._relaysAnswer(filters),
        )

    def status(self) -> dict[str, Any]:
        """
        @return: this node and the cluster as this node sees them, for
            C{/stats} and the status page.
        """
        held = self.leases.held()
        owners: dict[str, int] = {}
        for name in self._subscriptions:
            holder = self.leases.holders.get(name)
            if holder is not None:
                owners[holder] = owners.get(holder, 0) + 1
        nodes = dict(self.nodes)
        nodes[self.nodeId] = self._ownStatus()
        return {
            "node": self.nodeId,
            "redis": str(self.link.address),
            "redisUp": self.link.up,
            "nodes": nodes,
            "filterSets": len(self._subscriptions),
            "leasesHeld": len(held),
            "leaseOwners": owners,
            "following": len(self._following),
            "eventsPublished": self.eventsPublished,
            "eventsReceived": self.eventsReceived,
            "redisCommands": self.link.commandsSent,
            "cluster": {
                "nodes": len(nodes),
                "leasesHeld": sum(n.get("leasesHeld", 0) for n in nodes.values()),
                "eventsPublished": sum(n.get("eventsPublished", 0) for n in nodes.values()),
                "eventsReceived": sum(n.get("eventsReceived", 0) for n in nodes.values()),
            },
        }

    # --- what the subscriptions use ------------------------------------------------------

    def _subscribeUpstream(self, filters: tuple[Filter, ...]) -> Any:
        return self._pool.subscribe(filters)

    def _backfill(self, filters: tuple[Filter, ...], newest: int) -> None:
        if self.handoverLookback is None or self._store is None:
            return
        since = max(0, int(newest - self.handoverLookback))
        window = [f.withLimit(None).withSince(max(f.since or 0, since)) for f in filters]
        maybeDeferred(self._pool.sync, window, direction="down").addErrback(
            lambda f: _log.failure("relaypool: cluster: the handover sync failed", f)
        )

    def _publish(self, name: str, event: Event) -> None:
        if not self.leases.owns(name):
            # The renewal is late: no two owners. The events wait for its
            # answer (at most historySize of them): added if this node
            # still holds the lease, dropped if not (the new owner
            # resubscribes from the newest event it had).
            if self.leases.lapsed(name):
                waiting = self._waitingForRenewal.setdefault(name, deque(maxlen=self.historySize))
                waiting.append(event)
            return
        self._add(name, event)

    def _add(self, name: str, event: Event) -> None:
        self.eventsPublished += 1
        self.link.command(
            "XADD",
            self._streamKey(name),
            "MAXLEN",
            "~",
            self.historySize,
            "*",
            "e",
            event.toJSON(),
            "n",
            self.nodeId,
        ).addErrback(_unexpected, "adding an event to its stream")
        if name not in self._expiring:
            # A stream made by this XADD has no expiry until the next
            # renewal round: give it one now, in case there is none.
            self._expiring.add(name)
            self.link.command(
                "PEXPIRE", self._streamKey(name), int(self.leases.streamTime * 1000)
            ).addErrback(lambda _: None)

    def _relaysAnswer(self, filters: tuple[Filter, ...]) -> Deferred[list[Event]]:
        result: Deferred[list[Event]] = self._pool.query(filters)
        return result

    def _history(self, name: str, newest: str = "+") -> Deferred[tuple[list[Event], str]]:
        """
        @param newest: the id of the newest entry to read, or C{+}.
        @return: a Deferred firing with the events in a filter set's stream,
            newest first, and the id of its newest entry (C{0-0} if none).
        """
        d = self.link.command(
            "XREVRANGE", self._streamKey(name), newest, "-", "COUNT", self.historySize
        )

        def read(entries: list[Any] | None) -> tuple[list[Event], str]:
            entries = entries or []
            events = [event for event in (self._parse(entry) for entry in entries) if event]
            return events, entries[0][0] if entries else "0-0"

        return d.addCallback(read)

    def _follow(self, subscription: ClusterSubscription, lastId: str) -> None:
        if self._subscriptions.get(subscription.name) is subscription:
            self._following[subscription.name] = lastId
            self._poke()

    def _unfollow(self, subscription: ClusterSubscription) -> None:
        self._following.pop(subscription.name, None)

    def _forget(self, subscription: ClusterSubscription) -> None:
        if self._subscriptions.get(subscription.name) is subscription:
            del self._subscriptions[subscription.name]
            self._following.pop(subscription.name, None)
            self.leases.drop(subscription.name).addErrback(lambda _: None)

    # --- leases and Redis state ---------------------------------------------------------

    def _leaseChanged(self, name: str, owned: bool) -> None:
        self._expiring.discard(name)
        waiting = self._waitingForRenewal.pop(name, ())
        if owned:
            for event in waiting:
                self._add(name, event)
        subscription = self._subscriptions.get(name)
        if subscription is None:
            return
        if owned:
            subscription.becomeOwner()
        elif self.link.up:
            subscription.becomeFollower()

    def _linkChanged(self, up: bool) -> None:
        self._wroteStatus = False
        if up:
            self._round()
            self._poke()
        else:
            self.leases.lapse()
            for subscription in list(self._subscriptions.values()):
                subscription.goAlone()

    def _round(self) -> Deferred[None] | None:
        """
        One renewal round: the leases, then this node's status.
        """
        if not self.link.up:
            return None
        self.leases.renew().addErrback(_unexpected, "renewing the leases")
        return self._heartbeat().addErrback(_unexpected, "writing this node's status")

    @inlineCallbacks
    def _heartbeat(self) -> Any:
        own = orjson.dumps(self._ownStatus())
        ttl = int(self.leaseTime * 1000)  # three rounds
        before = yield self.link.command(
            "SET", self._key("node:" + self.nodeId), own, "PX", ttl, "GET"
        )
        self._checkUnique(before)
        yield self.link.command("SADD", self._key("nodes"), self.nodeId)
        ids = sorted((yield self.link.command("SMEMBERS", self._key("nodes"))) or [])
        documents = (
            (yield self.link.command("MGET", *[self._key("node:" + i) for i in ids])) if ids else []
        )
        nodes = {}
        for nodeId, document in zip(ids, documents, strict=True):
            if document is None:
                yield self.link.command("SREM", self._key("nodes"), nodeId)
            elif nodeId != self.nodeId:
                nodes[nodeId] = orjson.loads(document)
        self.nodes = nodes

    def _checkUnique(self, before: str | None) -> None:
        """
        Warn (once) when another running node has this node's id: the
        status document this node wrote at its last round was replaced by
        one of another process since. Two such nodes would both act as the
        owner of the same leases.
        """
        wroteLastRound, self._wroteStatus = self._wroteStatus, True
        if before is None or not wroteLastRound or self._warnedSameId:
            return
        if orjson.loads(before).get("instance") != self._instance:
            self._warnedSameId = True
            _log.error(
                "relaypool: cluster: another running node has the id {nodeId}: give each node"
                " its own --node-id (both would act as the owner of the same filter sets)",
                nodeId=self.nodeId,
            )

    def _ownStatus(self) -> dict[str, Any]:
        return {
            "instance": self._instance,
            "leasesHeld": len(self.leases.held()),
            "following": len(self._following),
            "eventsPublished": self.eventsPublished,
            "eventsReceived": self.eventsReceived,
        }

    # --- reading the streams followed ------------------------------------------------------

    def _poke(self) -> None:
        """
        Wake the reader: a stream is followed, Redis is back, or the node
        stops.
        """
        wake, self._wakeReader = self._wakeReader, None
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None
        if wake is not None:
            wake.callback(None)

    def _sleep(self, seconds: float | None = None) -> Deferred[None]:
        """
        @return: a Deferred firing when the reader is woken, or after
            C{seconds}.
        """
        self._wakeReader = Deferred()
        if seconds is not None:
            self._wakeCall = self._reactor.callLater(seconds, self._poke)
        return self._wakeReader

    @inlineCallbacks
    def _read(self) -> Any:
        """
        Read every followed stream, for as long as the node runs: one
        C{XREAD} for all of them, blocking at most C{readBlock} so that
        streams followed meanwhile join the next one.
        """
        while self.running:
            if not self._following or not self.link.up:
                yield self._sleep()
                continue
            names = list(self._following)
            keys = [self._streamKey(name) for name in names]
            ids = [self._following[name] for name in names]
            try:
                answer = yield self.link.read(
                    self.readBlock,
                    "XREAD",
                    "COUNT",
                    READ_COUNT,
                    "BLOCK",
                    max(1, int(self.readBlock * 1000)),
                    "STREAMS",
                    *keys,
                    *ids,
                )
            except RedisUnavailable:
                yield self.link.whenReadable().addErrback(lambda _: None)
                yield self._sleep(self.link.retryDelay)
                continue
            except Exception:
                # Redis refused the read (a key of another type, ...): say
                # so and try again, rather than stop reading for good.
                _unexpected(Failure(), "reading the streams")  # type: ignore[no-untyped-call]
                yield self._sleep(self.link.retryDelay)
                continue
            self._received(names, answer or [])

    def _received(self, names: list[str], answer: list[Any]) -> None:
        byKey = {self._streamKey(name): name for name in names}
        fresh: list[Event] = []
        for key, entries in answer:
            name = byKey.get(key)
            if name is None or name not in self._following:
                continue
            self._following[name] = entries[-1][0]
            subscription = self._subscriptions[name]
            for entry in entries:
                event = self._parse(entry)
                if event is not None and subscription.fromStream(
                    event, _field(entry[1], "n") or "?"
                ):
                    self.eventsReceived += 1
                    fresh.append(event)
        if fresh and self._store is not None:
            self._store.saveMany(fresh).addErrback(  # type: ignore[no-untyped-call]
                lambda f: _log.failure("saving events from the cluster failed", f)
            )

    def _parse(self, entry: list[Any]) -> Event | None:
        raw = _field(entry[1], "e")
        if raw is None:
            return None
        try:
            return Event.fromJSON(raw)
        except InvalidEvent as e:
            _log.warn("relaypool: cluster: a stream entry is not an event: {e}", e=str(e))
            return None

    def _key(self, suffix: str) -> str:
        return f"{self._prefix}:{suffix}"

    def _streamKey(self, name: str) -> str:
        return f"{self._prefix}:events:{name}"


def _unexpected(failure: Failure, doing: str) -> None:
    """
    Log a failure other than Redis being away (which the link logs once).
    """
    if not failure.check(RedisUnavailable):  # type: ignore[no-untyped-call]
        _log.failure("relaypool: cluster: {doing} failed", failure, doing=doing)


def _field(fields: list[Any], name: str) -> Any:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


__all__ = ["ClusterNode", "filterSetName", "generatedNodeId"]
