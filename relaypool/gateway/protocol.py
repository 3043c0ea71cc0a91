"""
The relay facade: a NIP-01 relay toward downstream clients, backed by a
L{relaypool.upstream.relaypool.RelayPool} and/or an event store.

Shared subscriptions
====================

Identical filter sets (compared by L{filtersKey} after their C{limit} is
clamped) share one upstream subscription, a L{_SharedSubscription}. Its live
members are grouped by the subscription id they chose, and each group is a
room of the L{ConnectionRegistry} keyed C{(filtersKey, subscriptionId)}: an
event becomes one frame C{["EVENT", subscriptionId, event]} per group, built
once and written to every member of the group. Clients that use the same
subscription id for the same filters (many clients do, and the fan-out
benchmark does) share one frame; clients with random ids share the upstream
subscription but get a frame each.

A client joins a shared subscription in two phases:

    1. I{Catching up}: it is not in the room yet; its stored events are sent
       to it alone, deduplicated by id. The client that creates the shared
       subscription gets them from the store (if any) and from the upstream
       subscription's stored stream; a client that joins an existing one
       gets them from its own history query (the store and
       C{RelayPool.query}), while the live events that arrive meanwhile are
       held (at most C{maxCatchUpEvents}) and sent after it. What a client
       catches up on is paced by its reading: frames are written while the
       registry says the connection is writable, and the rest waits for it
       to drain. An answer from the store alone is read as ids, then a page
       of C{storePageEvents} events at a time when the previous page was
       written, so a large stored answer costs a fast reader nothing and
       holds one page in memory for a slow one.
    2. I{Live}: once its history is sent and the upstream subscription's
       EOSE fired, it gets C{EOSE} and joins the room.

So each client sees each event once and EOSE once, with no gap between the
stored part and the live stream. The upstream subscription closes when its
last member leaves (C{CLOSE}, a replacing C{REQ}, or a disconnect).

Publishing
==========

C{EVENT} is validated locally (shape, sizes, id, signature, NIP-40
expiration); an invalid event is answered C{OK false "invalid: ..."} and
never reaches a relay. Then, under the C{"quorum"} policy, it is published
through the outbox (if any) or C{RelayPool.publish} and answered C{OK true}
only once C{quorum} relays accepted it (C{"duplicate: ..."} when they all had
it already), else C{OK false} with their reasons (saying so when the outbox
keeps retrying); under the C{"local"} policy it is
answered C{OK true} once the store committed it, and forwarded upstream in
the background. Accepted events are delivered to the matching subscriptions
of every downstream client at once; each shared subscription remembers the
last L{RECENT_IDS} ids it delivered, so that a relay's echo of the same
event is not delivered twice.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool.errors import (
    CountUnavailable,
    InvalidEvent,
    InvalidMessage,
    PoolClosed,
    PublishFailed,
)
from relaypool.gateway.auth import expectedRelayURL, makeChallenge, verifyAuthEvent
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits, TokenBucket
from relaypool.gateway.registry import Claims, ConnectionRegistry, ConnId
from relaypool.nostr.event import AUTH_KIND, Event, isEphemeral
from relaypool.nostr.filter import Filter, filtersKey, limitEvents, matchesAny
from relaypool.nostr.messages import (
    ClientAuth,
    ClientClose,
    ClientCount,
    ClientEvent,
    ClientReq,
    RelayAuth,
    RelayClosed,
    RelayCount,
    RelayEOSE,
    RelayNotice,
    RelayOK,
    parseClientMessage,
    reasonPrefix,
)
from relaypool.nostr.url import parseRelayURL
from relaypool.upstream.relaypool import PublishResult

_log = Logger()

RECENT_IDS = 512
"""
How many event ids each shared subscription remembers having delivered, to
drop a relay's echo of an event a downstream client published.
"""

OK_POLICIES = ("quorum", "local")
"""
The values of the C{okPolicy} option: C{"quorum"} answers C{OK true} once
C{quorum} upstream relays accepted the event; C{"local"} once the store
committed it.
"""

HARD_SIZE_FACTOR = 2
"""
Autobahn closes a connection (code 1009) whose message exceeds
C{HARD_SIZE_FACTOR * maxMessageSize} before buffering it; a message between
the two sizes is answered with a C{NOTICE} and the connection stays usable.
"""


@dataclass(frozen=True, slots=True)
class FacadeStats:
    """
    A snapshot of the facade's counters.

    @ivar sharedSubscriptions: upstream subscriptions shared by downstream
        clients.
    @ivar subscriptions: downstream subscriptions (live or catching up).
    @ivar catchingUp: downstream subscriptions still loading stored events.
    @ivar eventsPublished: well-formed C{EVENT} messages received from
        clients.
    @ivar eventsInvalid: events refused as invalid: malformed (in C{EVENT}
        messages), or with a wrong id or signature, or expired.
    @ivar eventsDelivered: events delivered to shared subscriptions (once
        per subscription, whatever the number of recipients).
    @ivar okAccepted: C{OK true} answers.
    @ivar okRejected: C{OK false} answers.
    @ivar rateLimited: messages refused with C{rate-limited:}.
    @ivar notices: C{NOTICE} answers to malformed messages.
    @ivar deniedConnections: WebSocket handshakes refused (per-IP limit or
        shutdown).
    """

    sharedSubscriptions: int
    subscriptions: int
    catchingUp: int
    eventsPublished: int
    eventsInvalid: int
    eventsDelivered: int
    okAccepted: int
    okRejected: int
    rateLimited: int
    notices: int
    deniedConnections: int


class _Group:
    """
    The live members of a shared subscription that use one subscription id:
    one registry room, one frame prefix.
    """

    __slots__ = ("members", "prefix", "room")

    def __init__(self, key: bytes, subscriptionId: str) -> None:
        self.room = (key, subscriptionId)
        self.prefix = b'["EVENT",' + orjson.dumps(subscriptionId) + b","
        self.members: set[ConnId] = set()


@dataclass(eq=False, slots=True)
class _Member:
    """
    One downstream subscription: a client's subscription id on a shared
    subscription.
    """

    session: _Session
    subscriptionId: str
    shared: _SharedSubscription
    loading: bool = True
    closed: bool = False
    # The answer's load, or the store page being read.
    history: Deferred[Any] | None = None
    seen: set[str] | None = field(default_factory=set)
    # What is still to send while catching up, in this order: stored events
    # read, the ids of those still in the store, events arrived meanwhile.
    stored: deque[Event] = field(default_factory=deque)
    unread: deque[str] = field(default_factory=deque)
    arrived: deque[Event] = field(default_factory=deque)
    waitingToWrite: bool = False


@dataclass(eq=False, slots=True)
class _SharedSubscription:
    key: bytes
    filters: tuple[Filter, ...]
    upstream: Any = None
    eosed: bool = False
    groups: dict[str, _Group] = field(default_factory=dict)
    catchingUp: dict[tuple[ConnId, str], _Member] = field(default_factory=dict)
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def isEmpty(self) -> bool:
        return not self.groups and not self.catchingUp

    def markDelivered(self, eventId: str) -> bool:
        """
        @return: C{False} if C{eventId} was delivered recently.
        """
        if eventId in self.recent:
            return False
        self.recent[eventId] = None
        if len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
        return True


@dataclass(eq=False, slots=True)
class _Session:
    """
    The facade's state for one downstream connection.
    """

    connId: ConnId
    claims: Claims
    events: TokenBucket
    reqs: TokenBucket
    challenge: str | None = None
    relayURL: str | None = None
    pubkeys: set[str] = field(default_factory=set)
    subscriptions: dict[str, _Member] = field(default_factory=dict)
    open: bool = True


RETRYING = "the relay pool keeps retrying in the background"
"""
The end of the C{OK false} message for an event that missed its quorum but
stays in the outbox, which re-publishes it to the relays that did not accept
it: only when some relay timed out or refused for a temporary reason (not
when every refusing relay refused for good).
"""


def _failureMessage(result: PublishResult, retrying: bool = False) -> str:
    """
    The C{OK false} message for a publish that missed its quorum: the
    relays' common reason prefix if they agree on one, else C{error}, then
    every relay's reason, then L{RETRYING} if C{retrying}.
    """
    prefixes = {reasonPrefix(message) for message in result.rejected.values()}
    prefix = "error"
    if len(prefixes) == 1 and not result.timedOut:
        (only,) = prefixes
        prefix = only or prefix
    message = (
        f"{prefix}: accepted by {len(result.accepted)} of the {result.quorum} relays "
        f"required ({result.reasons() or 'no relay to publish to'})"
    )
    return f"{message}; {RETRYING}" if retrying else message


def _duplicateMessage(result: PublishResult) -> str | None:
    """
    The C{OK true} message for a publish that reached its quorum: when
    every relay that accepted answered C{duplicate:} (the event was there
    already), C{"duplicate: ..."} with their answers, else L{None} (the
    message is empty).
    """
    answers = sorted(result.accepted.items())
    if not answers or any(reasonPrefix(message) != "duplicate" for _, message in answers):
        return None
    held = "; ".join(f"{url}: {message}" for url, message in answers)
    return f"duplicate: the relays already have this event ({held})"


class RelayFacade:
    """
    The NIP-01 relay behaviour behind every downstream connection: shared
    subscriptions, publishing with honest C{OK}, C{COUNT}, NIP-42 and the
    per-connection limits.
    """

    def __init__(
        self,
        registry: ConnectionRegistry,
        pool: Any = None,
        store: Any = None,
        outbox: Any = None,
        limits: GatewayLimits = DEFAULT_LIMITS,
        quorum: int = 1,
        okPolicy: str = "quorum",
        authRequired: bool = False,
        relayURL: str | None = None,
        reactor: Any = None,
    ) -> None:
        """
        @param registry: the registry the connections are registered in.
        @param pool: the L{relaypool.upstream.relaypool.RelayPool}, or L{None} to
            serve the store alone.
        @param store: an L{relaypool.interfaces.IEventStore}, or L{None}.
        @param outbox: an L{relaypool.store.outbox.OutboxPublisher} that publishes
            accepted events durably, or L{None} to publish through C{pool}.
        @param quorum: upstream acceptances an C{OK true} needs.
        @param okPolicy: one of L{OK_POLICIES}; C{"local"} needs a store.
        @param authRequired: require NIP-42 authentication before C{REQ},
            C{COUNT} and C{EVENT}.
        @param relayURL: the public URL authentication events must name; if
            L{None}, each connection's URL is derived from the C{Host} header
            it connected with (see L{expectedRelayURL}).
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        @raise ValueError: for a policy that cannot work with the given
            pool and store.
        @raise InvalidRelayURL: if C{relayURL} is not a relay URL.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        if okPolicy not in OK_POLICIES:
            raise ValueError(f"okPolicy must be one of {OK_POLICIES}, got {okPolicy!r}")
        if pool is None and store is None:
            raise ValueError("the gateway needs a relay pool, a store, or both")
        if (okPolicy == "local" or pool is None) and store is None:
            raise ValueError('okPolicy "local" needs a store')
        self._reactor = reactor
        self._registry = registry
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self.limits = limits
        self._quorum = quorum
        self._local = okPolicy == "local" or pool is None
        self.authRequired = authRequired
        self.relayURL = None if relayURL is None else parseRelayURL(relayURL).url
        self._shared: dict[bytes, _SharedSubscription] = {}
        self._sessions: dict[ConnId, _Session] = {}
        self._eventsPublished = 0
        self._eventsInvalid = 0
        self._eventsDelivered = 0
        self._okAccepted = 0
        self._okRejected = 0
        self._rateLimited = 0
        self._notices = 0
        self.deniedConnections = 0

    # --- connections --------------------------------------------------------

    def connect(self, connId: ConnId, host: str | None = None, secure: bool = False) -> _Session:
        """
        Start serving a registered connection: sends the NIP-42 challenge
        when authentication is required.

        @param host: the C{Host} header of the connection's handshake.
        @param secure: whether the client reached the gateway over TLS.
        """
        limits = self.limits
        session = _Session(
            connId,
            self._registry.claims(connId),
            TokenBucket(limits.eventsPerSecond, limits.eventBurst, self._reactor),
            TokenBucket(limits.reqsPerSecond, limits.reqBurst, self._reactor),
        )
        self._sessions[connId] = session
        if self.authRequired:
            session.challenge = makeChallenge()
            session.relayURL = expectedRelayURL(self.relayURL, host, secure)
            self._send(session, RelayAuth(session.challenge).toJSON())
        return session

    def disconnect(self, session: _Session) -> None:
        """
        Forget a connection: leave its subscriptions, closing the upstream
        subscriptions nobody else uses. Idempotent.
        """
        session.open = False
        self._sessions.pop(session.connId, None)
        for member in tuple(session.subscriptions.values()):
            self._leave(member)

    def close(self) -> None:
        """
        Close every upstream subscription (the gateway is stopping).
        """
        for session in tuple(self._sessions.values()):
            self.disconnect(session)

    def _send(self, session: _Session, frame: bytes) -> None:
        if session.open:
            self._registry.sendText(session.connId, frame)

    def notice(self, session: _Session, message: str) -> None:
        """
        Send a C{NOTICE}.
        """
        self._notices += 1
        self._send(session, RelayNotice(message).toJSON())

    # --- inbound messages ---------------------------------------------------

    def handleMessage(self, session: _Session, payload: bytes) -> None:
        """
        Handle one text message from a client.
        """
        if len(payload) > self.limits.maxMessageSize:
            self.notice(
                session,
                f"invalid: message of {len(payload)} bytes is over the limit of "
                f"{self.limits.maxMessageSize} bytes",
            )
            return
        try:
            message = parseClientMessage(payload)
        except InvalidMessage as e:
            if e.subscriptionId is not None:
                self._closed(session, e.subscriptionId, str(e))
            else:
                self.notice(session, str(e))
            return
        except InvalidEvent as e:
            if e.eventId is not None:
                self._eventsInvalid += 1
                self._ok(session, e.eventId, False, str(e))
            else:
                self.notice(session, str(e))
            return
        if isinstance(message, ClientReq):
            self._handleReq(session, message)
        elif isinstance(message, ClientEvent):
            self._handleEvent(session, message.event)
        elif isinstance(message, ClientClose):
            member = session.subscriptions.get(message.subscriptionId)
            if member is not None:
                self._leave(member)
        elif isinstance(message, ClientCount):
            self._handleCount(session, message)
        elif isinstance(message, ClientAuth):
            self._handleAuth(session, message.event)

    def _closed(self, session: _Session, subscriptionId: str, message: str) -> None:
        self._send(session, RelayClosed(subscriptionId, message).toJSON())

    def _ok(self, session: _Session, eventId: str, accepted: bool, message: str) -> None:
        if accepted:
            self._okAccepted += 1
        else:
            self._okRejected += 1
        self._send(session, RelayOK(eventId, accepted, message).toJSON())

    def _refuseQuery(
        self, session: _Session, subscriptionId: str, filters: tuple[Filter, ...]
    ) -> str | None:
        """
        The C{CLOSED} message refusing a C{REQ} or C{COUNT}, if it must be.
        """
        limits = self.limits
        if len(subscriptionId) > limits.maxSubscriptionIdLength:
            return (
                f"invalid: subscription id is longer than {limits.maxSubscriptionIdLength} "
                "characters"
            )
        if self.authRequired and not session.pubkeys:
            return "auth-required: authenticate with NIP-42 first"
        if not session.reqs.take():
            self._rateLimited += 1
            return f"rate-limited: at most {limits.reqsPerSecond:g} requests per second"
        if len(filters) > limits.maxFilters:
            return f"invalid: at most {limits.maxFilters} filters per request"
        return None

    # --- REQ / CLOSE --------------------------------------------------------

    def _clamp(self, filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
        maxLimit = self.limits.maxLimit
        return tuple(
            f if f.limit is not None and f.limit <= maxLimit else f.withLimit(maxLimit)
            for f in filters
        )

    def _handleReq(self, session: _Session, message: ClientReq) -> None:
        subscriptionId = message.subscriptionId
        refusal = self._refuseQuery(session, subscriptionId, message.filters)
        if refusal is None:
            existing = session.subscriptions.get(subscriptionId)
            if existing is not None:
                self._leave(existing)
            elif len(session.subscriptions) >= self.limits.maxSubscriptions:
                refusal = (
                    f"blocked: at most {self.limits.maxSubscriptions} open subscriptions "
                    "per connection"
                )
        if refusal is not None:
            self._closed(session, subscriptionId, refusal)
            return
        filters = self._clamp(message.filters)
        key = filtersKey(filters)
        shared = self._shared.get(key)
        member: _Member
        if shared is None:
            shared = _SharedSubscription(key, filters)
            try:
                self._openUpstream(shared)
            except PoolClosed:
                self._closed(session, subscriptionId, "error: the relay pool is stopped")
                return
            self._shared[key] = shared
            member = self._addMember(session, subscriptionId, shared)
        else:
            member = self._addMember(session, subscriptionId, shared)
            if self._pool is not None:
                # A joiner also needs what the upstream relays stored.
                self._loadAnswer(member, self._historyQuery(filters), self._historyLoaded)
                return
        if self._store is None:
            self._idsLoaded([], member)
        else:
            self._loadAnswer(member, maybeDeferred(self._store.queryIds, filters), self._idsLoaded)

    def _loadAnswer(self, member: _Member, load: Deferred[Any], loaded: Any) -> None:
        member.history = load
        load.addCallbacks(loaded, self._historyFailed, callbackArgs=(member,), errbackArgs=(member,))

    def _addMember(
        self, session: _Session, subscriptionId: str, shared: _SharedSubscription
    ) -> _Member:
        member = _Member(session, subscriptionId, shared)
        session.subscriptions[subscriptionId] = member
        shared.catchingUp[session.connId, subscriptionId] = member
        return member

    def _openUpstream(self, shared: _SharedSubscription) -> None:
        if self._pool is None:
            shared.eosed = True
            return
        upstream = self._pool.subscribe(shared.filters)
        shared.upstream = upstream
        upstream.onEvent(lambda event, url: self._deliver(shared, event))
        upstream.onEOSE(lambda: self._upstreamEOSE(shared))

    def _historyQuery(self, filters: tuple[Filter, ...]) -> Deferred[list[Event]]:
        queries: list[Deferred[list[Event]]] = [maybeDeferred(self._pool.query, filters)]
        if self._store is not None:
            queries.append(maybeDeferred(self._store.query, filters))
        return gatherResults(queries, consumeErrors=True).addCallback(
            lambda results: [event for result in results for event in result]
        )

    def _historyLoaded(self, events: list[Event], member: _Member) -> None:
        member.history = None
        if member.closed:
            return
        member.loading = False
        member.stored.extend(limitEvents(member.shared.filters, events))
        self._pump(member)

    def _idsLoaded(self, eventIds: list[str], member: _Member) -> None:
        member.history = None
        if member.closed:
            return
        member.loading = False
        member.unread.extend(eventIds)
        self._pump(member)

    def _pump(self, member: _Member) -> None:
        """
        Send a catching-up member what it is owed while its connection is
        writable, reading stored events from the store a page at a time; go
        live once all is sent and the upstream subscription's EOSE came.
        """
        if member.loading or member.history is not None or member.seen is None:
            # Still loading or reading a page; or already live.
            return
        connId = member.session.connId
        while member.stored or member.unread or member.arrived:
            if not member.stored and member.unread:
                size = min(len(member.unread), self.limits.storePageEvents)
                page = [member.unread.popleft() for _ in range(size)]
                self._loadAnswer(member, maybeDeferred(self._store.fetch, page), self._pageRead)
                return
            if not self._registry.isWritable(connId):
                if not member.waitingToWrite:
                    member.waitingToWrite = self._registry.notifyWritable(
                        connId, lambda: self._writable(member)
                    )
                return
            event = (member.stored or member.arrived).popleft()
            if not self._expired(event):
                self._sendCatchingUp(member, event)
        if member.shared.eosed:
            self._goLive(member)

    def _pageRead(self, events: list[Event], member: _Member) -> None:
        member.history = None
        if not member.closed:
            member.stored.extend(events)
            self._pump(member)

    def _writable(self, member: _Member) -> None:
        member.waitingToWrite = False
        if not member.closed:
            self._pump(member)

    def _historyFailed(self, failure: Failure, member: _Member) -> None:
        member.history = None
        if member.closed:
            return
        _log.failure("Loading stored events for a subscription failed", failure)
        session = member.session
        self._leave(member)
        self._closed(session, member.subscriptionId, "error: could not load stored events")

    def _sendCatchingUp(self, member: _Member, event: Event) -> None:
        assert member.seen is not None
        if event.id not in member.seen:
            member.seen.add(event.id)
            self._send(
                member.session,
                b'["EVENT",' + orjson.dumps(member.subscriptionId) + b"," + event.toJSON() + b"]",
            )

    def _goLive(self, member: _Member) -> None:
        shared = member.shared
        session = member.session
        del shared.catchingUp[session.connId, member.subscriptionId]
        member.seen = None
        self._send(session, RelayEOSE(member.subscriptionId).toJSON())
        group = shared.groups.get(member.subscriptionId)
        if group is None:
            group = shared.groups[member.subscriptionId] = _Group(shared.key, member.subscriptionId)
        group.members.add(session.connId)
        self._registry.joinRoom(session.connId, group.room)

    def _upstreamEOSE(self, shared: _SharedSubscription) -> None:
        if shared.eosed:
            return
        shared.eosed = True
        for member in tuple(shared.catchingUp.values()):
            self._pump(member)

    def _leave(self, member: _Member) -> None:
        if member.closed:
            return
        member.closed = True
        session = member.session
        shared = member.shared
        del session.subscriptions[member.subscriptionId]
        if shared.catchingUp.pop((session.connId, member.subscriptionId), None) is None:
            group = shared.groups[member.subscriptionId]
            group.members.discard(session.connId)
            self._registry.leaveRoom(session.connId, group.room)
            if not group.members:
                del shared.groups[member.subscriptionId]
        if member.history is not None:
            history, member.history = member.history, None
            history.cancel()
        if shared.isEmpty():
            del self._shared[shared.key]
            if shared.upstream is not None:
                shared.upstream.close()

    def _deliver(self, shared: _SharedSubscription, event: Event) -> None:
        """
        Deliver an event to every member of a shared subscription: one frame
        per group to its room, and to each member catching up on its own.
        """
        if self._expired(event) or not shared.markDelivered(event.id):
            return
        self._eventsDelivered += 1
        tail = event.toJSON() + b"]"
        for group in tuple(shared.groups.values()):
            self._registry.broadcastRoomText(group.room, group.prefix + tail)
        limit = self.limits.maxCatchUpEvents
        for member in tuple(shared.catchingUp.values()):
            if len(member.arrived) >= limit:
                session = member.session
                self._leave(member)
                self._closed(
                    session,
                    member.subscriptionId,
                    f"error: more than {limit} new events arrived while stored events "
                    "were sent",
                )
            else:
                member.arrived.append(event)
                self._pump(member)

    def deliverLocal(self, event: Event) -> None:
        """
        Deliver an event accepted from a downstream client to every matching
        shared subscription.
        """
        for shared in tuple(self._shared.values()):
            if matchesAny(shared.filters, event):
                self._deliver(shared, event)

    # --- EVENT --------------------------------------------------------------

    def _handleEvent(self, session: _Session, event: Event) -> None:
        self._eventsPublished += 1
        if self.authRequired and not session.pubkeys:
            self._ok(session, event.id, False, "auth-required: authenticate with NIP-42 first")
            return
        if not session.events.take():
            self._rateLimited += 1
            self._ok(
                session,
                event.id,
                False,
                f"rate-limited: at most {self.limits.eventsPerSecond:g} events per second",
            )
            return
        refusal = self._invalidity(event)
        if refusal is not None:
            self._eventsInvalid += 1
            self._ok(session, event.id, False, refusal)
            return
        if self._local:
            self._acceptLocally(session, event)
        else:
            self._acceptOnQuorum(session, event)

    def _invalidity(self, event: Event) -> str | None:
        try:
            event.verify()
        except InvalidEvent as e:
            return str(e)
        if event.kind == AUTH_KIND:
            return f"invalid: kind {AUTH_KIND} events are only for AUTH messages"
        if self._expired(event):
            return "invalid: event has expired"
        return None

    def _expired(self, event: Event) -> bool:
        expiration = event.expiration()
        return expiration is not None and expiration <= self._reactor.seconds()

    def _acceptLocally(self, session: _Session, event: Event) -> None:
        if isEphemeral(event.kind):
            self._ok(session, event.id, True, "")
            self.deliverLocal(event)
            self._forward(event)
            return

        def saved(stored: bool) -> None:
            if stored:
                self._ok(session, event.id, True, "")
                self.deliverLocal(event)
                self._forward(event)
            else:
                self._ok(
                    session,
                    event.id,
                    True,
                    "duplicate: already have this event, or a newer one replaces it",
                )

        def failed(failure: Failure) -> None:
            _log.failure("Saving event {eventId} failed", failure, eventId=event.id)
            self._ok(session, event.id, False, "error: could not store the event")

        maybeDeferred(self._store.save, event).addCallbacks(saved, failed)

    def _forward(self, event: Event) -> None:
        """
        Publish a locally accepted event upstream in the background.
        """
        if self._pool is None:
            return
        if self._outbox is not None and not isEphemeral(event.kind):
            d: Deferred[Any] = maybeDeferred(self._outbox.submit, event)
        else:
            d = maybeDeferred(self._pool.publish, event, self._quorum)
        d.addErrback(self._forwardFailed, event)

    def _forwardFailed(self, failure: Failure, event: Event) -> None:
        if isinstance(failure.value, PublishFailed):
            _log.info(
                "Event {eventId} did not reach its quorum upstream: {reasons}",
                eventId=event.id,
                reasons=failure.value.result.reasons(),
            )
        else:
            _log.failure("Forwarding event {eventId} failed", failure, eventId=event.id)

    def _acceptOnQuorum(self, session: _Session, event: Event) -> None:
        """
        Publish C{event} and answer once the quorum is reached or missed:
        C{OK true} (C{"duplicate: ..."} when every relay that accepted
        already had it, and then it is not delivered again), or C{OK false}
        with the relays' reasons, saying so when the outbox keeps retrying
        (some relay timed out or refused for a temporary reason).
        """
        viaOutbox = self._outbox is not None and not isEphemeral(event.kind)
        if viaOutbox:
            d: Deferred[Any] = maybeDeferred(self._outbox.submit, event)
        else:
            d = maybeDeferred(self._pool.publish, event, self._quorum)

        def published(result: PublishResult) -> None:
            if result.succeeded:
                duplicate = _duplicateMessage(result)
                self._ok(session, event.id, True, duplicate or "")
                if duplicate is None:
                    self.deliverLocal(event)
                if self._store is not None and not isEphemeral(event.kind):
                    maybeDeferred(self._store.save, event).addErrback(
                        lambda f: _log.failure("Saving event {eventId} failed", f, eventId=event.id)
                    )
            else:
                retrying = viaOutbox and bool(result.retryable())
                self._ok(session, event.id, False, _failureMessage(result, retrying))

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, PublishFailed):
                published(failure.value.result)
                return
            _log.failure("Publishing event {eventId} failed", failure, eventId=event.id)
            self._ok(session, event.id, False, f"error: {failure.getErrorMessage()}")

        d.addCallbacks(published, failed)

    # --- COUNT / AUTH -------------------------------------------------------

    def _handleCount(self, session: _Session, message: ClientCount) -> None:
        subscriptionId = message.subscriptionId
        refusal = self._refuseQuery(session, subscriptionId, message.filters)
        if refusal is not None:
            self._closed(session, subscriptionId, refusal)
            return
        d: Deferred[tuple[int, bool]]
        if self._pool is None:
            d = self._countStored(message.filters)
        else:
            # With a store, the relays that can count are asked; when none
            # can, the store (the cache of what they sent) answers, rather
            # than fetching every matching event from them to count it.
            d = maybeDeferred(
                self._pool.count, message.filters, fetch=self._store is None
            ).addCallback(lambda result: (result.count, result.approximate))
            if self._store is not None:

                def uncounted(failure: Failure) -> Deferred[tuple[int, bool]]:
                    failure.trap(CountUnavailable)  # type: ignore[no-untyped-call]
                    return self._countStored(message.filters)

                d.addErrback(uncounted)

        def counted(result: tuple[int, bool]) -> None:
            self._send(session, RelayCount(subscriptionId, *result).toJSON())

        def failed(failure: Failure) -> None:
            _log.failure("COUNT failed", failure)
            self._closed(session, subscriptionId, "error: could not count events")

        d.addCallbacks(counted, failed)

    def _countStored(self, filters: Sequence[Filter]) -> Deferred[tuple[int, bool]]:
        return maybeDeferred(self._store.count, filters).addCallback(lambda count: (count, False))

    def _handleAuth(self, session: _Session, event: Event) -> None:
        if session.challenge is None:
            self._ok(session, event.id, False, "restricted: this relay sent no AUTH challenge")
            return
        try:
            verifyAuthEvent(event, session.challenge, session.relayURL, self._reactor.seconds())
        except InvalidEvent as e:
            self._ok(session, event.id, False, str(e))
            return
        session.pubkeys.add(event.pubkey)
        session.claims.pubkey = event.pubkey
        self._ok(session, event.id, True, "")

    # --- statistics ---------------------------------------------------------

    def stats(self) -> FacadeStats:
        """
        @return: a snapshot of the facade's counters.
        """
        catchingUp = sum(len(shared.catchingUp) for shared in self._shared.values())
        return FacadeStats(
            sharedSubscriptions=len(self._shared),
            subscriptions=sum(len(s.subscriptions) for s in self._sessions.values()),
            catchingUp=catchingUp,
            eventsPublished=self._eventsPublished,
            eventsInvalid=self._eventsInvalid,
            eventsDelivered=self._eventsDelivered,
            okAccepted=self._okAccepted,
            okRejected=self._okRejected,
            rateLimited=self._rateLimited,
            notices=self._notices,
            deniedConnections=self.deniedConnections,
        )


class GatewayProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """
    One downstream WebSocket connection: registers with the registry and
    hands its messages to the factory's L{RelayFacade}.
    """

    factory: GatewayFactory

    def __init__(self) -> None:
        super().__init__()
        self._ip: str | None = None
        self._host: str | None = None
        self._secure = False
        self._session: _Session | None = None

    def onConnect(self, request: Any) -> None:
        """
        Admit the handshake unless the client's IP is over its connection
        limit or the gateway is stopping; note the C{Host} it asked for and
        whether it came over TLS (directly, or through a TLS terminator that
        sent C{X-Forwarded-Proto: https}), for NIP-42.
        """
        assert self.transport is not None
        peer: Any = self.transport.getPeer()
        ip: str = peer.host
        self.factory.admit(ip)
        self._ip = ip
        headers: dict[str, str] = request.headers
        self._host = headers.get("host")
        forwarded = headers.get("x-forwarded-proto", "").strip().lower()
        self._secure = ISSLTransport.providedBy(self.transport) or forwarded in ("https", "wss")

    def onOpen(self) -> None:
        factory = self.factory
        connId = factory.registry.register(self, Claims(ip=self._ip))
        self._session = factory.facade.connect(connId, self._host, self._secure)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        facade = self.factory.facade
        self.factory.registry.touch(session.connId)
        if isBinary:
            facade.notice(session, "invalid: binary messages are not supported")
            return
        facade.handleMessage(session, payload)

    def onPing(self, payload: bytes) -> None:
        if self._session is not None:
            self.factory.registry.touch(self._session.connId)
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self._session is not None:
            self.factory.registry.touch(self._session.connId)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # Autobahn leaves its close handshake timer running when the
        # registry aborts a client that never answered our close frame.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        factory = self.factory
        if self._session is not None:
            session, self._session = self._session, None
            factory.facade.disconnect(session)
            factory.registry.unregister(session.connId)
        if self._ip is not None:
            ip, self._ip = self._ip, None
            factory.release(ip)


