"""
RelayPool: many upstream Nostr relays behind one API.

Inbound events are checked against a bounded cache of verified ids, verified
(id recomputed, Schnorr signature) when new, on a worker thread while the
reactor thread goes on reading, and delivered once per subscription in the
order they arrived; EOSE is merged across relays with a timeout so a dead or slow
relay never stalls it; publishes wait for a quorum of relays that have the
event (C{OK true}, or a C{duplicate:} answer) and report every relay's
answer, also later ones, to an answer hook; subscriptions follow their
relays through reconnects with C{since} set to the newest event seen, and
(with C{syncAfterOutage}) are reconciled by NIP-77 over the time a relay
was away, for the events C{since} misses. Every
queue is bounded: the inbound queues (raw traffic, events waiting for
verification) pause reading from the relays when full, outbound queues
refuse and count.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import count as counter
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from relaypool._reactor import ClientReactor, defaultReactor
from relaypool.errors import (
    InvalidEvent,
    InvalidRelayURL,
    PoolClosed,
    RelayRefused,
    TooManyRelays,
    UnknownRelay,
)
from relaypool.interfaces import IEventStore, INameService, IRelayPool
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter, limitEvents, matchesAny
from relaypool.nostr.messages import (
    RelayClosed,
    RelayCount,
    RelayEOSE,
    RelayEvent,
    RelayMessage,
    RelayNotice,
    RelayOK,
)
from relaypool.nostr.nip65 import RELAY_LIST_KIND
from relaypool.nostr.url import parseRelayURL
from relaypool.transport.health import HealthPolicy
from relaypool.transport.mux import Backoff
from relaypool.upstream.admission import AdmitPolicy, refusal
from relaypool.upstream.counting import CountQuorum
from relaypool.upstream.information import fetchRelayInformation
from relaypool.upstream.publishing import NO_ANSWER, POOL_STOPPED, AnswerHook, PublishQuorum
from relaypool.upstream.raw import PoolSender, RawChannel
from relaypool.upstream.relay import Relay
from relaypool.upstream.results import (
    CountResult,
    PoolMessage,
    PoolTotals,
    PublishResult,
    RelayStats,
    SyncResult,
)
from relaypool.upstream.roles import ROLE_NAMES, RelayRoles
from relaypool.upstream.routing import ROUTING, OutboxRouter, isRoutable
from relaypool.upstream.subscription import Subscription
from relaypool.upstream.syncing import DIRECTIONS, RelaySync, SyncSettings
from relaypool.upstream.verifying import ThreadsReactor, Verifier

__all__ = [
    "CountResult",
    "PoolMessage",
    "PoolSender",
    "PoolTotals",
    "PublishResult",
    "RelayPool",
    "RelayStats",
    "Subscription",
    "SyncResult",
    "SyncSettings",
    "AnswerHook",
    "NO_ANSWER",
]

log = Logger()


@dataclass(slots=True)
class _Seen:
    createdAt: int
    delivered: set[str] = field(default_factory=set)


_UNCHECKED, _VERIFYING, _VALID, _INVALID = range(4)

_SETTLE_BYTES = 65536
"""
About how many bytes of events the inbound path delivers in one reactor
turn when verified events come back from the thread in bulk (the content
and a guess at the rest of each event): the rest waits for the next turn,
so that consumers (a gateway's clients, which read at most this much per
turn too) get them at about the pace a relay connection's reads brought
them, not in one burst.
"""

_EVENT_OVERHEAD = 400
"""
The guess, in bytes, at an event's size besides its content.
"""


@dataclass(slots=True, eq=False)
class _Arrival:
    """
    An event waiting for its turn on the inbound path: for its verification
    (C{state} L{_VERIFYING}) or for those that arrived before it.

    @ivar state: L{_UNCHECKED} (not verified by itself: a copy of it is
        being verified ahead of it, or was already), L{_VERIFYING}, L{_VALID}
        or L{_INVALID} (with C{error}).
    @ivar joined: while it is being verified, the unparsed copies of it
        other relays sent for the same subscription, as C{(relay, wireId,
        raw)}: dropped as duplicates if it is valid, checked in turn if not.
    """

    relay: Relay
    wireId: str
    subscriptionId: str
    event: Event
    state: int = _UNCHECKED
    error: str = ""
    joined: list[tuple[Relay, str, dict[str, Any]]] = field(default_factory=list)


class _SeenCache:
    """
    A bounded LRU of verified event ids, each with its C{created_at} and the
    subscriptions it was delivered to.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, _Seen] = OrderedDict()

    def get(self, eventId: str) -> _Seen | None:
        seen = self._entries.get(eventId)
        if seen is not None:
            self._entries.move_to_end(eventId)
        return seen

    def add(self, event: Event) -> _Seen:
        seen = _Seen(event.createdAt)
        self._entries[event.id] = seen
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return seen

    def __len__(self) -> int:
        return len(self._entries)


