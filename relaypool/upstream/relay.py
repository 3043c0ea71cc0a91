"""
One upstream Nostr relay: NIP-01 over the connections a
L{UniformMultiplexer} keeps to the relay's addresses.

The connections live in a L{Pool} over that multiplexer, the one home of
open connections, of picking one (round-robin, healthy ones first) and of
their health: every exchange (EVENT to OK, REQ to EOSE, COUNT to COUNT, the
keepalive ping to its pong) is recorded on the connection that carried it.

A L{Relay} owns the per-relay protocol state: where each subscription's REQ
is live (and moving it when a connection drops, with C{since} set to the
newest event seen), NIP-42 AUTH and the one retry it allows, C{rate-limited}
back-off, the relay's NIP-11 limits, and a bounded outbound queue. What spans
relays (dedup, verification, EOSE merging, quorum) is the
L{relaypool.upstream.relaypool.RelayPool}'s, told through the L{RelayOwner} calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from relaypool._reactor import TimeTCPReactor
from relaypool.errors import InvalidEvent, InvalidMessage
from relaypool.interfaces import INameService
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
    RelayClosed,
    RelayCount,
    RelayEOSE,
    RelayEvent,
    RelayMessage,
    RelayNegErr,
    RelayNotice,
    RelayOK,
    decodeMessage,
    isRelayFailure,
    reasonPrefix,
    relayMessageFromList,
)
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.nostr.url import parseRelayURL
from relaypool.transport.health import HealthPolicy
from relaypool.transport.mux import Backoff, UniformMultiplexer
from relaypool.transport.pool import Pool
from relaypool.transport.receiving import WholeMessages
from relaypool.upstream.following import follow

log = Logger()

_NO_COUNT = "unsupported: the relay's NIP-11 document does not list NIP-45 (COUNT)"


class RelayOwner(Protocol):
    """
    What a L{Relay} tells the pool that owns it. Every call is synchronous.
    """

    def relayEvent(self, relay: Relay, wireId: str, subscriptionId: str, event: Event) -> None:
        """
        An event arrived on the REQ C{wireId} of C{subscriptionId}. Once it
        is found valid (now or after its verification), the owner calls
        L{Relay.eventAccepted} so that the relay counts its C{created_at}
        for resubscription.
        """

    def relayDuplicate(
        self, relay: Relay, wireId: str, subscriptionId: str, eventId: str, raw: dict[str, Any]
    ) -> bool:
        """
        Before an EVENT is built and checked: return C{True} if the owner
        takes the copy C{raw} (decoded, unchecked) as a duplicate, either
        because C{eventId} was already verified and delivered to
        C{subscriptionId} or because a copy of it is being verified for
        C{subscriptionId} (C{raw} is then checked only if that copy turns
        out invalid); the relay then drops it unparsed. As for
        L{relayEvent}, the owner calls L{Relay.eventAccepted} once the
        event is known valid.
        """

    def relayEOSE(self, relay: Relay, subscriptionId: str) -> None:
        """Every REQ of the subscription got its EOSE from this relay."""

    def relayClosed(self, relay: Relay, subscriptionId: str, message: str) -> None:
        """The relay closed the subscription for good."""

    def relayOK(self, relay: Relay, eventId: str, accepted: bool, message: str) -> None:
        """
        The relay's final answer to a publish (after any AUTH retry):
        C{accepted} is true for C{OK true} and for any C{duplicate:} answer
        (the relay has the event).
        """

    def relayCount(self, relay: Relay, subscriptionId: str, count: int, approximate: bool) -> None:
        """The relay answered a COUNT."""

    def relayOther(self, relay: Relay, message: RelayMessage) -> None:
        """A message the relay layer does not handle itself (NOTICE, unknown subscriptions)."""

    def relayConnectionChanged(self, relay: Relay) -> None:
        """A connection of the relay opened or closed."""


class NegentropyPeer(Protocol):
    """
    The initiator of a NIP-77 sync with a relay: hears the relay's answers
    on the connection the sync is pinned to.
    """

    def negentropyMessage(self, message: bytes) -> None:
        """The relay answered with C{NEG-MSG}."""

    def negentropyError(self, reason: str) -> None:
        """
        The sync ended: the relay's C{NEG-ERR} reason, C{"notice: ..."} when
        a relay not known to speak NIP-77 answered with a C{NOTICE}, or
        C{"error: relaypool: ..."} when the connection closed.
        """


@dataclass(slots=True, eq=False)
class _NegentropyExchange:
    peer: NegentropyPeer
    connection: RelayConnection
    sentAt: float


# Autobahn's own bases disagree on two attributes' types (mypy sees it
# once the class has a second base).
class RelayConnection(WholeMessages, WebSocketClientProtocol):  # type: ignore[misc]
    """
    One WebSocket connection to a relay; everything it reads goes to its
    L{Relay}.
    """

    factory: _RelayFactory
    challenge: str | None = None
    authState: Deferred[bool] | None = None
    authEventId: str | None = None
    lastSeen: float = 0.0
    subscriptionCount: int = 0
    pingSentAt: float | None = None
    live: bool = False

    def onConnect(self, response: Any) -> None:
        self.lastSeen = self.factory.relay.reactor.seconds()

    def onOpen(self) -> None:
        self._writable = _WriteFlow(self.factory.relay)
        self.transport.registerProducer(self._writable, True)  # type: ignore[union-attr]
        # is_open fires right after onOpen, once the multiplexer (and so the
        # pool) counts the connection as open.
        self.is_open.addCallback(self._opened)

    def _opened(self, result: object) -> object:
        self.factory.relay._connectionOpened(self)
        return result

    def dataReceived(self, data: bytes) -> None:
        self.lastSeen = self.factory.relay.reactor.seconds()
        super().dataReceived(data)

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
        relay = self.factory.relay
        if isBinary:
            relay._protocolError(self, "binary frame")
        else:
            relay._frameReceived(self, payload)

    def onPong(self, payload: bytes) -> None:
        relay = self.factory.relay
        self.lastSeen = relay.reactor.seconds()
        relay._pongReceived(self)

    def ping(self) -> None:
        """
        Send a keepalive ping; its pong is the connection's health probe.
        """
        if self.pingSentAt is None:
            self.pingSentAt = self.factory.relay.reactor.seconds()
        self.sendPing()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.relay._connectionClosed(self)

    def sendText(self, data: bytes) -> None:
        """
        Send C{data} (UTF-8 JSON) as one text message.
        """
        self.sendMessage(data)  # type: ignore[no-untyped-call]

    def pauseReading(self) -> None:
        """
        Stop reading from the socket.
        """
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeReading(self) -> None:
        """
        Read from the socket again.
        """
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def isWritable(self) -> bool:
        """
        @return: whether the transport's write buffer is below its high-water
            mark (the relay reads what we send fast enough).
        """
        flow = getattr(self, "_writable", None)
        return flow is not None and not flow.paused


@implementer(IPushProducer)
class _WriteFlow:
    """
    Registered on a connection's transport to learn when its write buffer is
    full (paused) and drained again (resumed).
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.relay._flushOutbound()

    def stopProducing(self) -> None:
        self.paused = True


