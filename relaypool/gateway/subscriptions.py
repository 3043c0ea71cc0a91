"""
Shared subscriptions: the downstream clients' subscriptions, with one
upstream subscription per distinct filter set.

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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool.errors import PoolClosed
from relaypool.gateway.limits import GatewayLimits
from relaypool.gateway.policy import EventPolicy
from relaypool.gateway.registry import ConnectionRegistry, ConnId
from relaypool.gateway.session import Replies, Session
from relaypool.interfaces import IEventStore, IRelayPool, IUpstreamSubscriptions
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter, filtersKey, limitEvents, matchesAny
from relaypool.nostr.messages import RelayEOSE

_log = Logger()

RECENT_IDS = 512
"""
How many event ids each shared subscription remembers having delivered, to
drop a relay's echo of an event a downstream client published.
"""


class _Group:
    """
    The live members of a shared subscription that use one subscription id:
    one registry room, one frame prefix.
    """

    __slots__ = ("prefix", "room")

    def __init__(self, key: bytes, subscriptionId: str) -> None:
        # Its members are the registry's room's: the registry is the one home
        # of who is in a room.
        self.room = (key, subscriptionId)
        self.prefix = b'["EVENT",' + orjson.dumps(subscriptionId) + b","


@dataclass(eq=False, slots=True)
class Member:
    """
    One downstream subscription: a client's subscription id on a shared
    subscription.
    """

    session: Session
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
    # When the REQ came (the clock's seconds).
    openedAt: float = 0.0


@dataclass(eq=False, slots=True)
class _SharedSubscription:
    key: bytes
    filters: tuple[Filter, ...]
    upstream: Any = None
    eosed: bool = False
    groups: dict[str, _Group] = field(default_factory=dict)
    catchingUp: dict[tuple[ConnId, str], Member] = field(default_factory=dict)
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


class SharedSubscriptions:
    """
    Every downstream subscription of a gateway, grouped into shared
    subscriptions (see the module docstring).

    @ivar eventsDelivered: events delivered to shared subscriptions (once
        per subscription, whatever the number of recipients).
    @ivar policy: the L{EventPolicy} whose hidden events (banned ids and
        authors, disallowed kinds) are not delivered.
    """

    def __init__(
        self,
        registry: ConnectionRegistry,
        replies: Replies,
        pool: IRelayPool | None,
        store: IEventStore | None,
        limits: GatewayLimits,
        clock: IReactorTime,
        onLatency: Callable[[str, float], None] | None = None,
        upstream: IUpstreamSubscriptions | None = None,
    ) -> None:
        """
        @param pool: the L{relaypool.upstream.relaypool.RelayPool}, or
            L{None}.
        @param store: an L{relaypool.interfaces.IEventStore}, or L{None}.
        @param upstream: where the upstream subscriptions and a joiner's
            stored events come from, when C{pool} is given: a cluster node,
            or C{pool} itself if L{None}.
        @param clock: an L{IReactorTime}, for NIP-40 expiration and
            latencies.
        @param onLatency: called with C{"eose"} and the seconds from a
            client's C{REQ} to the C{EOSE} sent to it.
        """
        self._registry = registry
        self._replies = replies
        self._pool = pool
        self._upstream: IRelayPool | IUpstreamSubscriptions | None = (
            pool if upstream is None else upstream
        )
        self._store = store
        self.limits = limits
        self._clock = clock
        self._onLatency = onLatency
        self._shared: dict[bytes, _SharedSubscription] = {}
        self.eventsDelivered = 0
        self.policy = EventPolicy()

    def open(self, session: Session, subscriptionId: str, filters: tuple[Filter, ...]) -> None:
        """
        Subscribe C{session} to C{filters} under C{subscriptionId} (a
        subscription it does not have: the caller closed any it had with
        that id): its stored events, EOSE, then live events. Each filter's
        C{limit} is lowered to C{maxLimit}.
        """
        filters = self._clamp(filters)
        key = filtersKey(filters)
        shared = self._shared.get(key)
        member: Member
        if shared is None:
            shared = _SharedSubscription(key, filters)
            try:
                self._openUpstream(shared)
            except PoolClosed:
                self._replies.closed(session, subscriptionId, "error: the relay pool is stopped")
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

    def leaveAll(self, session: Session) -> None:
        """
        Take C{session} out of all its subscriptions.
        """
        for member in tuple(session.subscriptions.values()):
            self.leave(member)

    def sharedCount(self) -> int:
        """
        @return: how many upstream subscriptions are shared.
        """
        return len(self._shared)

    def catchingUpCount(self) -> int:
        """
        @return: how many downstream subscriptions are still catching up.
        """
        return sum(len(shared.catchingUp) for shared in self._shared.values())

    def _clamp(self, filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
        maxLimit = self.limits.maxLimit
        return tuple(
            f if f.limit is not None and f.limit <= maxLimit else f.withLimit(maxLimit)
            for f in filters
        )

    def _loadAnswer(self, member: Member, load: Deferred[Any], loaded: Any) -> None:
        member.history = load
        load.addCallbacks(loaded, self._historyFailed, callbackArgs=(member,), errbackArgs=(member,))

    def _addMember(
        self, session: Session, subscriptionId: str, shared: _SharedSubscription
    ) -> Member:
        member = Member(session, subscriptionId, shared, openedAt=self._clock.seconds())
        session.subscriptions[subscriptionId] = member
        shared.catchingUp[session.connId, subscriptionId] = member
        return member

    def _openUpstream(self, shared: _SharedSubscription) -> None:
        if self._upstream is None:
            shared.eosed = True
            return
        upstream = self._upstream.subscribe(shared.filters)
        shared.upstream = upstream
        upstream.onEvent(lambda event, url: self._deliver(shared, event))
        upstream.onEOSE(lambda: self._upstreamEOSE(shared))

    def _historyQuery(self, filters: tuple[Filter, ...]) -> Deferred[list[Event]]:
        assert self._upstream is not None, "only a joiner behind a pool asks its relays"
        queries: list[Deferred[list[Event]]] = [maybeDeferred(self._upstream.query, filters)]
        if self._store is not None:
            queries.append(maybeDeferred(self._store.query, filters))
        return gatherResults(queries, consumeErrors=True).addCallback(
            lambda results: [event for result in results for event in result]
        )

    def _historyLoaded(self, events: list[Event], member: Member) -> None:
        member.history = None
        if member.closed:
            return
        member.loading = False
        member.stored.extend(limitEvents(member.shared.filters, events))
        self._pump(member)

    def _idsLoaded(self, eventIds: list[str], member: Member) -> None:
        member.history = None
        if member.closed:
            return
        member.loading = False
        member.unread.extend(eventIds)
        self._pump(member)

    def _pump(self, member: Member) -> None:
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
                assert self._store is not None, "only the store gives ids to read"
                self._loadAnswer(member, maybeDeferred(self._store.fetch, page), self._pageRead)
                return
            if not self._registry.isWritable(connId):
                if not member.waitingToWrite:
                    member.waitingToWrite = self._registry.notifyWritable(
                        connId, lambda: self._writable(member)
                    )
                return
            event = (member.stored or member.arrived).popleft()
            if not event.isExpired(self._clock.seconds()) and not self.policy.hides(event):
                self._sendCatchingUp(member, event)
        if member.shared.eosed:
            self._goLive(member)

    def _pageRead(self, events: list[Event], member: Member) -> None:
        member.history = None
        if not member.closed:
            member.stored.extend(events)
            self._pump(member)

    def _writable(self, member: Member) -> None:
        member.waitingToWrite = False
        if not member.closed:
            self._pump(member)

    def _historyFailed(self, failure: Failure, member: Member) -> None:
        member.history = None
        if member.closed:
            return
        _log.failure("Loading stored events for a subscription failed", failure)
        session = member.session
        self.leave(member)
        self._replies.closed(session, member.subscriptionId, "error: could not load stored events")

    def _sendCatchingUp(self, member: Member, event: Event) -> None:
        assert member.seen is not None
        if event.id not in member.seen:
            member.seen.add(event.id)
            self._replies.send(
                member.session,
                b'["EVENT",' + orjson.dumps(member.subscriptionId) + b"," + event.toJSON() + b"]",
            )

    def _goLive(self, member: Member) -> None:
        shared = member.shared
        session = member.session
        del shared.catchingUp[session.connId, member.subscriptionId]
        member.seen = None
        self._replies.send(session, RelayEOSE(member.subscriptionId).toJSON())
        if self._onLatency is not None:
            self._onLatency("eose", self._clock.seconds() - member.openedAt)
        group = shared.groups.get(member.subscriptionId)
        if group is None:
            group = shared.groups[member.subscriptionId] = _Group(shared.key, member.subscriptionId)
        self._registry.joinRoom(session.connId, group.room)

    def _upstreamEOSE(self, shared: _SharedSubscription) -> None:
        if shared.eosed:
            return
        shared.eosed = True
        for member in tuple(shared.catchingUp.values()):
            self._pump(member)

    def leave(self, member: Member) -> None:
        """
        End one downstream subscription; the last member of a shared
        subscription closes its upstream subscription. Idempotent.
        """
        if member.closed:
            return
        member.closed = True
        session = member.session
        shared = member.shared
        del session.subscriptions[member.subscriptionId]
        if shared.catchingUp.pop((session.connId, member.subscriptionId), None) is None:
            # The group is gone if the registry emptied its room before:
            # it unregisters the connections it aborts (they did not answer
            # its Close frame) before their onClose comes.
            group = shared.groups.get(member.subscriptionId)
            if group is not None and self._registry.leaveRoom(session.connId, group.room):
                del shared.groups[member.subscriptionId]
        if member.history is not None:
            history, member.history = member.history, None
            history.cancel()
        if shared.isEmpty() and self._shared.get(shared.key) is shared:
            del self._shared[shared.key]
            if shared.upstream is not None:
                shared.upstream.close()

    def _deliver(self, shared: _SharedSubscription, event: Event) -> None:
        """
        Deliver an event to every member of a shared subscription: one frame
        per group to its room, and to each member catching up on its own.
        """
        if (
            event.isExpired(self._clock.seconds())
            or self.policy.hides(event)
            or not shared.markDelivered(event.id)
        ):
            return
        self.eventsDelivered += 1
        tail = event.toJSON() + b"]"
        for group in tuple(shared.groups.values()):
            sent = self._registry.broadcastRoomText(group.room, group.prefix + tail)
            self._replies.countSent("EVENT", sent)
        limit = self.limits.maxCatchUpEvents
        for member in tuple(shared.catchingUp.values()):
            if len(member.arrived) >= limit:
                session = member.session
                self.leave(member)
                self._replies.closed(
                    session,
                    member.subscriptionId,
                    f"error: more than {limit} new events arrived while stored events were sent",
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


__all__ = ["RECENT_IDS", "Member", "SharedSubscriptions"]