@implementer(IRelayPool)
class RelayPool(service.Service):
    """
    A pool of upstream Nostr relays, an C{IService}.

    A relay's health counts as errors its invalid events and protocol
    errors, and the C{OK false} answers that say it failed (C{error:}, or
    no known prefix; see L{relaypool.nostr.messages.isRelayFailure}). An
    answer by its rules is an answer in time, never an error: C{duplicate:},
    the final refusals (C{blocked:}, C{invalid:}, C{pow:}, C{restricted:},
    C{mute:}), C{rate-limited:} (the relay is backed off instead, see
    C{rateLimitBackoff}) and C{auth-required:} (after the one AUTH retry).

    @param reactor: a L{relaypool._reactor.ClientReactor} (time, TCP and
        name resolution); the global reactor if L{None}.
    @param ringCapacity: the bound of the inbound queue behind L{recv}, and of
        each subscription's L{Subscription.next} buffer.
    @param dedupSize: how many verified event ids the dedup cache remembers.
    @param broadcastCapacity: the bound of each relay's outbound queue.
    @param maxRelays: how many relays L{addRelay} accepts.
    @param verify: check each new event's id and signature.
    @param verifyThreads: how many worker threads verify events (a Twisted
        L{ThreadPool} the pool starts and stops with the service), so that
        the reactor thread goes on reading while another core checks
        signatures; events are still delivered in the order they arrived,
        and EOSE and CLOSED after the events before them. With 0, or on a
        reactor without C{IReactorFromThreads}, events are verified on the
        reactor thread.
    @param verifyQueueSize: how many inbound events may wait for their
        verification (or for those that arrived before them), copies that
        other relays sent meanwhile included; when it is reached, the pool
        pauses reading from every relay until half of it is done.
    @param deadAfter: the grace period of L{cleanup}: it removes a relay that
        is still trying (connecting or backing off) once it has had no open
        connection for this many seconds; a dead (stopped) relay goes at
        once.
    @param rateLimitBackoff: how long a relay is left alone after it answered
        C{rate-limited:} (the delay grows with repeated answers and resets
        after an accepted OK or an EOSE).
    @param onStateChange: called with a relay URL and a
        L{relaypool.transport.mux.SlotStatus} when a connection slot changes
        state.
    @param onLatency: called with a kind (C{"ok"}, C{"eose"} or
        C{"count"}), a relay URL and the seconds from the request to its
        answer, for each OK, EOSE (the first of each REQ) and COUNT answer
        from a relay: the latencies its health is computed from, for an
        observer such as the gateway's histograms.
    @param fetchInformation: fetch each relay's NIP-11 document and respect
        its C{limitation} (REQs wait for it, at most C{informationTimeout}).
    @param pendingRequestCapacity: per relay, how many REQs may wait for the
        relay's C{max_subscriptions} to allow them; past it a subscription is
        treated as closed by that relay.
    @param store: an L{IEventStore} that keeps every new verified event; it
        is what L{sync} reconciles with the relays.
    @param syncSettings: the bounds of L{sync} (records per filter, frame
        size, batch size).
    @param syncAfterOutage: when a relay that was connected comes back, sync
        (down) the filters of the live subscriptions it serves over the time
        it was away, from C{outageLookback} seconds before it went down, so
        that events it received late, with a C{created_at} older than what
        the resubscription's C{since} asks for, are not missed. Needs
        C{store}.
    @param outageLookback: how far before a relay went down the outage sync
        reaches, in seconds.
    @param admit: an admit policy (L{relaypool.upstream.admission}): called
        with each relay's normalized URL before the pool connects to it;
        a refused URL is not added (L{RelayRefused}).
    @param outboxModel: route by NIP-65 relay lists (see
        L{relaypool.upstream.routing}): a subscription's filters with
        C{authors} go, per author, to up to C{outboxRelaysPerAuthor} of the
        author's write relays (authors without a relay list go to the read
        relays), and a publish to every relay goes also to the author's
        write relays and the read relays of the first C{outboxMaxTagged}
        pubkeys it tags. Relay lists come from the store, then from the
        discovery relays (the read relays when none is one), waiting at most
        C{outboxLookupTimeout} seconds; the newest
        C{outboxRelayListCapacity} are remembered and followed. Relays that
        are not in the pool are added with the C{outbox} role, within
        C{maxRelays}, and removed once unused for C{outboxIdleTimeout}
        seconds.
    """

    def __init__(
        self,
        reactor: ClientReactor | None = None,
        ringCapacity: int = 4096,
        dedupSize: int = 10000,
        broadcastCapacity: int = 64,
        maxRelays: int = 20,
        verify: bool = True,
        verifyThreads: int = 1,
        verifyQueueSize: int = 1024,
        nameService: INameService | None = None,
        connectionsPerAddress: int = 1,
        backoff: Backoff = Backoff(),
        eoseTimeout: float = 10.0,
        publishTimeout: float = 10.0,
        signingKey: bytes | None = None,
        pingInterval: float = 30.0,
        maxMessageSize: int = 1 << 20,
        fetchInformation: bool = True,
        informationTimeout: float = 5.0,
        pendingRequestCapacity: int = 256,
        store: IEventStore | None = None,
        tlsOptions: Callable[[str], Any] | None = None,
        healthPolicy: HealthPolicy = HealthPolicy(),
        deadAfter: float = 300.0,
        rateLimitBackoff: Backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.0),
        onStateChange: Callable[[str, Any], None] | None = None,
        onLatency: Callable[[str, str, float], None] | None = None,
        syncSettings: SyncSettings = SyncSettings(),
        syncAfterOutage: bool = False,
        outageLookback: float = 3600.0,
        admit: AdmitPolicy | None = None,
        outboxModel: bool = False,
        outboxRelaysPerAuthor: int = 2,
        outboxIdleTimeout: float = 300.0,
        outboxLookupTimeout: float = 5.0,
        outboxRelayListCapacity: int = 10000,
        outboxMaxTagged: int = 20,
    ) -> None:
        reactor = defaultReactor(reactor)
        if admit is not None and not callable(admit):
            raise ValueError(f"admit must be a callable taking a relay URL, got {admit!r}")
        if syncAfterOutage and store is None:
            raise ValueError("syncAfterOutage needs a store: RelayPool(store=...)")
        for name, seconds in (("outboxIdleTimeout", outboxIdleTimeout), ("outboxLookupTimeout", outboxLookupTimeout)):
            if not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
        if not isinstance(outageLookback, int | float) or outageLookback < 0:
            raise ValueError(f"outageLookback must be a number of seconds >= 0, got {outageLookback!r}")
        for name, value in (
            ("ringCapacity", ringCapacity),
            ("dedupSize", dedupSize),
            ("broadcastCapacity", broadcastCapacity),
            ("maxRelays", maxRelays),
            ("verifyQueueSize", verifyQueueSize),
            ("outboxRelaysPerAuthor", outboxRelaysPerAuthor),
            ("outboxRelayListCapacity", outboxRelayListCapacity),
            ("outboxMaxTagged", outboxMaxTagged),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(verifyThreads, int) or verifyThreads < 0:
            raise ValueError(f"verifyThreads must be an integer >= 0, got {verifyThreads!r}")
        self.reactor = reactor
        self.ringCapacity = ringCapacity
        self.broadcastCapacity = broadcastCapacity
        self.maxRelays = maxRelays
        self.verify = verify
        self.eoseTimeout = eoseTimeout
        self.publishTimeout = publishTimeout
        self._connectionsPerAddress = connectionsPerAddress
        self._backoff = backoff
        self._signingKey = signingKey
        self._pingInterval = pingInterval
        self._maxMessageSize = maxMessageSize
        self._fetchInformation = fetchInformation
        self._informationTimeout = informationTimeout
        self._pendingRequestCapacity = pendingRequestCapacity
        self._store = store
        self._tlsOptions = tlsOptions
        self._healthPolicy = healthPolicy
        self._deadAfter = deadAfter
        self._rateLimitBackoff = rateLimitBackoff
        self._onStateChange = onStateChange
        self._onLatency = onLatency
        self._syncSettings = syncSettings
        self._syncAfterOutage = syncAfterOutage
        self._outageLookback = outageLookback
        self._wentDown: dict[str, float] = {}
        self._syncing: set[Deferred[Any]] = set()
        self._ownNameService = nameService is None
        if nameService is None:
            from relaypool.transport.names import DNSNameService

            nameService = DNSNameService(reactor)
        self._nameService = nameService
        self._admit = admit
        self._relays: dict[str, Relay] = {}
        self._roles: dict[str, RelayRoles] = {}
        self._seen = _SeenCache(dedupSize)
        self._subscriptions: dict[str, Subscription] = {}
        self._publishes: dict[str, PublishQuorum] = {}
        self._counts: dict[str, CountQuorum] = {}
        self._ids = counter(1)
        self._raw = RawChannel(ringCapacity, self._pressure)
        self._fullQueues = 0
        self._paused = False
        self._verifier = (
            Verifier(cast(ThreadsReactor, reactor), self._verified, verifyThreads)
            if verify and verifyThreads > 0 and IReactorFromThreads.providedBy(reactor)
            else None
        )
        self._verifyQueueSize = verifyQueueSize
        # The inbound path in arrival order: events, and the EOSE and CLOSED
        # steps behind them, waiting while an event ahead is being verified.
        self._arrivals: deque[_Arrival | Callable[[], None]] = deque()
        # New verified events settled but not handed to the store yet.
        self._unsaved: list[Event] = []
        self._verifying: dict[str, _Arrival] = {}
        self._waiting = 0
        self._waitingFull = False
        self._nextTurn: Any = None
        self._pingLoop: LoopingCall | None = None
        self._closed = False
        self._router = (
            OutboxRouter(
                self,
                reactor,
                store,
                relaysPerAuthor=outboxRelaysPerAuthor,
                idleTimeout=outboxIdleTimeout,
                lookupTimeout=outboxLookupTimeout,
                capacity=outboxRelayListCapacity,
                maxTagged=outboxMaxTagged,
            )
            if outboxModel
            else None
        )

    # --- service ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the name service (if the pool made its own), every relay, and
        the keepalive sweep.
        """
        super().startService()  # type: ignore[no-untyped-call]
        if self._ownNameService:
            self._nameService.startService()  # type: ignore[union-attr]
        if self._verifier is not None:
            self._verifier.start()
        for relay in self._relays.values():
            self._startRelay(relay)
        if self._pingInterval > 0:
            self._pingLoop = LoopingCall(self._sweepConnections)
            self._pingLoop.clock = self.reactor
            self._pingLoop.start(self._pingInterval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Close subscriptions, fail pending publishes and C{recv} calls with
        L{PoolClosed}, drop the events waiting for verification, and close
        every relay connection with a close handshake.

        @return: a Deferred firing when every connection is closed and the
            verification threads have ended.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._closed = True
        if self._router is not None:
            self._router.stop()
        if self._pingLoop is not None and self._pingLoop.running:
            self._pingLoop.stop()
        self._pingLoop = None
        for subscription in list(self._subscriptions.values()):
            subscription.close()
        for publish in list(self._publishes.values()):
            publish.finish(POOL_STOPPED)
        for counting in list(self._counts.values()):
            counting.finish(closing=True)
        self._raw.close()
        self._arrivals.clear()
        self._verifying.clear()
        self._waiting = 0
        if self._nextTurn is not None and self._nextTurn.active():
            self._nextTurn.cancel()
        self._nextTurn = None
        stopping: list[Deferred[Any]] = [relay.stop() for relay in self._relays.values()]
        if self._verifier is not None:
            stopping.append(self._verifier.stop())
        if self._ownNameService:
            stopping.append(maybeDeferred(self._nameService.stopService))  # type: ignore[union-attr]
        done: Deferred[None] = DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)
        return done

    # --- relays -------------------------------------------------------------

    def addRelay(self, url: str, read: bool = True, write: bool = True, discovery: bool = False) -> None:
        """
        Add the relay at C{url} (C{ws://} or C{wss://}) with its roles, and
        start connecting if the pool is running. Adding a known URL again
        does nothing (L{setRelayRoles} changes its roles), except that a
        relay the outbox model added becomes a configured one.

        @param read: subscriptions, queries and counts go to it.
        @param write: publishes go to it.
        @param discovery: the outbox model looks relay lists up on it.
        @raise relaypool.errors.InvalidRelayURL: for a malformed URL.
        @raise ValueError: if it would have no role.
        @raise RelayRefused: if the pool's admit policy refuses it.
        @raise TooManyRelays: if the pool already holds C{maxRelays} relays
            after L{cleanup}.
        """
        roles = RelayRoles(read=read, write=write, discovery=discovery)
        if not roles.configured():
            raise ValueError(f"{url}: a relay needs a role: read, write or discovery")
        relayURL = parseRelayURL(url)
        known = self._roles.get(relayURL.url)
        if known is None:
            self._addRelay(relayURL.url, roles)
        elif known.outbox:
            self.setRelayRoles(relayURL.url, read, write, discovery)

    def _addRelay(self, url: str, roles: RelayRoles) -> Relay:
        """
        Make and start the relay at the normalized C{url} with C{roles}.
        """
        relayURL = parseRelayURL(url)
        normalized = relayURL.url
        if self._admit is not None:
            why = refusal(self._admit, normalized)
            if why is not None:
                raise RelayRefused(f"{normalized}: refused by the pool's admit policy: {why}")
        if len(self._relays) >= self.maxRelays:
            self.cleanup()
        if len(self._relays) >= self.maxRelays:
            raise TooManyRelays(
                f"cannot add {normalized}: the pool already has {self.maxRelays} relays "
                f"(maxRelays); remove one first or raise the limit"
            )
        relay = Relay(
            self.reactor,
            normalized,
            self,
            self._nameService,
            connectionsPerAddress=self._connectionsPerAddress,
            backoff=self._backoff,
            tls=self._tlsOptions(relayURL.host) if self._tlsOptions is not None and relayURL.secure else None,
            maxMessageSize=self._maxMessageSize,
            outboundCapacity=self.broadcastCapacity,
            pendingRequestCapacity=self._pendingRequestCapacity,
            signingKey=self._signingKey,
            healthPolicy=self._healthPolicy,
            rateLimitBackoff=self._rateLimitBackoff,
            onStateChange=(
                (lambda slot: self._onStateChange(normalized, slot))  # type: ignore[misc]
                if self._onStateChange is not None
                else None
            ),
            onLatency=(
                (lambda kind, seconds: self._onLatency(kind, normalized, seconds))  # type: ignore[misc]
                if self._onLatency is not None
                else None
            ),
        )
        self._relays[normalized] = relay
        self._roles[normalized] = roles
        if roles.read:
            for subscription in self._subscriptions.values():
                if not subscription.relayURLs and subscription.routes is None:
                    relay.subscribe(subscription.subscriptionId, subscription.filters)
        if self.running:
            self._startRelay(relay)
        return relay

    def setRelayRoles(self, url: str, read: bool = True, write: bool = True, discovery: bool = False) -> None:
        """
        Change the roles of a relay in the pool (it becomes a configured
        relay if the outbox model added it). A relay that becomes a read
        relay gets the subscriptions made for every relay; one that stops
        being one closes them.

        @raise UnknownRelay: if it is not in the pool.
        @raise ValueError: if it would have no role.
        """
        roles = RelayRoles(read=read, write=write, discovery=discovery)
        if not roles.configured():
            raise ValueError(f"{url}: a relay needs a role: read, write or discovery")
        relay = self.relay(url)
        before = self._roles[relay.url]
        self._roles[relay.url] = roles
        if roles.read == before.read:
            return
        for subscription in list(self._subscriptions.values()):
            if subscription.relayURLs or subscription.routes is not None:
                continue
            if roles.read:
                relay.subscribe(subscription.subscriptionId, subscription.filters)
            else:
                relay.unsubscribe(subscription.subscriptionId)
                subscription._relayDone(relay.url)

    def hasRelay(self, url: str) -> bool:
        """
        @return: whether the relay at C{url} is in the pool.
        """
        try:
            return parseRelayURL(url).url in self._relays
        except InvalidRelayURL:
            return False

    def relayRoles(self, url: str) -> RelayRoles:
        """
        @return: the L{RelayRoles} of a relay in the pool.
        @raise UnknownRelay: if it is not in the pool.
        """
        return self._roles[self.relay(url).url]

    def _startRelay(self, relay: Relay) -> None:
        if self._fetchInformation:
            relay.holdForInformation()
            d = fetchRelayInformation(self.reactor, relay.url, timeout=self._informationTimeout)

            def applied(information: Any) -> None:
                relay.applyInformation(information)

            def unavailable(failure: Any) -> None:
                log.debug(
                    "{url}: no NIP-11 document ({why}); using no relay limits",
                    url=relay.url,
                    why=failure.getErrorMessage(),
                )
                relay.informationUnavailable()

            d.addCallbacks(applied, unavailable)
            relay.pendingInformation = d
        relay.start()

    def removeRelay(self, url: str) -> Deferred[bool]:
        """
        Remove a relay: its subscriptions stop waiting for it, its pending
        publishes count it as rejected, its connections close.

        @return: a Deferred firing with C{True} once its connections closed, or
            C{False} at once if the URL is not in the pool.
        """
        try:
            normalized = parseRelayURL(url).url
        except ValueError:
            return succeed(False)
        relay = self._relays.pop(normalized, None)
        if relay is None:
            return succeed(False)
        del self._roles[normalized]
        self._forgetRelay(normalized, "error: relaypool: relay removed from the pool")
        return relay.stop().addCallback(lambda _: True)

    def _forgetRelay(self, url: str, reason: str) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription._relayDone(url)
        quorums: list[PublishQuorum | CountQuorum] = [*self._publishes.values(), *self._counts.values()]
        for quorum in quorums:
            quorum.relayGone(url, reason)

    def cleanup(self) -> int:
        """
        Remove dead relays (seed 000's cleanup): at once those already dead,
        that is stopped (L{Relay.stop} was called on it, say through
        L{relay}): its connections are closed for good and it will never
        reconnect; and, after a grace period, those that are only backing
        off: no open connection for C{deadAfter} seconds (a relay that is
        connecting, backing off or has no address yet may still come back).
        L{addRelay} calls it when the pool is full.

        @return: how many were removed.
        """
        now = self.reactor.seconds()
        dead = [
            url
            for url, relay in self._relays.items()
            if relay.isStopped()
            or (relay.downSince is not None and now - relay.downSince >= self._deadAfter)
        ]
        for url in dead:
            self.removeRelay(url)
        return len(dead)

    def countRelays(self) -> int:
        """
        @return: how many relays the pool holds, connected or not.
        """
        return len(self._relays)

    def countActiveRelays(self) -> int:
        """
        @return: how many relays have an open connection.
        """
        return sum(1 for relay in self._relays.values() if relay.isConnected())

    # The names of seed 000's RelayPool, which counts relays as connections.
    connectionCount = countRelays
    activeConnectionCount = countActiveRelays

    def relayURLs(self, role: str | None = None) -> list[str]:
        """
        @param role: C{"read"}, C{"write"}, C{"discovery"} or C{"outbox"}
            for the relays with that role (see L{RelayRoles}).
        @return: the URLs of every relay in the pool, or of those with
            C{role}.
        """
        if role is None:
            return list(self._relays)
        if role not in ROLE_NAMES:
            raise ValueError(f"role must be one of {', '.join(ROLE_NAMES)}, got {role!r}")
        return [url for url, roles in self._roles.items() if getattr(roles, role)]

    def activeRelayURLs(self) -> list[str]:
        """
        @return: the URLs of the relays with an open connection.
        """
        return [url for url, relay in self._relays.items() if relay.isConnected()]

    def relay(self, url: str) -> Relay:
        """
        @return: the L{Relay} for C{url}.
        @raise UnknownRelay: if it is not in the pool.
        """
        try:
            return self._relays[parseRelayURL(url).url]
        except KeyError:
            raise UnknownRelay(f"{url} is not in the pool")

    # --- raw traffic --------------------------------------------------------

    def sender(self) -> PoolSender:
        """
        @return: a L{PoolSender} for raw client messages.
        """
        return PoolSender(self._broadcast, self._raw)

    def _broadcast(self, data: bytes) -> int:
        return sum(1 for relay in self._relays.values() if relay.send(data))

    def recv(self) -> Deferred[PoolMessage]:
        """
        @return: a Deferred firing with the next raw message: events (unique)
            and EOSE/CLOSED for subscriptions opened with a raw REQ through
            L{sender}, OKs for raw EVENTs, and NOTICEs.
        """
        return self._raw.recv()

    def tryRecv(self) -> PoolMessage | None:
        """
        @return: the next raw message, or L{None} if none is queued.
        """
        return self._raw.tryRecv()

    def _pressure(self, change: int) -> None:
        """
        A bounded consumer queue became full (+1) or drained (-1): pause
        reading from every relay while any is full.
        """
        self._fullQueues += change
        paused = self._fullQueues > 0
        if paused == self._paused:
            return
        self._paused = paused
        for relay in self._relays.values():
            if paused:
                relay.pauseReading()
            else:
                relay.resumeReading()

    # --- subscriptions ------------------------------------------------------

    def subscribe(
        self,
        filters: Sequence[Filter],
        eoseTimeout: float | None = None,
        closeOnEOSE: bool = False,
        relays: Sequence[str] | None = None,
    ) -> Subscription:
        """
        Subscribe to C{filters} on every read relay (or on C{relays}).

        Read relays added later get the subscription too when C{relays} is
        None.

        @raise UnknownRelay: if C{relays} names a relay not in the pool.
        @raise PoolClosed: if the pool stopped.
        """
        if self._closed:
            raise PoolClosed("the relay pool stopped")
        filters = tuple(filters)
        if not filters:
            raise ValueError("a subscription needs at least one filter")
        targets = self._targets(relays, "read")
        subscriptionId = f"rp{next(self._ids)}"
        subscription = Subscription(
            self,
            subscriptionId,
            filters,
            frozenset(targets) if relays is not None else frozenset(),
            closeOnEOSE,
            self.ringCapacity,
        )
        self._subscriptions[subscriptionId] = subscription
        timeout = self.eoseTimeout if eoseTimeout is None else eoseTimeout
        if self._router is not None and relays is None and isRoutable(filters):
            subscription.routes = {}
            subscription._startWaiting([ROUTING], timeout)
            self._router.route(subscription)
            return subscription
        for url in targets:
            self._relays[url].subscribe(subscriptionId, filters)
        subscription._startWaiting(self._answering(targets), timeout)
        return subscription

    def _answering(self, urls: Iterable[str]) -> list[str]:
        """
        @return: those of C{urls} an EOSE can be waited for from: connected
            or connecting.
        """
        return [url for url in urls if self._relays[url].state() in ("open", "connecting")]

    def _applyRoutes(self, subscription: Subscription, routes: dict[str, tuple[Filter, ...]]) -> None:
        """
        Give each relay its part of a routed subscription (the outbox
        model's choice): subscribe the relays whose part changed (its EOSE,
        if not reached, waits for them), then close it on those that have
        no part any more.
        """
        subscriptionId = subscription.subscriptionId
        before = subscription.routes or {}
        subscription.routes = routes = {url: part for url, part in routes.items() if url in self._relays}
        changed = [url for url, part in routes.items() if before.get(url) != part]
        for url in changed:
            self._relays[url].subscribe(subscriptionId, routes[url])
        subscription._waitAlso(url for url in changed if self._mayAnswer(self._relays[url]))
        for url in before.keys() - routes.keys():
            relay = self._relays.get(url)
            if relay is not None:
                relay.unsubscribe(subscriptionId)
            subscription._relayDone(url)

    @staticmethod
    def _mayAnswer(relay: Relay) -> bool:
        """
        @return: whether an EOSE may come from C{relay}: it is connected or
            connecting, or it was just added and has not tried yet (its
            name is being resolved).
        """
        state = relay.state()
        if state in ("open", "connecting"):
            return True
        return state == "closed" and not relay.isStopped() and relay.counters.opens == 0 and not relay.mux.slots()

    def _targets(self, relays: Sequence[str] | None, role: str) -> list[str]:
        """
        @return: the normalized URLs of C{relays}, or when L{None} of the
            relays with C{role}.
        @raise UnknownRelay: if C{relays} names a relay not in the pool.
        """
        if relays is None:
            return self.relayURLs(role)
        return [self.relay(url).url for url in relays]

    def _subscriptionClosed(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription.subscriptionId, None)
        if self._router is not None:
            self._router.forget(subscription)
        for relay in self._relays.values():
            relay.unsubscribe(subscription.subscriptionId)

    def query(self, filters: Sequence[Filter], timeout: float | None = None) -> Deferred[list[Event]]:
        """
        Fetch stored events from every read relay until EOSE (or C{timeout}).

        @return: a Deferred firing with the unique matching events, newest
            first (ties by lowest id), each filter's C{limit} applied to the
            union of what the relays sent.
        """
        filters = tuple(filters)
        collected: dict[str, Event] = {}
        subscription = self.subscribe(filters, eoseTimeout=timeout, closeOnEOSE=True)

        def collect(event: Event, relayURL: str) -> None:
            collected.setdefault(event.id, event)

        subscription.onEvent(collect)
        return subscription.whenEOSE().addCallback(lambda _: limitEvents(filters, collected.values()))

    def count(
        self, filters: Sequence[Filter], timeout: float | None = None, fetch: bool = True
    ) -> Deferred[CountResult]:
        """
        Ask every connected read relay for a NIP-45 COUNT.

        Relays that cannot count are left out at once: those whose NIP-11
        document lists their NIPs without 45, and those answering the COUNT
        with C{CLOSED} (or with a C{NOTICE}, when their document does not
        list 45). Only relays that stay silent are waited for, at most
        C{timeout} (default: the pool's C{eoseTimeout}).

        @param fetch: when no relay counted, fetch the events and count the
            unique ones (C{True}), or fail with L{CountUnavailable}
            (C{False}, for a caller with a better fallback, such as a store).
        @return: a Deferred firing with the L{CountResult}: the largest
            relay count, or the exact count of the fetched events.
        """
        filters = tuple(filters)
        if self._closed:
            return fail(PoolClosed("the relay pool stopped"))
        limit = self.eoseTimeout if timeout is None else timeout

        def fetchCount() -> Deferred[CountResult]:
            return self.query(filters, limit).addCallback(lambda events: CountResult(len(events), False, {}))

        counting = CountQuorum(
            self.reactor,
            f"rc{next(self._ids)}",
            limit,
            self._countFinished,
            fetchCount if fetch else None,
        )
        self._counts[counting.countId] = counting
        connected = [url for url in self.relayURLs("read") if self._relays[url].isConnected()]
        counting.ask(connected, lambda url: self._relays[url].count(counting.countId, filters))
        return counting.result

    def _countFinished(self, counting: CountQuorum) -> None:
        """
        C{counting} stopped waiting: forget it, and withdraw its COUNT from
        the relays that stayed silent.
        """
        del self._counts[counting.countId]
        for url in counting.outstanding:
            relay = self._relays.get(url)
            if relay is not None:
                relay.unsubscribe(counting.countId)

    # --- publish ------------------------------------------------------------

    def publish(
        self,
        event: Event,
        quorum: int = 1,
        timeout: float | None = None,
        relays: Sequence[str] | None = None,
        onAnswer: AnswerHook | None = None,
    ) -> Deferred[PublishResult]:
        """
        Send C{event} to every write relay (or to C{relays}) and collect their
        OKs.

        A relay that answers C{duplicate:}, with C{OK true} or C{OK false},
        has the event: it counts as accepting it. Only the C{OK false}
        answers that say the relay failed count against its health (see
        L{RelayPool}).

        The returned Deferred fires as soon as the outcome is known, but the
        publish goes on listening until every relay answered or C{timeout}
        passed: C{onAnswer} hears each relay's answer as it arrives, also
        after the Deferred fired. It is called exactly once for each relay
        of C{relays} (every write relay when L{None}): with the relay's answer,
        with C{"error: relaypool: ..."} when the event could not be sent to
        it or it left the pool, or with L{NO_ANSWER} at the timeout.

        Publishing an event again while an earlier publish of it still
        listens joins it: before the earlier one fired, the new caller shares
        its Deferred's result and quorum (relays of C{relays} it did not
        target yet are sent the event too); after it fired, the event is
        sent again to C{relays} in a new publish, which also takes over the
        earlier one's silent relays and answer hooks.

        @return: a Deferred firing with the L{PublishResult} as soon as
            C{quorum} relays accepted (naming every relay that accepted by
            then), or failing with L{PublishFailed} (carrying the result)
            once that became impossible or C{timeout} passed.
        """
        if self._closed:
            return fail(PoolClosed("the relay pool stopped"))
        if not isinstance(quorum, int) or quorum < 1:
            raise ValueError(f"quorum must be a positive integer, got {quorum!r}")
        if self._router is not None and event.kind == RELAY_LIST_KIND:
            self._router.relayListSeen(event)
        if self._router is not None and relays is None:
            return self.publishTargets(event).addCallback(
                lambda targets: self._publishTo(event, quorum, timeout, targets, onAnswer)
            )
        return self._publishTo(event, quorum, timeout, self._targets(relays, "write"), onAnswer)

    def publishTargets(self, event: Event) -> Deferred[list[str]]:
        """
        @return: a Deferred firing with the relays a publish of C{event} to
            every relay goes to: the write relays, and with the outbox model
            also the author's write relays and the read relays of the
            pubkeys it tags (added to the pool as C{outbox} relays where
            needed).
        """
        writeRelays = self.relayURLs("write")
        if self._router is None:
            return succeed(writeRelays)
        return self._router.publishTargets(event, writeRelays)

    def _publishTo(
        self,
        event: Event,
        quorum: int,
        timeout: float | None,
        targets: list[str],
        onAnswer: AnswerHook | None,
    ) -> Deferred[PublishResult]:
        if self._closed:
            return fail(PoolClosed("the relay pool stopped"))
        targets = [url for url in targets if url in self._relays]
        if self._router is not None:
            self._router.hold(event.id, targets)
        existing = self._publishes.get(event.id)
        if existing is not None and not existing.fired:
            waiter = existing.whenDecided()
            existing.listen(targets, onAnswer)
            existing.sendTo([url for url in targets if not existing.knows(url)], self._sendEvent(event))
            return waiter
        publish = PublishQuorum(
            self.reactor,
            event,
            quorum,
            self.publishTimeout if timeout is None else timeout,
            self._publishFinished,
        )
        waiter = publish.whenDecided()
        if existing is not None:
            # The earlier publish fired and only listens for stragglers:
            # take them over, without making the relays forget the event.
            publish.takeOver(existing)
        self._publishes[event.id] = publish
        publish.listen(targets, onAnswer)
        publish.sendTo(targets, self._sendEvent(event))
        return waiter

    def _sendEvent(self, event: Event) -> Callable[[str], bool]:
        """
        @return: a function sending C{event} to the relay at a URL, returning
            whether the relay could queue it.
        """
        return lambda url: self._relays[url].publish(event)

    def _publishFinished(self, publish: PublishQuorum) -> None:
        """
        C{publish} stopped listening: forget it, and make the relays that
        stayed silent forget the event.
        """
        if self._publishes.get(publish.event.id) is publish:
            del self._publishes[publish.event.id]
            if self._router is not None:
                self._router.release(publish.event.id)
        for url in publish.outstanding:
            relay = self._relays.get(url)
            if relay is not None:
                relay.forgetPublish(publish.event.id)

    # --- sync ---------------------------------------------------------------

    def sync(
        self,
        filters: Sequence[Filter],
        relays: Sequence[str] | None = None,
        direction: str = "down",
        timeout: float | None = None,
    ) -> Deferred[dict[str, SyncResult]]:
        """
        Reconcile the pool's store with each read or write relay (or each of
        C{relays})
        over C{filters}, by NIP-77 negentropy where the relay speaks it.

        The events the store lacks are fetched with C{REQ}s by id (C{down}):
        they are stored, and delivered to the live subscriptions they match
        like any new event. The events the relay lacks are sent to it with
        C{EVENT} (C{up}). A relay that does not speak NIP-77 (its NIP-11
        document, or its answer to C{NEG-OPEN}) is sent a C{REQ} over the
        filters instead; its result says so. Relays run at once, filters one
        after the other; a relay that is not connected is not waited for.

        @param direction: C{"down"}, C{"up"} or C{"both"}.
        @param timeout: seconds to wait for each answer of a relay (default:
            the pool's C{eoseTimeout}).
        @return: a Deferred firing with a L{SyncResult} per relay URL; it
            does not fail: what went wrong is in each result's C{errors}.
        @raise ValueError: for an unknown direction, no filter, or a pool
            without a store.
        @raise UnknownRelay: if C{relays} names a relay not in the pool.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        filters = tuple(filters)
        if not filters:
            raise ValueError("a sync needs at least one filter")
        if self._store is None:
            raise ValueError("sync needs the pool's store: RelayPool(store=...)")
        if self._closed:
            return fail(PoolClosed("the relay pool stopped"))
        wait = self.eoseTimeout if timeout is None else timeout
        runs = []
        targets = self._targets(relays, "read") if relays is not None else self._syncedRelays()
        for url in targets:
            relaySync = RelaySync(
                self,
                self._relays[url],
                self._store,
                f"neg{next(self._ids)}",
                direction,
                wait,
                self._syncSettings,
                self.reactor,
            )
            runs.append(Deferred.fromCoroutine(relaySync.run(filters)))
        done = DeferredList(runs, consumeErrors=True).addCallback(
            lambda outcomes: {result.relayURL: result for _, result in outcomes}
        )
        self._syncing.add(done)
        return done.addBoth(self._syncDone, done)

    def _syncedRelays(self) -> list[str]:
        """
        @return: the relays a sync over every relay reaches: the read and
            the write relays.
        """
        return [url for url, roles in self._roles.items() if roles.read or roles.write]

    def _syncDone(self, result: Any, done: Deferred[Any]) -> Any:
        self._syncing.discard(done)
        return result

    def _relayWentDown(self, relay: Relay) -> None:
        """
        Remember when a connected relay lost its last connection.
        """
        if relay.downSince is not None and relay.counters.opens > 0:
            self._wentDown.setdefault(relay.url, relay.downSince)

    def _relayCameBack(self, relay: Relay) -> None:
        """
        A relay that was away is connected again: sync the filters of the
        live subscriptions it serves over the time it was away.
        """
        downSince = self._wentDown.pop(relay.url, None)
        if downSince is None or not self._syncAfterOutage or self._closed:
            return
        since = int(downSince - self._outageLookback)
        filters: dict[Filter, None] = {}
        for subscription in self._subscriptions.values():
            if subscription.closed or subscription.closeOnEOSE:
                continue
            if subscription.relayURLs and relay.url not in subscription.relayURLs:
                continue
            routed = subscription.routes
            for f in subscription.filters if routed is None else routed.get(relay.url, ()):
                if f.ids is None:
                    filters[replace(f, since=max(f.since or 0, since), limit=None)] = None
        if not filters:
            return
        away = self.reactor.seconds() - downSince

        def report(results: dict[str, SyncResult]) -> None:
            result = results[relay.url]
            log.info(
                "{url}: back after {away:.0f} s; outage sync by {method}: {need} missed events, "
                "{fetched} fetched{errors}",
                url=relay.url,
                away=away,
                method=result.method,
                need=result.need,
                fetched=result.fetched,
                errors="".join(f"; {e}" for e in result.errors),
            )

        self.sync(list(filters), relays=[relay.url], direction="down").addCallback(report)

    # --- keepalive ----------------------------------------------------------

    def _sweepConnections(self) -> None:
        """
        The one keepalive and health timer for all relays: each relay
        replaces its unhealthy connections, drops those silent for two
        intervals (their slots reconnect) and pings the others (see
        L{Relay.keepalive}).
        """
        for relay in self._relays.values():
            relay.keepalive(self._pingInterval)

    # --- stats --------------------------------------------------------------

    def stats(self) -> dict[str, RelayStats]:
        """
        @return: per relay URL, its L{RelayStats}.
        """
        return {url: self._relayStats(relay) for url, relay in self._relays.items()}

    def _relayStats(self, relay: Relay) -> RelayStats:
        c = relay.counters
        return RelayStats(
            url=relay.url,
            state=relay.state(),
            connectedSince=relay.connectedSince,
            reconnects=c.reconnects,
            eventsReceived=c.eventsReceived,
            eventsUnique=c.eventsUnique,
            eventsInvalid=c.eventsInvalid,
            okAccepted=c.okAccepted,
            okRejected=c.okRejected,
            latency=relay.latency(),
            healthScore=relay.healthScore(),
            outboundQueued=relay.outboundQueued(),
            outboundDropped=c.outboundDropped,
            waitingSubscriptions=relay.waitingSubscriptions(),
            connections=len(relay.openConnections()),
            name=None if relay.information is None else relay.information.name,
            roles=self._roles[relay.url].names(),
        )

    def totals(self) -> PoolTotals:
        """
        @return: the pool-wide L{PoolTotals}.
        """
        relays = list(self._relays.values())
        return PoolTotals(
            relays=len(relays),
            activeRelays=sum(1 for r in relays if r.isConnected()),
            subscriptions=len(self._subscriptions),
            eventsReceived=sum(r.counters.eventsReceived for r in relays),
            eventsUnique=sum(r.counters.eventsUnique for r in relays),
            eventsInvalid=sum(r.counters.eventsInvalid for r in relays),
            okAccepted=sum(r.counters.okAccepted for r in relays),
            okRejected=sum(r.counters.okRejected for r in relays),
            inboundQueued=self._raw.queued(),
            outboundQueued=sum(r.outboundQueued() for r in relays),
            outboundDropped=sum(r.counters.outboundDropped for r in relays),
            recvDropped=self._raw.dropped,
            cachedIds=len(self._seen),
            paused=self._paused,
        )

    # --- RelayOwner: what the relays tell the pool --------------------------

    def relayEvent(self, relay: Relay, wireId: str, subscriptionId: str, event: Event) -> None:
        self._arrive(_Arrival(relay, wireId, subscriptionId, event))

    def relayDuplicate(
        self, relay: Relay, wireId: str, subscriptionId: str, eventId: str, raw: dict[str, Any]
    ) -> bool:
        seen = self._seen.get(eventId)
        if seen is not None:
            if subscriptionId not in seen.delivered:
                return False
            relay.eventAccepted(wireId, seen.createdAt)
            return True
        pending = self._verifying.get(eventId)
        if pending is None or pending.subscriptionId != subscriptionId:
            return False
        pending.joined.append((relay, wireId, raw))
        self._queued(+1)
        return True

    # --- the inbound path -----------------------------------------------------

    def _arrive(self, arrival: _Arrival) -> None:
        """
        Settle C{arrival} now if nothing waits ahead of it and it needs no
        verification in a thread; else queue it, handing it to the verifier
        unless a copy of it is verified already or being verified.
        """
        subscription = self._subscriptions.get(arrival.subscriptionId)
        if subscription is None and not self._raw.hasSubscription(arrival.subscriptionId):
            return
        event = arrival.event
        if subscription is not None and not matchesAny(subscription.filters, event):
            self._invalid(arrival.relay, event, "does not match the subscription's filters")
            return
        if self._verifier is not None and self._seen.get(event.id) is None:
            if event.id not in self._verifying:
                self._verifyInThread(arrival)
        elif not self._arrivals:
            waiting = self._settle(arrival)
            self._saveSettled()
            if waiting is None:
                return
            arrival = waiting
        self._arrivals.append(arrival)
        self._queued(+1)

    def _verifyInThread(self, arrival: _Arrival) -> None:
        assert self._verifier is not None
        arrival.state = _VERIFYING
        self._verifying[arrival.event.id] = arrival
        self._verifier.verify(arrival.event)

    def _verified(self, events: list[Event], errors: list[str | None]) -> None:
        """
        The verifier's results for a batch: settle what they unblock, in
        the next reactor turn (with those of the other batches that came
        back in this one).
        """
        for event, error in zip(events, errors, strict=True):
            arrival = self._verifying.pop(event.id, None)
            if arrival is None:
                continue
            if error is None:
                arrival.state = _VALID
            else:
                arrival.state = _INVALID
                arrival.error = error
        if self._nextTurn is None:
            self._nextTurn = self.reactor.callLater(0, self._advance)

    def _advance(self) -> None:
        """
        Settle the queued arrivals (and run the steps behind them) in order,
        up to the first that waits for its verification, or until about
        L{_SETTLE_BYTES} went out in this turn.
        """
        self._nextTurn = None
        arrivals = self._arrivals
        budget = _SETTLE_BYTES
        try:
            while arrivals and not self._closed:
                head = arrivals.popleft()
                if isinstance(head, _Arrival):
                    if head.state == _VERIFYING:
                        arrivals.appendleft(head)
                        return
                    waiting = self._settle(head)
                    if waiting is not None:
                        arrivals.appendleft(waiting)
                        return
                    budget -= len(head.event.content) + _EVENT_OVERHEAD
                else:
                    head()
                self._queued(-1)
                if budget <= 0 and arrivals and not self._closed:
                    self._nextTurn = self.reactor.callLater(0, self._advance)
                    return
        finally:
            self._saveSettled()

    def _saveSettled(self) -> None:
        """
        Hand the new events settled since the last call to the store, in
        one call.
        """
        if self._unsaved and self._store is not None:
            events, self._unsaved = self._unsaved, []
            self._store.saveMany(events).addErrback(  # type: ignore[no-untyped-call]
                lambda f: log.failure("saving {count} events failed", f, count=len(events))
            )

    def _settle(self, arrival: _Arrival) -> _Arrival | None:
        """
        Deliver C{arrival} (verifying it first on the reactor thread when
        there is no verifier), or drop it as invalid, now that its turn
        came.

        @return: what waits for the verifier now in its place: itself, or a
            copy another relay sent while it was verified; else L{None}.
        """
        event = arrival.event
        relay = arrival.relay
        subscriptionId = arrival.subscriptionId
        subscription = self._subscriptions.get(subscriptionId)
        raw = self._raw.hasSubscription(subscriptionId)
        if subscription is None and not raw:
            self._queued(-len(arrival.joined))
            return None
        seen = self._seen.get(event.id)
        if seen is None:
            if arrival.state == _UNCHECKED and self.verify:
                if self._verifier is not None:
                    self._verifyInThread(arrival)
                    return arrival
                try:
                    event.verify()
                except InvalidEvent as e:
                    arrival.state = _INVALID
                    arrival.error = str(e)
            if arrival.state == _INVALID:
                self._invalid(relay, event, arrival.error)
                return self._tryJoined(arrival)
            seen = self._seen.add(event)
            relay.counters.eventsUnique += 1
            if self._router is not None and event.kind == RELAY_LIST_KIND:
                self._router.relayListSeen(event)
            if self._store is not None:
                self._unsaved.append(event)
            for other in list(self._subscriptions.values()):
                if (
                    other is not subscription
                    and not other.closed
                    and (not other.relayURLs or relay.url in other.relayURLs)
                    and matchesAny(other.filters, event)
                ):
                    seen.delivered.add(other.subscriptionId)
                    other._deliver(event, relay.url)
        delivered = seen.delivered
        if subscriptionId not in delivered and (subscription is not None or raw):
            delivered.add(subscriptionId)
            if subscription is not None:
                subscription._deliver(event, relay.url)
            else:
                self._raw.push(PoolMessage(relay.url, RelayEvent(subscriptionId, event)), mayPause=True)
        relay.eventAccepted(arrival.wireId, event.createdAt)
        for copyRelay, wireId, _ in arrival.joined:
            copyRelay.eventAccepted(wireId, event.createdAt)
        self._queued(-len(arrival.joined))
        return None

    def _tryJoined(self, invalid: _Arrival) -> _Arrival | None:
        """
        C{invalid} turned out invalid: hand the first valid-looking copy
        other relays sent meanwhile to the verifier, to take its place.

        @return: that copy, or L{None} if there was none.
        """
        joined = invalid.joined
        while joined:
            relay, wireId, raw = joined.pop(0)
            self._queued(-1)
            try:
                event = Event.fromDict(raw)
            except InvalidEvent as e:
                relay.counters.eventsInvalid += 1
                relay.recordError()
                log.debug("{url}: dropped an event: {why}", url=relay.url, why=str(e))
                continue
            subscription = self._subscriptions.get(invalid.subscriptionId)
            if subscription is not None and not matchesAny(subscription.filters, event):
                self._invalid(relay, event, "does not match the subscription's filters")
                continue
            # The copy takes the invalid one's place (and count).
            copy = _Arrival(relay, wireId, invalid.subscriptionId, event, joined=joined)
            self._verifyInThread(copy)
            return copy
        return None

    def _queued(self, change: int) -> None:
        """
        Count arrivals (and joined copies, and steps) waiting on the inbound
        path; pause reading from the relays while there are
        C{verifyQueueSize}, until half of them are done.
        """
        self._waiting += change
        if self._waitingFull:
            if self._waiting <= self._verifyQueueSize // 2:
                self._waitingFull = False
                self._pressure(-1)
        elif self._waiting >= self._verifyQueueSize:
            self._waitingFull = True
            self._pressure(+1)

    def _inOrder(self, step: Callable[[], None]) -> None:
        """
        Run C{step} once the events that arrived before it are settled.
        """
        if self._arrivals:
            self._arrivals.append(step)
            self._queued(+1)
        else:
            step()

    def _invalid(self, relay: Relay, event: Event, why: str) -> None:
        relay.counters.eventsInvalid += 1
        relay.recordError()
        log.debug("{url}: dropped event {id}: {why}", url=relay.url, id=event.id, why=why)

    def relayEOSE(self, relay: Relay, subscriptionId: str) -> None:
        self._inOrder(lambda: self._relayEOSE(relay, subscriptionId))

    def _relayEOSE(self, relay: Relay, subscriptionId: str) -> None:
        subscription = self._subscriptions.get(subscriptionId)
        if subscription is not None:
            subscription._relayDone(relay.url)

    def relayClosed(self, relay: Relay, subscriptionId: str, message: str) -> None:
        self._inOrder(lambda: self._relayClosed(relay, subscriptionId, message))

    def _relayClosed(self, relay: Relay, subscriptionId: str, message: str) -> None:
        counting = self._counts.get(subscriptionId)
        if counting is not None:
            counting.relayGone(relay.url, message)
            return
        subscription = self._subscriptions.get(subscriptionId)
        if subscription is not None:
            log.info(
                "{url}: closed subscription {id}: {message}",
                url=relay.url,
                id=subscriptionId,
                message=message,
            )
            subscription._relayDone(relay.url)

    def relayOK(self, relay: Relay, eventId: str, accepted: bool, message: str) -> None:
        publish = self._publishes.get(eventId)
        if publish is None or not publish.isWaitingFor(relay.url):
            return
        if not accepted:
            # A failure was counted on the connection by the relay.
            message = message or "error: rejected without a reason"
        publish.relayAnswered(relay.url, accepted, message)

    def relayCount(self, relay: Relay, subscriptionId: str, count: int, approximate: bool) -> None:
        counting = self._counts.get(subscriptionId)
        if counting is None:
            if self._raw.hasSubscription(subscriptionId):
                self._raw.push(
                    PoolMessage(relay.url, RelayCount(subscriptionId, count, approximate)), mayPause=True
                )
            return
        counting.relayAnswered(relay.url, count, approximate)

    def relayOther(self, relay: Relay, message: RelayMessage) -> None:
        if isinstance(message, (RelayEOSE, RelayClosed)):
            self._inOrder(lambda: self._relayOther(relay, message))
        else:
            self._relayOther(relay, message)

    def _relayOther(self, relay: Relay, message: RelayMessage) -> None:
        if isinstance(message, (RelayEOSE, RelayClosed)):
            routed = self._raw.hasSubscription(message.subscriptionId)
            if isinstance(message, RelayClosed) and routed:
                self._raw.forgetSubscription(message.subscriptionId)
        elif isinstance(message, RelayOK):
            routed = self._raw.hasPublish(message.eventId)
        else:
            routed = isinstance(message, RelayNotice)
        if routed:
            self._raw.push(PoolMessage(relay.url, message), mayPause=not isinstance(message, RelayNotice))

    def relayConnectionChanged(self, relay: Relay) -> None:
        if relay.isConnected():
            self._relayCameBack(relay)
        else:
            self._relayWentDown(relay)
        if relay.state() in ("open", "connecting"):
            return
        if self._router is not None and relay.counters.opens == 0 and self._roles[relay.url].outbox:
            self._router.relayUnreachable(relay.url)
        self._inOrder(lambda: self._relayGone(relay))
        for counting in list(self._counts.values()):
            counting.relayGone(relay.url, "error: relaypool: the relay disconnected")

    def _relayGone(self, relay: Relay) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription._relayDone(relay.url)