class _RelayFactory(WebSocketClientFactory):
    protocol = RelayConnection  # type: ignore[assignment]
    # Not "Starting factory ..." on every connection attempt: the slot's
    # state changes are logged instead.
    noisy = False

    def __init__(self, relay: Relay, url: str, maxMessageSize: int) -> None:
        super().__init__(url)  # type: ignore[no-untyped-call]
        self.relay = relay
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=maxMessageSize,
            maxFramePayloadSize=maxMessageSize,
            autoPingInterval=0,
            # orjson rejects what is not UTF-8 when it parses each message.
            utf8validateIncoming=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
        )


@dataclass(slots=True, eq=False)
class _WireSubscription:
    """
    One REQ as sent to the relay: a pool subscription is one or several of
    these (several when the relay's C{max_filters} splits its filters).
    """

    wireId: str
    subscriptionId: str
    filters: tuple[Filter, ...]
    isCount: bool = False
    connection: RelayConnection | None = None
    newest: int | None = None
    eosed: bool = False
    everSent: bool = False
    authRetried: bool = False
    queued: bool = False
    sentAt: float = 0.0


@dataclass(slots=True, eq=False)
class _LogicalSubscription:
    subscriptionId: str
    wires: list[_WireSubscription] = field(default_factory=list)
    reportedEOSE: bool = False


@dataclass(slots=True, eq=False)
class _PendingPublish:
    event: Event
    sentAt: float
    retried: bool = False


@dataclass(slots=True)
class RelayCounters:
    """
    Running counts for one relay; the pool reads them for its stats.
    """

    reconnects: int = 0
    opens: int = 0
    eventsReceived: int = 0
    eventsUnique: int = 0
    eventsInvalid: int = 0
    okAccepted: int = 0
    okRejected: int = 0
    outboundDropped: int = 0
    protocolErrors: int = 0