class GatewayFactory(WebSocketServerFactory):  # type: ignore[misc]
    """
    The factory of L{GatewayProtocol}: the WebSocket options from the
    limits, and the count of connections per IP.

    A handshake from an IP that already has C{maxConnectionsPerIP} open
    connections is refused with HTTP 429; while the gateway stops, every
    handshake is refused with HTTP 503.
    """

    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: ConnectionRegistry,
        facade: RelayFacade,
        url: str | None = None,
    ) -> None:
        super().__init__(url)  # type: ignore[no-untyped-call]
        self.registry = registry
        self.facade = facade
        self.accepting = True
        self._perIP: dict[str, int] = {}
        limits = facade.limits
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=HARD_SIZE_FACTOR * limits.maxMessageSize,
            maxFramePayloadSize=HARD_SIZE_FACTOR * limits.maxMessageSize,
            autoPingInterval=0,
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )

    def admit(self, ip: str) -> None:
        """
        Count a new connection from C{ip}.

        @raise ConnectionDeny: if the gateway is stopping or C{ip} is at its
            limit.
        """
        if not self.accepting:
            self.facade.deniedConnections += 1
            raise ConnectionDeny(503, "the relay is shutting down")  # type: ignore[no-untyped-call]
        count = self._perIP.get(ip, 0)
        if count >= self.facade.limits.maxConnectionsPerIP:
            self.facade.deniedConnections += 1
            raise ConnectionDeny(  # type: ignore[no-untyped-call]
                429,
                f"too many connections from {ip} "
                f"(at most {self.facade.limits.maxConnectionsPerIP})",
            )
        self._perIP[ip] = count + 1

    def release(self, ip: str) -> None:
        """
        Uncount a connection from C{ip}.
        """
        count = self._perIP[ip] - 1
        if count:
            self._perIP[ip] = count
        else:
            del self._perIP[ip]

    def connectionsFrom(self, ip: str) -> int:
        """
        @return: the number of admitted connections from C{ip}.
        """
        return self._perIP.get(ip, 0)


__all__ = [
    "HARD_SIZE_FACTOR",
    "OK_POLICIES",
    "RECENT_IDS",
    "FacadeStats",
    "GatewayFactory",
    "GatewayProtocol",
    "RelayFacade",
]
