"""
The relay facade: a NIP-01 relay toward downstream clients, backed by a
L{relaypool.upstream.relaypool.RelayPool} and/or an event store.

It keeps each connection's L{Session}, parses what clients send, applies
the per-connection limits and NIP-42, and hands the rest on: C{REQ} and
C{CLOSE} to the L{SharedSubscriptions}, valid C{EVENT}s to the
L{EventAcceptor}; it answers C{COUNT} itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool._reactor import defaultReactor
from relaypool.errors import CountUnavailable, InvalidEvent, InvalidMessage
from relaypool.gateway.auth import expectedRelayURL, makeChallenge, verifyAuthEvent
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits, TokenBucket
from relaypool.gateway.negentropy import NegentropyServer
from relaypool.gateway.policy import EventPolicy
from relaypool.gateway.publishing import (
    DEFAULT_MAX_VERIFYING,
    VERIFY_AT_ONCE_BELOW,
    EventAcceptor,
    EventVerifier,
    verdict,
)
from relaypool.gateway.registry import ConnectionRegistry, ConnId
from relaypool.gateway.session import Replies, Session
from relaypool.gateway.subscriptions import SharedSubscriptions
from relaypool.interfaces import IEventStore, IPublisher, IRelayPool, IUpstreamSubscriptions
from relaypool.nostr.event import AUTH_KIND, Event
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import (
    ClientAuth,
    ClientClose,
    ClientCount,
    ClientEvent,
    ClientNegClose,
    ClientNegOpen,
    ClientReq,
    NegMessage,
    RelayAuth,
    RelayCount,
    parseClientMessage,
)
from relaypool.nostr.url import parseRelayURL

_log = Logger()

_VERBS: dict[type, str] = {
    ClientEvent: "EVENT",
    ClientReq: "REQ",
    ClientClose: "CLOSE",
    ClientCount: "COUNT",
    ClientAuth: "AUTH",
    ClientNegOpen: "NEG-OPEN",
    NegMessage: "NEG-MSG",
    ClientNegClose: "NEG-CLOSE",
}


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
    @ivar eventsBlocked: events refused by the event policy (C{blocked:}
        or C{restricted:}).
    @ivar syncsOpened: NIP-77 syncs answered from the store.
    @ivar syncsRefused: NIP-77 syncs ended with C{NEG-ERR} (bounds, idle
        timeout, malformed messages).
    @ivar messagesReceived: by verb (C{EVENT}, C{REQ}, C{CLOSE}, C{COUNT},
        C{AUTH}, C{NEG-OPEN}, C{NEG-MSG}, C{NEG-CLOSE}; C{invalid} for a
        message that could not be parsed), the messages received from
        clients.
    @ivar messagesSent: by verb (C{EVENT}, C{EOSE}, C{OK}, C{CLOSED},
        C{NOTICE}, C{COUNT}, C{AUTH}), the messages written or queued to
        clients (an event sent to a room counts once per member).
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
    eventsBlocked: int
    syncsOpened: int
    syncsRefused: int
    messagesReceived: dict[str, int]
    messagesSent: dict[str, int]


class RelayFacade:
    """
    The NIP-01 relay behaviour behind every downstream connection: shared
    subscriptions, publishing with honest C{OK}, C{COUNT}, NIP-42 and the
    per-connection limits.

    @ivar subscriptions: the L{SharedSubscriptions} of every connection.
    """

    def __init__(
        self,
        registry: ConnectionRegistry,
        pool: IRelayPool | None = None,
        store: IEventStore | None = None,
        outbox: IPublisher | None = None,
        limits: GatewayLimits = DEFAULT_LIMITS,
        quorum: int = 1,
        okPolicy: str = "quorum",
        authRequired: bool = False,
        relayURL: str | None = None,
        reactor: IReactorTime | None = None,
        policy: EventPolicy | None = None,
        onLatency: Callable[[str, float], None] | None = None,
        maxVerifying: int = DEFAULT_MAX_VERIFYING,
        upstream: IUpstreamSubscriptions | None = None,
    ) -> None:
        """
        @param registry: the registry the connections are registered in.
        @param pool: the L{relaypool.upstream.relaypool.RelayPool}, or L{None} to
            serve the store alone.
        @param store: an L{relaypool.interfaces.IEventStore}, or L{None}.
        @param outbox: an L{relaypool.store.outbox.OutboxPublisher} that publishes
            accepted events durably, or L{None} to publish through C{pool}.
        @param quorum: upstream acceptances an C{OK true} needs.
        @param okPolicy: one of L{relaypool.gateway.publishing.OK_POLICIES};
            C{"local"} needs a store.
        @param authRequired: require NIP-42 authentication before C{REQ},
            C{COUNT} and C{EVENT}.
        @param relayURL: the public URL authentication events must name; if
            L{None}, each connection's URL is derived from the C{Host} header
            it connected with (see L{expectedRelayURL}).
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        @param policy: the L{EventPolicy} (pubkey, event and kind lists,
            write-restricted mode); L{None} for one that refuses nothing.
        @param onLatency: called with a kind and seconds: C{"eose"} from a
            client's C{REQ} to the C{EOSE} sent to it, C{"fanout"} from a
            valid C{EVENT} handed to the publishing to its delivery to the
            matching subscriptions (see L{EventAcceptor}).
        @param maxVerifying: the bound of the L{EventVerifier}: C{EVENT}s
            (from every connection) waiting for their signature check; past
            it, an C{EVENT} is answered C{OK false "rate-limited: ..."}.
        @param upstream: where shared subscriptions subscribe upstream (a
            L{relaypool.interfaces.IClusterNode}); C{pool} if L{None}.
        @raise ValueError: for a policy that cannot work with the given
            pool and store.
        @raise InvalidRelayURL: if C{relayURL} is not a relay URL.
        """
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._registry = registry
        self._pool = pool
        self._store = store
        self.limits = limits
        self._replies = Replies(registry)
        self.subscriptions = SharedSubscriptions(
            registry, self._replies, pool, store, limits, reactor, onLatency, upstream
        )
        self._acceptor = EventAcceptor(
            self._replies,
            self.subscriptions.deliverLocal,
            pool,
            store,
            outbox,
            quorum,
            okPolicy,
            reactor,
            onLatency,
        )
        self._verifier = EventVerifier(reactor, maxVerifying)
        self.negentropy = NegentropyServer(self._replies, store, limits, reactor)
        self.authRequired = authRequired
        self.relayURL = None if relayURL is None else parseRelayURL(relayURL).url
        self._sessions: dict[ConnId, Session] = {}
        self._eventsPublished = 0
        self._eventsInvalid = 0
        self._rateLimited = 0
        self._eventsBlocked = 0
        self._received: dict[str, int] = {}
        self.deniedConnections = 0
        self.policy = EventPolicy()
        self.setPolicy(EventPolicy() if policy is None else policy)

    def setPolicy(self, policy: EventPolicy) -> None:
        """
        Replace the event policy at once, as a whole: the next C{EVENT} is
        judged by it, and the events it hides are no longer delivered to any
        subscription (events already sent stay sent).

        @param policy: the new L{EventPolicy}.
        """
        self.policy = policy
        self.subscriptions.policy = policy

    def setLimits(self, limits: GatewayLimits) -> None:
        """
        Apply new limits to every message from now on, also from the
        connections already open (their rates change, keeping the tokens
        they have, up to the new bursts).
        """
        self.limits = limits
        self.subscriptions.limits = limits
        self.negentropy.limits = limits
        for session in self._sessions.values():
            session.events.reconfigure(limits.eventsPerSecond, limits.eventBurst)
            session.reqs.reconfigure(limits.reqsPerSecond, limits.reqBurst)

    def setOkPolicy(self, okPolicy: str, quorum: int) -> None:
        """
        Change when an accepted C{EVENT} is answered C{OK true}, for the
        events accepted from now on (see L{EventAcceptor.setOkPolicy}).
        """
        self._acceptor.setOkPolicy(okPolicy, quorum)

    # --- connections --------------------------------------------------------

    def connect(self, connId: ConnId, host: str | None = None, secure: bool = False) -> Session:
        """
        Start serving a registered connection: sends the NIP-42 challenge
        when authentication is required.

        @param host: the C{Host} header of the connection's handshake.
        @param secure: whether the client reached the gateway over TLS.
        """
        limits = self.limits
        session = Session(
            connId,
            self._registry.claims(connId),
            TokenBucket(limits.eventsPerSecond, limits.eventBurst, self._reactor),
            TokenBucket(limits.reqsPerSecond, limits.reqBurst, self._reactor),
        )
        self._sessions[connId] = session
        if self.authRequired:
            session.challenge = makeChallenge()
            session.relayURL = expectedRelayURL(self.relayURL, host, secure)
            self._replies.send(session, RelayAuth(session.challenge).toJSON())
        return session

    def disconnect(self, session: Session) -> None:
        """
        Forget a connection: leave its subscriptions, closing the upstream
        subscriptions nobody else uses. Idempotent.
        """
        session.open = False
        self._sessions.pop(session.connId, None)
        self.subscriptions.leaveAll(session)
        self.negentropy.closeAll(session)

    def close(self) -> Deferred[None]:
        """
        Close every upstream subscription and stop the verifier thread (the
        gateway is stopping).

        @return: a Deferred firing once the verifier thread has ended.
        """
        for session in tuple(self._sessions.values()):
            self.disconnect(session)
        return self._verifier.stop()

    def notice(self, session: Session, message: str) -> None:
        """
        Send a C{NOTICE}.
        """
        self._replies.notice(session, message)

    def deliverLocal(self, event: Event) -> None:
        """
        Deliver an event accepted from a downstream client to every matching
        shared subscription.
        """
        self.subscriptions.deliverLocal(event)

    # --- inbound messages ---------------------------------------------------

    def handleMessage(self, session: Session, payload: bytes) -> None:
        """
        Handle one text message from a client.
        """
        if len(payload) > self.limits.maxMessageSize:
            self._countReceived("invalid")
            self.notice(
                session,
                f"invalid: message of {len(payload)} bytes is over the limit of "
                f"{self.limits.maxMessageSize} bytes",
            )
            return
        try:
            message = parseClientMessage(payload)
        except InvalidMessage as e:
            self._countReceived("invalid")
            if e.subscriptionId is not None and e.negentropy:
                self.negentropy.refuse(session, e.subscriptionId, str(e))
            elif e.subscriptionId is not None:
                self._replies.closed(session, e.subscriptionId, str(e))
            else:
                self.notice(session, str(e))
            return
        except InvalidEvent as e:
            self._countReceived("invalid")
            if e.eventId is not None:
                self._eventsInvalid += 1
                self._replies.ok(session, e.eventId, False, str(e))
            else:
                self.notice(session, str(e))
            return
        self._countReceived(_VERBS[type(message)])
        if isinstance(message, ClientReq):
            self._handleReq(session, message)
        elif isinstance(message, ClientEvent):
            self._handleEvent(session, message.event)
        elif isinstance(message, ClientClose):
            member = session.subscriptions.get(message.subscriptionId)
            if member is not None:
                self.subscriptions.leave(member)
        elif isinstance(message, ClientCount):
            self._handleCount(session, message)
        elif isinstance(message, ClientAuth):
            self._handleAuth(session, message.event)
        elif isinstance(message, ClientNegOpen):
            refusal = self._refuseQuery(session, message.subscriptionId, (message.filter,))
            if refusal is None:
                self.negentropy.open(session, message)
            else:
                self.negentropy.refuse(session, message.subscriptionId, refusal)
        elif isinstance(message, NegMessage):
            self.negentropy.message(session, message)
        elif isinstance(message, ClientNegClose):
            self.negentropy.close(session, message.subscriptionId)

    def _countReceived(self, verb: str) -> None:
        self._received[verb] = self._received.get(verb, 0) + 1

    def _refuseQuery(
        self, session: Session, subscriptionId: str, filters: tuple[Filter, ...]
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

    def _handleReq(self, session: Session, message: ClientReq) -> None:
        subscriptionId = message.subscriptionId
        refusal = self._refuseQuery(session, subscriptionId, message.filters)
        if refusal is None:
            existing = session.subscriptions.get(subscriptionId)
            if existing is not None:
                self.subscriptions.leave(existing)
            elif len(session.subscriptions) >= self.limits.maxSubscriptions:
                refusal = (
                    f"blocked: at most {self.limits.maxSubscriptions} open subscriptions "
                    "per connection"
                )
        if refusal is not None:
            self._replies.closed(session, subscriptionId, refusal)
            return
        self.subscriptions.open(session, subscriptionId, message.filters)

    def _handleEvent(self, session: Session, event: Event) -> None:
        self._eventsPublished += 1
        if self.authRequired and not session.pubkeys:
            self._replies.ok(session, event.id, False, "auth-required: authenticate with NIP-42 first")
            return
        if not session.events.take():
            self._rateLimited += 1
            self._replies.ok(
                session,
                event.id,
                False,
                f"rate-limited: at most {self.limits.eventsPerSecond:g} events per second",
            )
            return
        if not self._verifier.pending and self._acceptor.inFlight < VERIFY_AT_ONCE_BELOW:
            # Light load: checked at once, which costs the reactor thread
            # less than a hand-off to the verifier thread and back.
            self._verified(session, event, verdict(event))
        elif not self._verifier.verify(event, partial(self._verified, session, event)):
            self._rateLimited += 1
            self._replies.ok(
                session,
                event.id,
                False,
                f"rate-limited: {self._verifier.maxPending} events are waiting for their "
                "signature check already",
            )

    def _verified(self, session: Session, event: Event, invalid: InvalidEvent | None) -> None:
        """
        Judge and accept C{event} from C{session} once its id and signature
        were checked.
        """
        if invalid is not None:
            self._refuseInvalid(session, event, str(invalid))
            return
        if event.kind == AUTH_KIND:
            self._refuseInvalid(
                session, event, f"invalid: kind {AUTH_KIND} events are only for AUTH messages"
            )
            return
        if event.isExpired(self._reactor.seconds()):
            self._refuseInvalid(session, event, "invalid: event has expired")
            return
        refusal = self.policy.refusal(event)
        if refusal is not None:
            self._eventsBlocked += 1
            self._replies.ok(session, event.id, False, refusal)
            return
        self._acceptor.accept(session, event)

    def _refuseInvalid(self, session: Session, event: Event, reason: str) -> None:
        self._eventsInvalid += 1
        self._replies.ok(session, event.id, False, reason)

    def _handleCount(self, session: Session, message: ClientCount) -> None:
        subscriptionId = message.subscriptionId
        refusal = self._refuseQuery(session, subscriptionId, message.filters)
        if refusal is not None:
            self._replies.closed(session, subscriptionId, refusal)
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
            self._replies.send(session, RelayCount(subscriptionId, *result).toJSON())

        def failed(failure: Failure) -> None:
            _log.failure("COUNT failed", failure)
            self._replies.closed(session, subscriptionId, "error: could not count events")

        d.addCallbacks(counted, failed)

    def _countStored(self, filters: Sequence[Filter]) -> Deferred[tuple[int, bool]]:
        assert self._store is not None, "counted from the store only when there is one"
        return maybeDeferred(self._store.count, filters).addCallback(lambda count: (count, False))

    def _handleAuth(self, session: Session, event: Event) -> None:
        if session.challenge is None:
            self._replies.ok(session, event.id, False, "restricted: this relay sent no AUTH challenge")
            return
        try:
            verifyAuthEvent(event, session.challenge, session.relayURL, self._reactor.seconds())
        except InvalidEvent as e:
            self._replies.ok(session, event.id, False, str(e))
            return
        session.pubkeys.add(event.pubkey)
        session.claims.pubkey = event.pubkey
        self._replies.ok(session, event.id, True, "")

    # --- statistics ---------------------------------------------------------

    def stats(self) -> FacadeStats:
        """
        @return: a snapshot of the facade's counters.
        """
        replies = self._replies
        return FacadeStats(
            sharedSubscriptions=self.subscriptions.sharedCount(),
            subscriptions=sum(len(s.subscriptions) for s in self._sessions.values()),
            catchingUp=self.subscriptions.catchingUpCount(),
            eventsPublished=self._eventsPublished,
            eventsInvalid=self._eventsInvalid,
            eventsDelivered=self.subscriptions.eventsDelivered,
            okAccepted=replies.okAccepted,
            okRejected=replies.okRejected,
            rateLimited=self._rateLimited,
            notices=replies.notices,
            deniedConnections=self.deniedConnections,
            eventsBlocked=self._eventsBlocked,
            syncsOpened=self.negentropy.syncsOpened,
            syncsRefused=self.negentropy.syncsRefused,
            messagesReceived=dict(self._received),
            messagesSent=dict(replies.sent),
        )


__all__ = ["FacadeStats", "RelayFacade"]