class Relay:
    """
    One upstream relay: its connections, subscriptions and publishes.

    @ivar url: the normalized relay URL.
    @ivar pool: the L{Pool} holding the relay's connections over C{mux}:
        it picks the connection for each message and keeps each
        connection's health. Recorded on the connection that carried them:
        the latency of OK, EOSE (the first phase of a REQ), COUNT and the
        keepalive pong; errors for invalid events, malformed messages,
        and answers saying the relay failed (an C{OK false} or C{CLOSED}
        with C{"error: ..."} or no known prefix, see L{isRelayFailure}).
        Refusals by the relay's rules (C{blocked:}, C{invalid:}, C{pow:},
        C{restricted:}, C{mute:}, C{rate-limited:}, C{auth-required:}) and
        C{duplicate:} answers are answers in time, never health errors.
        The relay's own health (L{healthScore}, L{latency}) is the
        aggregate of its connections. The latencies of OK (every final
        answer), EOSE and COUNT also go to the optional C{onLatency(kind,
        seconds)} observer, C{kind} being C{"ok"}, C{"eose"} or C{"count"}.
    """

    def __init__(
        self,
        reactor: TimeTCPReactor,
        url: str,
        owner: RelayOwner,
        nameService: INameService,
        connectionsPerAddress: int = 1,
        backoff: Backoff = Backoff(),
        tls: Any = None,
        maxMessageSize: int = 1 << 20,
        outboundCapacity: int = 64,
        pendingRequestCapacity: int = 256,
        signingKey: bytes | None = None,
        healthPolicy: HealthPolicy = HealthPolicy(),
        rateLimitBackoff: Backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.0),
        onStateChange: Callable[[Any], None] | None = None,
        onLatency: Callable[[str, float], None] | None = None,
    ) -> None:
        relayURL = parseRelayURL(url)
        self._onLatency = onLatency
        self.url = relayURL.url
        self.reactor = reactor
        self._owner = owner
        self._maxMessageSize = maxMessageSize
        self._outboundCapacity = outboundCapacity
        self._pendingRequestCapacity = pendingRequestCapacity
        self._signingKey = signingKey
        self._rateLimitBackoff = rateLimitBackoff
        self.counters = RelayCounters()
        self.limitation = Limitation()
        self.information: RelayInformation | None = None
        self.connectedSince: float | None = None
        self.downSince: float | None = reactor.seconds()
        self._holdingForInformation = False
        self.mux = UniformMultiplexer(
            reactor,
            nameService,
            relayURL.name,
            lambda address: _RelayFactory(self, self.url, maxMessageSize),
            connectionsPerAddress=connectionsPerAddress,
            backoff=backoff,
            tls=tls,
            onStateChange=lambda slot: self._slotChanged(slot, onStateChange),
        )
        self.pool = Pool(reactor, self.mux, healthPolicy=healthPolicy)
        # The connection whose frame was handled last: the one an error the
        # owner reports while handling it (see recordError) is counted on.
        self._delivering: RelayConnection | None = None
        self._outbound: deque[bytes] = deque()
        self._subscriptions: dict[str, _LogicalSubscription] = {}
        self._wires: dict[str, _WireSubscription] = {}
        self._waitingWires: deque[_WireSubscription] = deque()
        self._publishes: dict[str, _PendingPublish] = {}
        self._negentropy: dict[str, _NegentropyExchange] = {}
        self.negentropyRefused: str | None = None
        self._rateLimitedUntil = 0.0
        self._rateLimitStrikes = 0
        self._rateLimitCall: Any = None
        self._readingPaused = False
        self._stopped = False
        self.pendingInformation: Deferred[Any] | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """
        Start connecting.
        """
        self.pool.startService()

    def stop(self) -> Deferred[None]:
        """
        Close every connection with a close handshake.

        @return: a Deferred firing when they are all closed.
        """
        self._stopped = True
        if self.pendingInformation is not None:
            self.pendingInformation.cancel()
            self.pendingInformation = None
        if self._rateLimitCall is not None and self._rateLimitCall.active():
            self._rateLimitCall.cancel()
        self._rateLimitCall = None
        d: Deferred[None] = self.pool.stopService()
        return d

    def holdForInformation(self) -> None:
        """
        Keep REQs and COUNTs waiting until L{applyInformation},
        L{applyLimitation} or L{informationUnavailable} is called, so the
        relay's NIP-11 limits apply from the first REQ.
        """
        self._holdingForInformation = True

    def applyInformation(self, information: RelayInformation) -> None:
        """
        Keep the relay's NIP-11 document (its C{supported_nips} say whether
        it can count, see L{supportsCount}) and apply its limits. COUNTs
        waiting for the document are refused if it says the relay cannot
        count.
        """
        self.information = information
        if self.supportsCount() is False:
            self._refuseCounts(lambda wire: wire.queued and not wire.everSent, _NO_COUNT)
        self.applyLimitation(information.limitation)

    def applyLimitation(self, limitation: Limitation) -> None:
        """
        Use the relay's NIP-11 limits from now on (C{max_subscriptions},
        C{max_filters}, C{max_limit}, C{max_message_length}). Subscriptions
        none of whose REQs went out yet are cut again under these limits.
        """
        self.limitation = limitation
        self._recutUnsent()
        self.informationUnavailable()

    def informationUnavailable(self) -> None:
        """
        Stop waiting for the relay's NIP-11 document; send what waited.
        """
        self._holdingForInformation = False
        self._placeWaiting()

    def _refuseCounts(self, which: Callable[[_WireSubscription], bool], message: str) -> None:
        """
        End the COUNTs whose wire matches C{which}: the owner hears that the
        relay closed them with C{message}.
        """
        refused = dict.fromkeys(
            w.subscriptionId for w in self._wires.values() if w.isCount and which(w)
        )
        for subscriptionId in refused:
            self.unsubscribe(subscriptionId)
            self._owner.relayClosed(self, subscriptionId, message)

    def supportsCount(self) -> bool | None:
        """
        @return: C{True} if the relay's NIP-11 document lists NIP-45,
            C{False} if it lists its supported NIPs without 45, L{None} when
            unknown (no document, or no C{supported_nips} in it).
        """
        if self.information is None or not self.information.supportedNips:
            return None
        return 45 in self.information.supportedNips

    def supportsNegentropy(self) -> bool | None:
        """
        @return: C{False} if the relay's NIP-11 document lists its NIPs
            without 77, or it answered a C{NEG-OPEN} in a way that says it
            does not speak NIP-77 (see L{negentropyRefused}); C{True} if the
            document lists 77; L{None} when unknown.
        """
        if self.negentropyRefused is not None:
            return False
        if self.information is None or not self.information.supportedNips:
            return None
        return 77 in self.information.supportedNips

    # --- NIP-77 -------------------------------------------------------------

    def openNegentropy(
        self, subscriptionId: str, filter: Filter, message: bytes, peer: NegentropyPeer
    ) -> bool:
        """
        Send C{NEG-OPEN} on a healthy open connection; the sync stays on
        that connection (its state lives there on the relay's side) and
        C{peer} hears the answers.

        @return: C{False} when no connection is open (nothing was sent).
        """
        connection: RelayConnection | None = self.pool.pick()
        if connection is None:
            return False
        self.closeNegentropy(subscriptionId)
        self._negentropy[subscriptionId] = _NegentropyExchange(peer, connection, self.reactor.seconds())
        connection.sendText(ClientNegOpen(subscriptionId, filter, message).toJSON())
        return True

    def sendNegentropy(self, subscriptionId: str, message: bytes) -> None:
        """
        Send the next C{NEG-MSG} of an open sync.
        """
        exchange = self._negentropy[subscriptionId]
        exchange.sentAt = self.reactor.seconds()
        exchange.connection.sendText(NegMessage(subscriptionId, message).toJSON())

    def closeNegentropy(self, subscriptionId: str) -> None:
        """
        End a sync with C{NEG-CLOSE} (if it is open); its peer hears nothing
        more.
        """
        exchange = self._negentropy.pop(subscriptionId, None)
        if exchange is not None and exchange.connection.live:
            exchange.connection.sendText(ClientNegClose(subscriptionId).toJSON())

    def _endNegentropy(self, which: Callable[[_NegentropyExchange], bool], reason: str) -> None:
        for subscriptionId, exchange in list(self._negentropy.items()):
            if which(exchange):
                del self._negentropy[subscriptionId]
                exchange.peer.negentropyError(reason)

    def _negentropyReceived(self, connection: RelayConnection, message: NegMessage | RelayNegErr) -> None:
        exchange = self._negentropy.get(message.subscriptionId)
        if exchange is None or exchange.connection is not connection:
            self._protocolError(connection, f"{type(message).__name__} for no open sync")
            return
        self.pool.recordSuccess(connection, self.reactor.seconds() - exchange.sentAt)
        if isinstance(message, NegMessage):
            exchange.peer.negentropyMessage(message.message)
        else:
            del self._negentropy[message.subscriptionId]
            exchange.peer.negentropyError(message.reason)

    def _slotChanged(self, slot: Any, onStateChange: Callable[[Any], None] | None) -> None:
        if onStateChange is not None:
            onStateChange(slot)
        self._owner.relayConnectionChanged(self)

    # --- state --------------------------------------------------------------

    def isStopped(self) -> bool:
        """
        @return: whether L{stop} was called: the relay's connections are
            closed or closing for good and it never reconnects.
        """
        return self._stopped

    def isConnected(self) -> bool:
        """
        @return: whether at least one connection is open.
        """
        return bool(self.pool.connections())

    def openConnections(self) -> list[RelayConnection]:
        """
        @return: the open connections (the pool's).
        """
        return self.pool.connections()

    def healthScore(self) -> float:
        """
        The relay's health, the aggregate of its connections: the mean,
        over the relay's addresses, of the pool's per-address aggregate
        (which counts every exchange on every connection to that address,
        surviving reconnects while the address is current).

        @return: a score from 100 (healthy, also before any exchange) to 0.
        """
        aggregates = self.pool.addressMetrics().values()
        if not aggregates:
            return 100.0
        return sum(m.healthScore() for m in aggregates) / len(aggregates)

    def latency(self) -> float | None:
        """
        @return: the mean, over the relay's addresses with a reply, of the
            pool's per-address latency average in seconds; L{None} before
            any reply.
        """
        averages = [
            m.latencyEwma for m in self.pool.addressMetrics().values() if m.latencyEwma is not None
        ]
        if not averages:
            return None
        return sum(averages) / len(averages)

    def recordError(self) -> None:
        """
        Count an error (an invalid event the owner dropped) against the
        connection whose message is being handled, if any.
        """
        if self._delivering is not None:
            self.pool.recordError(self._delivering)

    def state(self) -> str:
        """
        @return: C{"open"} when a connection is open, else the most hopeful
            slot state (C{"connecting"}, C{"backing-off"}, C{"draining"}), or
            C{"closed"} when stopped or without addresses.
        """
        if self.pool.connections():
            return "open"
        if self._stopped:
            return "closed"
        states = {slot.state for slot in self.mux.slots()}
        for state in ("connecting", "backing-off", "draining"):
            if state in states:
                return state
        return "closed"

    def outboundQueued(self) -> int:
        """
        @return: messages waiting in the outbound queue.
        """
        return len(self._outbound)

    def waitingSubscriptions(self) -> int:
        """
        @return: REQs waiting for the relay's C{max_subscriptions} to allow them.
        """
        return len(self._waitingWires)

    # --- flow control -------------------------------------------------------

    def pauseReading(self) -> None:
        """
        Stop reading from every connection (the pool's inbound queue is full).
        """
        self._readingPaused = True
        for connection in self.pool.connections():
            connection.pauseReading()

    def resumeReading(self) -> None:
        """
        Read again from every connection.
        """
        self._readingPaused = False
        for connection in self.pool.connections():
            connection.resumeReading()

    # --- outbound -----------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """
        Send a raw client message on any open connection.

        When no connection is open, the relay is backing off after
        C{rate-limited}, or the connections' write buffers are full, the
        message waits in the outbound queue (at most C{outboundCapacity}
        messages, sent in order as soon as possible). When that queue is full
        the message is refused and counted in C{outboundDropped}.

        @return: C{True} if sent or queued, C{False} if refused.
        """
        if len(data) > self._messageLimit():
            self.counters.outboundDropped += 1
            return False
        if not self._outbound:
            connection = self._writableConnection()
            if connection is not None:
                connection.sendText(data)
                return True
        if len(self._outbound) >= self._outboundCapacity:
            self.counters.outboundDropped += 1
            return False
        self._outbound.append(data)
        return True

    def _writableConnection(self) -> RelayConnection | None:
        if self.reactor.seconds() < self._rateLimitedUntil:
            return None
        connection: RelayConnection | None = self.pool.pick(RelayConnection.isWritable)
        return connection

    def _flushOutbound(self) -> None:
        while self._outbound:
            connection = self._writableConnection()
            if connection is None:
                return
            connection.sendText(self._outbound.popleft())

    def _messageLimit(self) -> int:
        limit = self.limitation.maxMessageLength
        if isinstance(limit, int) and limit > 0:
            return limit
        return self._maxMessageSize

    # --- subscriptions ------------------------------------------------------

    def subscribe(self, subscriptionId: str, filters: Sequence[Filter]) -> None:
        """
        Open C{subscriptionId} on this relay, now or as soon as a connection
        (and the relay's C{max_subscriptions}) allows.
        """
        self._openLogical(subscriptionId, tuple(filters), isCount=False)

    def count(self, subscriptionId: str, filters: Sequence[Filter]) -> None:
        """
        Send a NIP-45 COUNT for C{filters}; the owner hears the answer
        through C{relayCount}, or C{relayClosed} when the relay refuses it.

        A relay whose NIP-11 document lists its NIPs without 45 is not asked:
        the owner hears C{relayClosed} at once (also when the document
        arrives while the COUNT waits for it).
        """
        if self.supportsCount() is False:
            self.unsubscribe(subscriptionId)
            self._owner.relayClosed(self, subscriptionId, _NO_COUNT)
            return
        self._openLogical(subscriptionId, tuple(filters), isCount=True)

    def _openLogical(self, subscriptionId: str, filters: tuple[Filter, ...], isCount: bool) -> None:
        if subscriptionId in self._subscriptions:
            self.unsubscribe(subscriptionId)
        logical = _LogicalSubscription(subscriptionId)
        self._subscriptions[subscriptionId] = logical
        for wire in self._cut(logical, filters, isCount):
            self._place(wire)

    def _cut(
        self, logical: _LogicalSubscription, filters: tuple[Filter, ...], isCount: bool
    ) -> list[_WireSubscription]:
        """
        Make the wire REQs (or the one COUNT) of C{logical} for C{filters}
        under the relay's current limits and register them.

        A COUNT is never split (counts of OR'd filters cannot be added up):
        one the relay's C{max_filters} would split gets no wire and the
        owner hears that the relay closed it.
        """
        chunks = self._chunks(filters)
        if isCount and len(chunks) > 1:
            del self._subscriptions[logical.subscriptionId]
            self._owner.relayClosed(
                self,
                logical.subscriptionId,
                "error: relaypool: COUNT has more filters than the relay's max_filters",
            )
            return []
        wires = []
        for index, chunk in enumerate(chunks):
            wireId = logical.subscriptionId if len(chunks) == 1 else f"{logical.subscriptionId}:{index}"
            wire = _WireSubscription(wireId, logical.subscriptionId, chunk, isCount=isCount)
            logical.wires.append(wire)
            self._wires[wireId] = wire
            wires.append(wire)
        return wires

    def _recutUnsent(self) -> None:
        """
        Cut again, under the limits just learnt, every subscription none of
        whose wires was sent yet (they were cut before the limits were known
        and all wait in the queue), keeping their place in the queue.
        """
        recut: dict[str, list[_WireSubscription]] = {}
        for logical in list(self._subscriptions.values()):
            if not logical.wires or any(w.everSent or not w.queued for w in logical.wires):
                continue
            old = logical.wires
            for wire in old:
                del self._wires[wire.wireId]
            logical.wires = []
            filters = tuple(f for wire in old for f in wire.filters)
            recut[logical.subscriptionId] = self._cut(logical, filters, old[0].isCount)
        if not recut:
            return
        waiting: deque[_WireSubscription] = deque()
        for wire in self._waitingWires:
            if wire.subscriptionId not in recut:
                waiting.append(wire)
                continue
            for new in recut.pop(wire.subscriptionId):
                new.queued = True
                waiting.append(new)
        self._waitingWires = waiting

    def _chunks(self, filters: tuple[Filter, ...]) -> list[tuple[Filter, ...]]:
        maxLimit = self.limitation.maxLimit
        if isinstance(maxLimit, int) and maxLimit > 0:
            filters = tuple(
                f.withLimit(min(f.limit, maxLimit) if f.limit is not None else maxLimit)
                for f in filters
            )
        size = self.limitation.maxFilters
        if not isinstance(size, int) or size <= 0 or len(filters) <= size:
            return [filters]
        return [filters[i : i + size] for i in range(0, len(filters), size)]

    def unsubscribe(self, subscriptionId: str) -> None:
        """
        Close C{subscriptionId} on this relay (sends CLOSE where it is live).
        """
        logical = self._subscriptions.pop(subscriptionId, None)
        if logical is None:
            return
        for wire in logical.wires:
            self._wires.pop(wire.wireId, None)
            if wire.queued:
                self._waitingWires.remove(wire)
                wire.queued = False
            if wire.connection is not None:
                if not wire.isCount and wire.connection.live:
                    wire.connection.sendText(ClientClose(wire.wireId).toJSON())
                wire.connection.subscriptionCount -= 1
                wire.connection = None
        self._placeWaiting()

    def _place(self, wire: _WireSubscription) -> None:
        connection = self._connectionWithRoom()
        if connection is None or self.reactor.seconds() < self._rateLimitedUntil:
            if len(self._waitingWires) >= self._pendingRequestCapacity:
                self._wireFinished(wire, "error: relaypool: too many subscriptions waiting for this relay")
                return
            wire.queued = True
            self._waitingWires.append(wire)
            return
        self._sendREQ(wire, connection)

    def _connectionWithRoom(self) -> RelayConnection | None:
        if self._holdingForInformation:
            return None
        limit = self.limitation.maxSubscriptions
        best: RelayConnection | None = None
        for connection in self.pool.usableConnections():
            if isinstance(limit, int) and limit > 0 and connection.subscriptionCount >= limit:
                continue
            if best is None or connection.subscriptionCount < best.subscriptionCount:
                best = connection
        return best

    def _sendREQ(self, wire: _WireSubscription, connection: RelayConnection) -> None:
        filters = wire.filters
        if wire.everSent and wire.newest is not None and not wire.isCount:
            newest = wire.newest
            filters = tuple(
                f.withSince(max(newest, f.since or 0)).withLimit(None) for f in filters
            )
        message = (
            ClientCount(wire.wireId, filters) if wire.isCount else ClientReq(wire.wireId, filters)
        ).toJSON()
        if len(message) > self._messageLimit():
            self._wireFinished(wire, "error: relaypool: REQ is longer than the relay's max_message_length")
            return
        wire.connection = connection
        wire.everSent = True
        wire.sentAt = self.reactor.seconds()
        connection.subscriptionCount += 1
        connection.sendText(message)

    def _placeWaiting(self) -> None:
        while self._waitingWires:
            if self.reactor.seconds() < self._rateLimitedUntil:
                return
            connection = self._connectionWithRoom()
            if connection is None:
                return
            wire = self._waitingWires.popleft()
            wire.queued = False
            self._sendREQ(wire, connection)

    def _release(self, wire: _WireSubscription) -> None:
        if wire.connection is not None:
            wire.connection.subscriptionCount -= 1
            wire.connection = None

    def _wireFinished(self, wire: _WireSubscription, closedMessage: str | None) -> None:
        """
        A wire REQ got its EOSE (C{closedMessage} None) or was closed; tell
        the owner once every wire of the logical subscription is done.
        """
        logical = self._subscriptions.get(wire.subscriptionId)
        if closedMessage is not None:
            self._wires.pop(wire.wireId, None)
            self._release(wire)
            if logical is not None:
                logical.wires.remove(wire)
                self._placeWaiting()
                if not logical.wires:
                    del self._subscriptions[wire.subscriptionId]
                    self._owner.relayClosed(self, wire.subscriptionId, closedMessage)
                    return
        else:
            wire.eosed = True
        if logical is None or logical.reportedEOSE:
            return
        if all(w.eosed for w in logical.wires):
            logical.reportedEOSE = True
            self._owner.relayEOSE(self, wire.subscriptionId)

    # --- publish ------------------------------------------------------------

    def publish(self, event: Event) -> bool:
        """
        Send C{event}; the owner hears the relay's answer through C{relayOK}.

        @return: C{False} if the message could not be sent or queued (the
            owner should count the relay as rejecting it).
        """
        self._publishes[event.id] = _PendingPublish(event, self.reactor.seconds())
        if self.send(ClientEvent(event).toJSON()):
            return True
        del self._publishes[event.id]
        return False

    def forgetPublish(self, eventId: str) -> None:
        """
        Stop waiting for an OK for C{eventId} (the pool's publish finished).
        """
        self._publishes.pop(eventId, None)

    # --- connection events (from RelayConnection) ---------------------------

    def _connectionOpened(self, connection: RelayConnection) -> None:
        if self._stopped:
            connection.sendClose(1001)
            return
        connection.live = True
        self.counters.opens += 1
        if self.counters.opens > 1:
            self.counters.reconnects += 1
        if self.connectedSince is None:
            self.connectedSince = self.reactor.seconds()
        self.downSince = None
        if self._readingPaused:
            connection.pauseReading()
        for wire in list(self._wires.values()):
            if wire.connection is None and not wire.queued:
                self._place(wire)
        self._placeWaiting()
        self._flushOutbound()
        self._owner.relayConnectionChanged(self)

    def _connectionClosed(self, connection: RelayConnection) -> None:
        if not connection.live:
            return
        connection.live = False
        if not self.pool.connections():
            self.connectedSince = None
            self.downSince = self.reactor.seconds()
        orphans = [w for w in self._wires.values() if w.connection is connection]
        for wire in orphans:
            wire.connection = None
        connection.subscriptionCount = 0
        if connection.authState is not None and not connection.authState.called:
            connection.authState.callback(False)
        self._endNegentropy(
            lambda exchange: exchange.connection is connection,
            "error: relaypool: the connection closed during the sync",
        )
        if not self._stopped:
            for wire in orphans:
                if wire.isCount:
                    self._wireFinished(wire, "error: relaypool: connection lost before COUNT")
                else:
                    self._place(wire)
        self._owner.relayConnectionChanged(self)

    def _pongReceived(self, connection: RelayConnection) -> None:
        """
        The keepalive probe came back: its round trip is a success on the
        connection.
        """
        sentAt, connection.pingSentAt = connection.pingSentAt, None
        if sentAt is not None:
            self.pool.recordSuccess(connection, self.reactor.seconds() - sentAt)

    def keepalive(self, interval: float) -> None:
        """
        One keepalive round, run by the owner's one sweep for all relays
        every C{interval} seconds: replace the connections that are
        unhealthy under the relay's L{HealthPolicy} (their slots reconnect
        and their subscriptions move, with C{since}), drop those silent for
        two intervals (a ping unanswered for that long counts as an error
        first), and ping the others; the pong is the health probe.
        """
        now = self.reactor.seconds()
        evicted = self.pool.evictUnhealthy()
        if evicted:
            log.info("{url}: replacing {count} unhealthy connections", url=self.url, count=evicted)
        for connection in self.pool.connections():
            if now - connection.lastSeen > 2 * interval:
                log.info("{url}: no answer to pings, reconnecting", url=self.url)
                if connection.pingSentAt is not None:
                    self.pool.recordError(connection)
                connection.dropConnection(abort=True)
            else:
                connection.ping()

    def _answered(self, connection: RelayConnection, kind: str, sentAt: float) -> None:
        """
        A request sent at C{sentAt} got its answer on C{connection}: a
        success for the connection's health, and a latency for the
        C{onLatency} observer.
        """
        self.pool.recordSuccess(connection, self.reactor.seconds() - sentAt)
        self._observeLatency(kind, sentAt)

    def _observeLatency(self, kind: str, sentAt: float) -> None:
        if self._onLatency is not None:
            self._onLatency(kind, self.reactor.seconds() - sentAt)

    def _protocolError(self, connection: RelayConnection, what: str) -> None:
        self.counters.protocolErrors += 1
        self.pool.recordError(connection)
        log.debug("{url}: ignored {what}", url=self.url, what=what)

    # --- inbound ------------------------------------------------------------

    def _frameReceived(self, connection: RelayConnection, payload: bytes) -> None:
        self._delivering = connection
        try:
            decoded = decodeMessage(payload)
            if decoded[0] == "EVENT" and self._knownEvent(decoded):
                return
            message = relayMessageFromList(decoded)
        except (InvalidMessage, InvalidEvent) as e:
            if payload.startswith(b'["EVENT"'):
                self.counters.eventsReceived += 1
                self.counters.eventsInvalid += 1
            self._protocolError(connection, f"malformed message: {e}")
            return
        if isinstance(message, RelayEvent):
            self._eventReceived(message)
        elif isinstance(message, RelayOK):
            self._okReceived(connection, message)
        elif isinstance(message, RelayEOSE):
            wire = self._wires.get(message.subscriptionId)
            if wire is None or wire.isCount:
                self._owner.relayOther(self, message)
                return
            if not wire.eosed:
                self._answered(connection, "eose", wire.sentAt)
                self._rateLimitStrikes = 0
            self._wireFinished(wire, None)
        elif isinstance(message, RelayClosed):
            self._closedReceived(connection, message)
        elif isinstance(message, RelayCount):
            wire = self._wires.get(message.subscriptionId)
            if wire is None or not wire.isCount:
                self._owner.relayOther(self, message)
                return
            self._answered(connection, "count", wire.sentAt)
            self._wires.pop(wire.wireId, None)
            self._release(wire)
            self._subscriptions.pop(wire.subscriptionId, None)
            self._placeWaiting()
            self._owner.relayCount(self, wire.subscriptionId, message.count, message.approximate)
        elif isinstance(message, RelayAuth):
            connection.challenge = message.challenge
        elif isinstance(message, (NegMessage, RelayNegErr)):
            self._negentropyReceived(connection, message)
        else:
            if isinstance(message, RelayNotice):
                log.info("{url}: NOTICE {message}", url=self.url, message=message.message)
                if not self.supportsNegentropy():
                    # Likewise for a NEG-OPEN that waits for its first
                    # answer on this connection.
                    self._endNegentropy(
                        lambda exchange: exchange.connection is connection,
                        f"notice: {message.message}",
                    )
                if not self.supportsCount():
                    # A relay that does not say it speaks NIP-45 and answers
                    # NOTICE while COUNTs wait on this connection most
                    # likely did not understand them.
                    self._refuseCounts(
                        lambda wire: wire.connection is connection, f"notice: {message.message}"
                    )
            self._owner.relayOther(self, message)

    def _knownEvent(self, message: list[Any]) -> bool:
        """
        The cheap dedup check of the inbound path: count and drop an EVENT
        the owner takes as a duplicate (see L{RelayOwner.relayDuplicate}),
        before the event is built and checked.
        """
        if len(message) < 3:
            return False
        wireId = message[1]
        raw = message[2]
        if type(wireId) is not str or type(raw) is not dict:
            return False
        wire = self._wires.get(wireId)
        eventId = raw.get("id")
        if wire is None or type(eventId) is not str:
            return False
        if not self._owner.relayDuplicate(self, wireId, wire.subscriptionId, eventId, raw):
            return False
        self.counters.eventsReceived += 1
        return True

    def _eventReceived(self, message: RelayEvent) -> None:
        self.counters.eventsReceived += 1
        wireId = message.subscriptionId
        wire = self._wires.get(wireId)
        subscriptionId = wire.subscriptionId if wire is not None else wireId
        self._owner.relayEvent(self, wireId, subscriptionId, message.event)

    def eventAccepted(self, wireId: str, createdAt: int) -> None:
        """
        The owner found valid an event that arrived on the REQ C{wireId}:
        count its C{created_at} as the newest seen there if it is, for the
        C{since} of a resubscription.
        """
        wire = self._wires.get(wireId)
        if wire is not None and (wire.newest is None or createdAt > wire.newest):
            wire.newest = createdAt

    def _closedReceived(self, connection: RelayConnection, message: RelayClosed) -> None:
        wire = self._wires.get(message.subscriptionId)
        if wire is None:
            self._owner.relayOther(self, message)
            return
        prefix = reasonPrefix(message.message)
        if prefix == "auth-required" and not wire.authRetried and self._signingKey is not None:
            wire.authRetried = True
            self._release(wire)
            self._authenticate(connection).addCallback(self._retryAfterAuth, wire, connection, message.message)
            return
        if prefix == "rate-limited" and not wire.isCount:
            self._release(wire)
            self._rateLimited()
            wire.queued = True
            self._waitingWires.append(wire)
            return
        if isRelayFailure(message.message):
            self.pool.recordError(connection)
        self._wireFinished(wire, message.message)

    def _retryAfterAuth(
        self, authenticated: bool, wire: _WireSubscription, connection: RelayConnection, reason: str
    ) -> None:
        if self._wires.get(wire.wireId) is not wire:
            return
        if authenticated and connection.live:
            self._sendREQ(wire, connection)
        else:
            self._wireFinished(wire, reason)

    def _okReceived(self, connection: RelayConnection, message: RelayOK) -> None:
        if connection.authState is not None and connection.authEventId == message.eventId:
            if not connection.authState.called:
                connection.authState.callback(message.accepted)
            return
        pending = self._publishes.get(message.eventId)
        if pending is None:
            self._owner.relayOther(self, message)
            return
        prefix = reasonPrefix(message.message) if not message.accepted else None
        if prefix == "auth-required" and not pending.retried and self._signingKey is not None:
            pending.retried = True
            self._authenticate(connection).addCallback(
                self._republishAfterAuth, pending, connection, message
            )
            return
        if prefix == "rate-limited" and not pending.retried:
            pending.retried = True
            self._rateLimited()
            # The retry waits in the outbound queue until the back-off ends;
            # its OK's latency counts from then.
            pending.sentAt = self._rateLimitedUntil
            self.send(ClientEvent(pending.event).toJSON())
            return
        del self._publishes[message.eventId]
        # NIP-01: "duplicate:", with OK true or false, means the relay has
        # the event: an acceptance, and an answer in time, never an error.
        stored = message.accepted or prefix == "duplicate"
        if stored:
            self.counters.okAccepted += 1
            self._rateLimitStrikes = 0
        else:
            self.counters.okRejected += 1
        if stored or not isRelayFailure(message.message):
            # A refusal by the relay's rules is an answer in time too.
            self._answered(connection, "ok", pending.sentAt)
        else:
            self.pool.recordError(connection)
            self._observeLatency("ok", pending.sentAt)
        self._owner.relayOK(self, message.eventId, stored, message.message)

    def _republishAfterAuth(
        self, authenticated: bool, pending: _PendingPublish, connection: RelayConnection, original: RelayOK
    ) -> None:
        if self._publishes.get(pending.event.id) is not pending:
            return
        if authenticated and connection.live:
            connection.sendText(ClientEvent(pending.event).toJSON())
            return
        del self._publishes[pending.event.id]
        self.counters.okRejected += 1
        self._owner.relayOK(self, original.eventId, False, original.message)

    # --- NIP-42 -------------------------------------------------------------

    def _authenticate(self, connection: RelayConnection) -> Deferred[bool]:
        """
        Answer the connection's AUTH challenge with a signed kind-22242 event.

        @return: a Deferred firing with whether the relay accepted it.
        """
        if connection.authState is not None:
            return follow(connection.authState)
        if connection.challenge is None or self._signingKey is None:
            return succeed(False)
        event = Event.sign(
            self._signingKey,
            AUTH_KIND,
            "",
            [["relay", self.url], ["challenge", connection.challenge]],
            createdAt=int(self.reactor.seconds()),
        )
        state: Deferred[bool] = Deferred()
        connection.authState = state
        connection.authEventId = event.id
        connection.sendText(ClientAuth(event).toJSON())
        return follow(state)

    # --- rate limiting ------------------------------------------------------

    def _rateLimited(self) -> None:
        self._rateLimitStrikes += 1
        delay = self._rateLimitBackoff.delay(self._rateLimitStrikes, lambda: 0.5)
        self._rateLimitedUntil = self.reactor.seconds() + delay
        log.info("{url}: rate-limited, backing off {delay:.1f}s", url=self.url, delay=delay)
        if self._rateLimitCall is None or not self._rateLimitCall.active():
            self._rateLimitCall = self.reactor.callLater(delay, self._rateLimitOver)
        else:
            self._rateLimitCall.reset(delay)

    def _rateLimitOver(self) -> None:
        self._rateLimitCall = None
        self._placeWaiting()
        self._flushOutbound()

    def rateLimitedUntil(self) -> float:
        """
        @return: the reactor time until which the relay backs off after a
            C{rate-limited} answer (in the past when it does not).
        """
        return self._rateLimitedUntil


__all__ = ["NegentropyPeer", "Relay", "RelayConnection", "RelayCounters", "RelayOwner"]
