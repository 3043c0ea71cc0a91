"""
An in-process NIP-01 relay for tests, benchmarks and users' own tests.

L{FakeRelay} is a real WebSocket server on 127.0.0.1 holding its events in
memory; its L{Misbehaviour} switches make it drop, delay, forge, refuse or
reject, so clients can be tested against the relays they will meet.

L{MemoryNetwork} is a L{MemoryReactorClock} whose TCP connections reach
the servers listening on it over in-memory transports: a L{FakeRelay}
started on it and a client connecting through it talk without sockets or
real time, as C{treq.testing} does for HTTP.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import orjson
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from relaypool._reactor import TimeTCPReactor, defaultReactor
from relaypool.errors import InvalidEvent, InvalidMessage, InvalidRelayURL
from relaypool.nostr.event import (
    AUTH_KIND,
    Event,
    isAddressable,
    isEphemeral,
    isReplaceable,
    publicKeyFor,
)
from relaypool.nostr.filter import Filter, matchesAny
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
    RelayNegErr,
    RelayNotice,
    RelayOK,
    parseClientMessage,
)
from relaypool.nostr.negentropy import NegentropyError, NegentropyResponder, NegentropyStorage
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.nostr.url import parseRelayURL

__all__ = [
    "TEST_PRIVATE_KEY",
    "TEST_PUBLIC_KEY",
    "FakeRelay",
    "MemoryLink",
    "MemoryNetwork",
    "Misbehaviour",
    "forgeSignature",
    "makeEvent",
]

TEST_PRIVATE_KEY: bytes = bytes.fromhex(
    "7f3b2a1c9d8e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
)
"""
A fixed private key, so that tests sign reproducible authors.
"""

TEST_PUBLIC_KEY: str = publicKeyFor(TEST_PRIVATE_KEY)
"""
The public key of L{TEST_PRIVATE_KEY}.
"""

BASE_CREATED_AT = 1_700_000_000
"""
The C{created_at} of the first event L{makeEvent} makes without one.
"""

MAX_MESSAGE_BYTES = 1024 * 1024
"""
The largest WebSocket message (and frame) a L{FakeRelay} accepts; larger
ones fail the connection.
"""


AUTH_MAX_SKEW = 600
"""
How far (seconds) an AUTH event's C{created_at} may be from the relay's
clock.
"""

_createdAtCounter = itertools.count(BASE_CREATED_AT)


def makeEvent(
    kind: int = 1,
    content: str = "",
    tags: Sequence[Sequence[str]] = (),
    createdAt: int | None = None,
    privateKey: bytes = TEST_PRIVATE_KEY,
) -> Event:
    """
    A signed event for tests.

    @param createdAt: unix time in seconds; C{None} means one second after
        the previous event made this way (starting at L{BASE_CREATED_AT}),
        so events are distinct and ordered by creation.
    """
    if createdAt is None:
        createdAt = next(_createdAtCounter)
    return Event.sign(privateKey, kind, content, tags, createdAt)


def forgeSignature(event: Event) -> Event:
    """
    C{event} with a corrupted signature: same id and content, but
    L{Event.verify} fails.
    """
    last = "1" if event.sig[-1] == "0" else "0"
    return replace(event, sig=event.sig[:-1] + last)


@dataclass(slots=True)
class Misbehaviour:
    """
    Switches that make a L{FakeRelay} misbehave. Every field may be changed
    while the relay runs; the change applies to the next message.

    @ivar dropEvents: accept EVENTs (C{OK} true) but neither store nor
        forward them.
    @ivar silentOK: never answer an EVENT with C{OK} (the event is still
        handled).
    @ivar rejectWith: answer every EVENT with C{OK} false and this message.
    @ivar rejectDuplicates: answer an EVENT the relay has already with
        C{OK false "duplicate: ..."} (NIP-01 allows either) instead of
        C{OK true "duplicate: ..."}.
    @ivar neverEOSE: send stored events but never C{EOSE}.
    @ivar delay: seconds to hold every message the relay sends; order is
        kept.
    @ivar forge: send events with corrupted signatures.
    @ivar refuse: reject WebSocket handshakes with HTTP 403.
    @ivar closeWith: answer every REQ with C{CLOSED} and this message.
    @ivar requireAuth: send a NIP-42 challenge on connect and refuse REQ,
        COUNT and EVENT (C{auth-required:}) until the connection sent a
        valid kind-22242 AUTH event.
    @ivar countSupported: answer NIP-45 COUNT; when false, COUNT gets the
        answer C{countRefusal} says.
    @ivar countRefusal: how a COUNT is answered when C{countSupported} is
        false: C{"closed"} (C{CLOSED "unsupported: ..."}, as NIP-45 asks),
        C{"notice"} (a C{NOTICE}, as relays that do not know the verb do),
        or C{"ignore"} (no answer at all).
    @ivar negentropySupported: answer NIP-77 C{NEG-OPEN}/C{NEG-MSG} from
        the stored events; when false, C{NEG-OPEN} gets the answer
        C{negentropyRefusal} says.
    @ivar negentropyRefusal: how a C{NEG-OPEN} is answered when
        C{negentropySupported} is false: C{"notice"} (a C{NOTICE}, as relays
        that do not know the verb do), C{"error"} (C{NEG-ERR "error: ..."})
        or C{"ignore"} (no answer at all).
    """

    dropEvents: bool = False
    silentOK: bool = False
    rejectWith: str | None = None
    rejectDuplicates: bool = False
    neverEOSE: bool = False
    delay: float = 0.0
    forge: bool = False
    refuse: bool = False
    closeWith: str | None = None
    requireAuth: bool = False
    countSupported: bool = True
    countRefusal: str = "closed"
    negentropySupported: bool = True
    negentropyRefusal: str = "notice"


def _textFrame(payload: bytes) -> bytes:
    # An unmasked, unfragmented, uncompressed text frame (RFC 6455 5.2),
    # what Autobahn writes for a server message, without its per-call cost.
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def _newestFirst(event: Event) -> tuple[int, str]:
    return (-event.createdAt, event.id)


def _isLocalURL(url: str, port: int) -> bool:
    try:
        parsed = parseRelayURL(url)
    except InvalidRelayURL:
        return False
    return parsed.host in ("127.0.0.1", "localhost") and parsed.port == port


@dataclass(slots=True)
class _Subscription:
    filters: tuple[Filter, ...]
    prefix: bytes


class _RelayProtocol(WebSocketServerProtocol):
    """
    One client connection to a L{FakeRelay}.
    """

    factory: _RelayFactory

    def __init__(self) -> None:
        super().__init__()
        self.subscriptions: dict[str, _Subscription] = {}
        self.syncs: dict[str, NegentropyResponder] = {}
        self.challenge: str | None = None
        self.authenticated: set[str] = set()
        self._outbox: deque[tuple[float, bytes]] = deque()
        self._outboxCall: IDelayedCall | None = None
        self._isOpen = False

    @property
    def relay(self) -> FakeRelay:
        return self.factory.relay

    def onConnect(self, request: Any) -> None:
        if self.relay.misbehaviour.refuse:
            raise ConnectionDeny(  # type: ignore[no-untyped-call]
                ConnectionDeny.FORBIDDEN, "refused by FakeRelay"
            )

    def onOpen(self) -> None:
        self._isOpen = True
        if self.relay.misbehaviour.requireAuth:
            self.sendChallenge()
        self.relay._protocolOpened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # Autobahn leaves this timer running when the peer drops TCP
        # instead of answering our close frame.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        if self._outboxCall is not None:
            self._outboxCall.cancel()
            self._outboxCall = None
        self._outbox.clear()
        self.subscriptions.clear()
        self.syncs.clear()
        if self._isOpen:
            self._isOpen = False
            self.relay._protocolClosed(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = parseClientMessage(payload)
        except InvalidEvent as e:
            if e.eventId is not None:
                self.sendOK(e.eventId, False, str(e))
            else:
                self.sendMessages([RelayNotice(str(e)).toJSON()])
            return
        except InvalidMessage as e:
            if e.subscriptionId is not None and e.negentropy:
                self.sendMessages([RelayNegErr(e.subscriptionId, str(e)).toJSON()])
            elif e.subscriptionId is not None:
                self.sendClosed(e.subscriptionId, str(e))
            else:
                self.sendMessages([RelayNotice(str(e)).toJSON()])
            return
        self.relay._handle(self, message)
        self.relay.received.append(message)

    def sendChallenge(self) -> None:
        """
        Send a new NIP-42 challenge.
        """
        self.challenge = os.urandom(16).hex()
        self.sendMessages([RelayAuth(self.challenge).toJSON()])

    def sendOK(self, eventId: str, accepted: bool, message: str) -> None:
        """
        Answer an EVENT or AUTH message.
        """
        self.sendMessages([RelayOK(eventId, accepted, message).toJSON()])

    def sendClosed(self, subscriptionId: str, message: str) -> None:
        """
        End (or refuse) a subscription from the relay's side.
        """
        self.subscriptions.pop(subscriptionId, None)
        self.sendMessages([RelayClosed(subscriptionId, message).toJSON()])

    def sendMessages(self, payloads: Iterable[bytes]) -> None:
        """
        Send these JSON messages, in order, in one write, after
        L{Misbehaviour.delay}.
        """
        data = b"".join([_textFrame(p) for p in payloads])
        delay = self.relay.misbehaviour.delay
        if delay <= 0 and not self._outbox:
            self._write(data)
            return
        reactor = self.relay._reactor
        self._outbox.append((reactor.seconds() + delay, data))
        if self._outboxCall is None:
            self._outboxCall = reactor.callLater(max(delay, 0.0), self._flushOutbox)

    def _flushOutbox(self) -> None:
        reactor = self.relay._reactor
        now = reactor.seconds()
        self._outboxCall = None
        while self._outbox and self._outbox[0][0] <= now:
            self._write(self._outbox.popleft()[1])
        if self._outbox:
            self._outboxCall = reactor.callLater(self._outbox[0][0] - now, self._flushOutbox)

    def _write(self, data: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendData(data)


class _RelayFactory(WebSocketServerFactory):
    protocol = _RelayProtocol  # type: ignore[assignment]

    def __init__(self, relay: FakeRelay) -> None:
        super().__init__(reactor=relay._reactor)  # type: ignore[no-untyped-call]
        self.relay = relay
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoPingInterval=0,
        )


class _RelayResource(Resource):
    """
    The relay's single HTTP endpoint: WebSocket upgrades go to the relay,
    C{Accept: application/nostr+json} gets the NIP-11 document.
    """

    isLeaf = True

    def __init__(self, relay: FakeRelay, webSocket: WebSocketResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._relay = relay
        self._webSocket = webSocket

    def render(self, request: Request) -> bytes | int:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() == b"websocket":
            result: bytes | int = self._webSocket.render(request)  # type: ignore[no-untyped-call]
            return result
        headers = request.responseHeaders
        headers.setRawHeaders(b"access-control-allow-origin", [b"*"])
        headers.setRawHeaders(b"access-control-allow-headers", [b"*"])
        headers.setRawHeaders(b"access-control-allow-methods", [b"GET, OPTIONS"])
        if b"application/nostr+json" in (request.getHeader(b"accept") or b""):
            headers.setRawHeaders(b"content-type", [b"application/nostr+json"])
            return self._relay.information.toJSON()
        headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        return b"relaypool fake relay: connect with a Nostr WebSocket client\n"


class _QuietSite(Site):
    """
    A L{Site} without access logging: benchmarks open thousands of
    connections.
    """

    def log(self, request: http.Request) -> None:
        pass

    def startFactory(self) -> None:
        # Without an access log, neither its file nor the once-a-second
        # timer keeping its date.
        pass

    def stopFactory(self) -> None:
        pass


class _TrackedConnection(ProtocolWrapper):
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Unlike ProtocolWrapper, let the wrapped protocol cancel its timers
        # before the tracker hears that the connection is gone, so that
        # stop() fires on a clean reactor.
        self.wrappedProtocol.connectionLost(reason)
        self.factory.unregisterProtocol(self)


class _ConnectionTracker(WrappingFactory):
    """
    Keeps every TCP connection to the relay, HTTP and WebSocket alike, so
    that they can all be closed and waited for.
    """

    protocol = _TrackedConnection
    noisy = False

    def __init__(self, site: Site) -> None:
        super().__init__(site)  # type: ignore[no-untyped-call]
        self._emptyWaiters: list[Deferred[None]] = []

    def whenEmpty(self) -> Deferred[None]:
        """
        A L{Deferred} firing once no connection is left.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptyWaiters.append(d)
        return d

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)  # type: ignore[no-untyped-call]
        if not self.protocols:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)


class FakeRelay:
    """
    An in-process Nostr relay listening on 127.0.0.1.

    It stores published events in memory, answers REQ with the stored events that match, newest first
    and honouring each filter's C{limit}, then C{EOSE}, then forwards live
    events; it answers EVENT with C{OK} (verifying signatures when
    C{verify}), COUNT with the count, AUTH per NIP-42, NIP-77 negentropy
syncs from the stored events, and serves its NIP-11
    document on C{GET /} with C{Accept: application/nostr+json}.

    It listens through its reactor's C{listenTCP} and keeps its timers
    there: on a L{MemoryNetwork} it serves that reactor's clients in memory.

    Only message sizes are bounded (L{MAX_MESSAGE_BYTES}): the stored
    events, C{received} and the replies held by L{Misbehaviour.delay} grow
    with what the test sends, which it controls.

    @ivar misbehaviour: the L{Misbehaviour} switches, changeable at any time.
    @ivar port: the TCP port; after L{start}, the one actually bound, which
        a later L{start} reuses.
    @ivar information: the NIP-11 document served.
    @ivar events: the stored events, in arrival order (read only).
    @ivar received: every client message parsed, in arrival order, appended
        once the relay has handled it (not bounded either).
    @ivar authenticated: the pubkeys that completed AUTH, on any connection.
    """

    def __init__(
        self,
        reactor: TimeTCPReactor | None = None,
        port: int = 0,
        verify: bool = True,
        information: RelayInformation | None = None,
        maxSubscriptions: int | None = None,
    ) -> None:
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self.port = port
        self.verify = verify
        self.maxSubscriptions = maxSubscriptions
        if information is None:
            information = RelayInformation(
                name="relaypool fake relay",
                supportedNips=(1, 11, 42, 45, 77),
                limitation=Limitation(maxSubscriptions=maxSubscriptions),
            )
        self.information = information
        self.misbehaviour = Misbehaviour()
        self.events: list[Event] = []
        self.received: list[Any] = []
        self.authenticated: set[str] = set()
        self._json: dict[str, bytes] = {}
        self._latest: dict[tuple[int, str, str], Event] = {}
        self._ordered: list[Event] | None = None
        self._protocols: set[_RelayProtocol] = set()
        self._connectionWaiters: list[tuple[int, Deferred[None]]] = []
        self._listeningPort: IListeningPort | None = None
        self._tracker: _ConnectionTracker | None = None

    @property
    def url(self) -> str:
        """
        The relay's WebSocket URL, C{ws://127.0.0.1:<port>}.
        """
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Deferred[FakeRelay]:
        """
        Start listening (again, on the same port, after L{stop}); a no-op if
        already listening.

        @return: a L{Deferred} firing with this relay once it listens.
        """
        if self._listeningPort is None:
            webSocket = WebSocketResource(_RelayFactory(self))  # type: ignore[no-untyped-call]
            site = _QuietSite(  # type: ignore[no-untyped-call]
                _RelayResource(self, webSocket), reactor=self._reactor
            )
            site.timeOut = None
            site.noisy = False
            self._tracker = _ConnectionTracker(site)
            self._listeningPort = self._reactor.listenTCP(
                self.port, self._tracker, interface="127.0.0.1"
            )
            address = self._listeningPort.getHost()
            assert isinstance(address, IPv4Address)
            self.port = address.port
        return succeed(self)

    def stop(self, abort: bool = False) -> Deferred[None]:
        """
        Stop listening and close every client connection.

        @param abort: drop TCP connections without a WebSocket close
            handshake, as a killed relay would.
        @return: a L{Deferred} firing once the port is closed and every
            connection is gone.
        """
        port, self._listeningPort = self._listeningPort, None
        tracker, self._tracker = self._tracker, None
        if port is None or tracker is None:
            return succeed(None)
        gone = tracker.whenEmpty()
        for connection in list(tracker.protocols):
            self._closeConnection(connection, abort)
        stopped: Deferred[Any] = port.stopListening() or succeed(None)
        return gatherResults([stopped, gone]).addCallback(lambda _: None)

    def _closeConnection(self, connection: ProtocolWrapper, abort: bool) -> None:
        wrapped = connection.wrappedProtocol
        if abort:
            cast(ITCPTransport, connection.transport).abortConnection()
        elif (
            isinstance(wrapped, _RelayProtocol)
            and wrapped.state == WebSocketServerProtocol.STATE_OPEN
        ):
            wrapped.sendClose(1000, "relay shutting down")
        else:
            cast(ITCPTransport, connection.transport).loseConnection()

    def connectionCount(self) -> int:
        """
        The number of open WebSocket connections.
        """
        return len(self._protocols)

    def subscriptionCount(self) -> int:
        """
        The number of live subscriptions, across connections.
        """
        return sum(len(p.subscriptions) for p in self._protocols)

    def whenConnections(self, n: int) -> Deferred[None]:
        """
        A L{Deferred} firing once at least C{n} WebSocket connections are
        open.
        """
        if len(self._protocols) >= n:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._connectionWaiters.append((n, d))
        return d

    def _protocolOpened(self, protocol: _RelayProtocol) -> None:
        self._protocols.add(protocol)
        count = len(self._protocols)
        ready = [d for n, d in self._connectionWaiters if n <= count]
        self._connectionWaiters = [(n, d) for n, d in self._connectionWaiters if n > count]
        for d in ready:
            d.callback(None)

    def _protocolClosed(self, protocol: _RelayProtocol) -> None:
        self._protocols.discard(protocol)

    def sendOK(self, eventId: str, accepted: bool, message: str) -> None:
        """
        Send C{["OK", eventId, accepted, message]} on every open connection,
        e.g. the late answer of a relay made silent with
        L{Misbehaviour.silentOK}.
        """
        for protocol in self._protocols:
            protocol.sendOK(eventId, accepted, message)

    def store(self, *events: Event) -> None:
        """
        Add events as if clients had published them (without verifying
        them), forwarding them to live matching subscriptions.
        """
        for event in events:
            if event.id not in self._json:
                self._accept(event)

    def _accept(self, event: Event) -> None:
        """
        Store a new event (unless ephemeral, or an older replaceable) and
        forward it to every matching subscription.
        """
        if event.kind == AUTH_KIND:
            return
        if not isEphemeral(event.kind):
            if isReplaceable(event.kind) or isAddressable(event.kind):
                key = (event.kind, event.pubkey, event.dTag() if isAddressable(event.kind) else "")
                current = self._latest.get(key)
                if current is not None:
                    if _newestFirst(current) <= _newestFirst(event):
                        return
                    self._remove(current)
                self._latest[key] = event
            self.events.append(event)
            self._json[event.id] = event.toJSON()
            self._ordered = None
        self._forward(event)

    def _remove(self, event: Event) -> None:
        self.events.remove(event)
        del self._json[event.id]
        self._ordered = None

    def _eventJSON(self, event: Event) -> bytes:
        if self.misbehaviour.forge:
            return forgeSignature(event).toJSON()
        return self._json.get(event.id) or event.toJSON()

    def _forward(self, event: Event) -> None:
        data: bytes | None = None
        for protocol in self._protocols:
            for subscription in protocol.subscriptions.values():
                if matchesAny(subscription.filters, event):
                    if data is None:
                        data = self._eventJSON(event)
                    protocol.sendMessages([subscription.prefix + data + b"]"])

    def _query(self, filters: Sequence[Filter]) -> list[Event]:
        if self._ordered is None:
            self._ordered = sorted(self.events, key=_newestFirst)
        ordered = self._ordered
        found: dict[str, Event] = {}
        for f in filters:
            matches = (e for e in ordered if f.matches(e))
            for event in itertools.islice(matches, f.limit):
                found[event.id] = event
        if len(filters) == 1:
            return list(found.values())
        return sorted(found.values(), key=_newestFirst)

    def _handle(self, protocol: _RelayProtocol, message: Any) -> None:
        if isinstance(message, ClientEvent):
            self._handleEvent(protocol, message.event)
        elif isinstance(message, ClientReq):
            self._handleReq(protocol, message.subscriptionId, message.filters)
        elif isinstance(message, ClientClose):
            protocol.subscriptions.pop(message.subscriptionId, None)
        elif isinstance(message, ClientCount):
            self._handleCount(protocol, message.subscriptionId, message.filters)
        elif isinstance(message, ClientAuth):
            self._handleAuth(protocol, message.event)
        elif isinstance(message, ClientNegOpen):
            self._handleNegOpen(protocol, message)
        elif isinstance(message, NegMessage):
            self._handleNegMessage(protocol, message)
        elif isinstance(message, ClientNegClose):
            protocol.syncs.pop(message.subscriptionId, None)

    def _authRequired(self, protocol: _RelayProtocol) -> bool:
        if not self.misbehaviour.requireAuth or protocol.authenticated:
            return False
        if protocol.challenge is None:
            protocol.sendChallenge()
        return True

    def _handleEvent(self, protocol: _RelayProtocol, event: Event) -> None:
        accepted, reason = self._judge(protocol, event)
        if not self.misbehaviour.silentOK:
            protocol.sendOK(event.id, accepted, reason)
        if accepted and event.id not in self._json and not self.misbehaviour.dropEvents:
            self._accept(event)

    def _judge(self, protocol: _RelayProtocol, event: Event) -> tuple[bool, str]:
        if self._authRequired(protocol):
            return False, "auth-required: authenticate to publish"
        if self.misbehaviour.rejectWith is not None:
            return False, self.misbehaviour.rejectWith
        if self.verify:
            try:
                event.verify()
            except InvalidEvent as e:
                return False, str(e)
        if event.id in self._json:
            return not self.misbehaviour.rejectDuplicates, "duplicate: already have this event"
        return True, ""

    def _handleReq(
        self, protocol: _RelayProtocol, subscriptionId: str, filters: Sequence[Filter]
    ) -> None:
        if self._authRequired(protocol):
            protocol.sendClosed(subscriptionId, "auth-required: authenticate to subscribe")
            return
        if self.misbehaviour.closeWith is not None:
            protocol.sendClosed(subscriptionId, self.misbehaviour.closeWith)
            return
        if (
            self.maxSubscriptions is not None
            and subscriptionId not in protocol.subscriptions
            and len(protocol.subscriptions) >= self.maxSubscriptions
        ):
            protocol.sendClosed(subscriptionId, "error: too many subscriptions")
            return
        prefix = b'["EVENT",' + orjson.dumps(subscriptionId) + b","
        protocol.subscriptions[subscriptionId] = _Subscription(tuple(filters), prefix)
        eventJSON = self._eventJSON
        payloads = [prefix + eventJSON(e) + b"]" for e in self._query(filters)]
        if not self.misbehaviour.neverEOSE:
            payloads.append(RelayEOSE(subscriptionId).toJSON())
        protocol.sendMessages(payloads)

    def _handleCount(
        self, protocol: _RelayProtocol, subscriptionId: str, filters: Sequence[Filter]
    ) -> None:
        if self._authRequired(protocol):
            protocol.sendClosed(subscriptionId, "auth-required: authenticate to count")
        elif not self.misbehaviour.countSupported:
            refusal = self.misbehaviour.countRefusal
            if refusal == "notice":
                protocol.sendMessages([RelayNotice("unknown message type: COUNT").toJSON()])
            elif refusal != "ignore":
                protocol.sendClosed(subscriptionId, "unsupported: COUNT is not supported")
        else:
            count = sum(1 for e in self.events if matchesAny(filters, e))
            protocol.sendMessages([RelayCount(subscriptionId, count).toJSON()])

    def _handleNegOpen(self, protocol: _RelayProtocol, message: ClientNegOpen) -> None:
        subscriptionId = message.subscriptionId
        protocol.syncs.pop(subscriptionId, None)
        if self._authRequired(protocol):
            authErr = RelayNegErr(subscriptionId, "auth-required: authenticate to sync")
            protocol.sendMessages([authErr.toJSON()])
        elif not self.misbehaviour.negentropySupported:
            how = self.misbehaviour.negentropyRefusal
            if how == "notice":
                protocol.sendMessages([RelayNotice("unknown message type: NEG-OPEN").toJSON()])
            elif how == "error":
                negErr = RelayNegErr(subscriptionId, "error: negentropy is disabled on this relay")
                protocol.sendMessages([negErr.toJSON()])
        else:
            storage = NegentropyStorage(
                (e.createdAt, bytes.fromhex(e.id)) for e in self.events if message.filter.matches(e)
            )
            storage.seal()
            protocol.syncs[subscriptionId] = NegentropyResponder(storage)
            self._handleNegMessage(protocol, NegMessage(subscriptionId, message.message))

    def _handleNegMessage(self, protocol: _RelayProtocol, message: NegMessage) -> None:
        responder = protocol.syncs.get(message.subscriptionId)
        if responder is None:
            reply = RelayNegErr(message.subscriptionId, "closed: no such sync").toJSON()
        else:
            try:
                reply = NegMessage(message.subscriptionId, responder.reconcile(message.message)).toJSON()
            except NegentropyError as e:
                protocol.syncs.pop(message.subscriptionId, None)
                reply = RelayNegErr(message.subscriptionId, str(e)).toJSON()
        protocol.sendMessages([reply])

    def _handleAuth(self, protocol: _RelayProtocol, event: Event) -> None:
        reason = self._checkAuth(protocol, event)
        if reason is None:
            protocol.authenticated.add(event.pubkey)
            self.authenticated.add(event.pubkey)
            protocol.sendOK(event.id, True, "")
        else:
            protocol.sendOK(event.id, False, reason)

    def _checkAuth(self, protocol: _RelayProtocol, event: Event) -> str | None:
        if protocol.challenge is None:
            return "invalid: no challenge was sent on this connection"
        if event.kind != AUTH_KIND:
            return f"invalid: an AUTH event must be of kind {AUTH_KIND}"
        try:
            event.verify()
        except InvalidEvent as e:
            return str(e)
        if abs(event.createdAt - self._reactor.seconds()) > AUTH_MAX_SKEW:
            return "invalid: created_at is too far from the current time"
        if protocol.challenge not in event.tagValues("challenge"):
            return "invalid: challenge does not match"
        if not any(_isLocalURL(url, self.port) for url in event.tagValues("relay")):
            return "invalid: relay tag does not match this relay"
        return None


class MemoryLink:
    """
    One TCP connection of a L{MemoryNetwork}: two L{iosim.FakeTransport}s
    joined by an L{iosim.IOPump}.

    @ivar client: the connecting side's protocol, as its factory built it.
    @ivar server: the listening side's protocol, as its factory built it.
    @ivar clientTransport: the client's transport.
    @ivar serverTransport: the server's transport.
    @ivar stalled: while true no byte moves, in either direction, as over a
        dead route or to a peer that stopped reading; closing either end
        still ends the connection (what was held is lost).
    """

    def __init__(
        self,
        client: IProtocol,
        server: IProtocol,
        clientTransport: iosim.FakeTransport,
        serverTransport: iosim.FakeTransport,
    ) -> None:
        self.client = client
        self.server = server
        self.clientTransport = clientTransport
        self.serverTransport = serverTransport
        self.stalled = False
        self._pump = iosim.connect(  # type: ignore[no-untyped-call]
            server, serverTransport, client, clientTransport, greet=False
        )

    @property
    def closed(self) -> bool:
        """
        Whether both ends have seen the connection close.
        """
        return bool(self.clientTransport.disconnected and self.serverTransport.disconnected)

    def disconnect(self) -> None:
        """
        Close the connection from the server's side without a word, as a
        relay that crashed or a route that died would: the client sees it
        lost on the next L{MemoryNetwork.flush}.
        """
        self.serverTransport.abortConnection()  # type: ignore[no-untyped-call]

    def pump(self) -> bool:
        """
        Move the bytes written so far and report a closed end to the other.

        @return: whether anything moved.
        """
        if self.stalled:
            if not (self.clientTransport.disconnecting or self.serverTransport.disconnecting):
                return False
            self.clientTransport.getOutBuffer()  # type: ignore[no-untyped-call]
            self.serverTransport.getOutBuffer()  # type: ignore[no-untyped-call]
        moved: bool = self._pump.pump(advanceClock=False)
        return moved


@implementer(IListeningPort)
class _MemoryPort:
    """
    The L{IListeningPort} of a L{MemoryNetwork}: until L{stopListening},
    connection attempts to its port reach its factory.
    """

    def __init__(self, network: MemoryNetwork, address: IPv4Address, factory: IProtocolFactory) -> None:
        self._network = network
        self._address = address
        self.factory = factory

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        if self._network._listening.get(self._address.port) is self:
            del self._network._listening[self._address.port]
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return self._address


class MemoryNetwork(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP connections reach the servers that
    listen on it, in memory.

    A factory listening through L{listenTCP} (a L{FakeRelay} started on this
    reactor, for instance) gets the connections that clients of this
    reactor ask for with C{connectTCP} to its port, over
    L{iosim.FakeTransport}s; an attempt to a port nothing listens on is
    refused. Nothing happens behind the test's back: L{flush} completes the
    attempts and moves the bytes, C{advance} moves time, as with
    C{treq.testing}'s C{RequestTraversalAgent}. There are no sockets and
    no real time, so tests are deterministic.

    Autobahn schedules its handshake timers through C{txaio.config.loop}:
    point it at this reactor for the test, and restore it after.

    @ivar links: every connection completed so far, in order, closed ones
        included.
    """

    _firstPort = 40000

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.links: list[MemoryLink] = []
        self._listening: dict[int, _MemoryPort] = {}
        self._attempted = 0
        self._ports = itertools.count(self._firstPort)

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        """
        Listen on C{port} (a free one if 0) until the returned port's
        C{stopListening}; the factory is started and stopped as by a real
        port. The interface is ignored: every host reaches every port.
        """
        super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]
        if port == 0:
            port = next(p for p in self._ports if p not in self._listening)
        if port in self._listening:
            raise OSError(f"port {port} is already listening")
        listening = _MemoryPort(self, IPv4Address("TCP", interface or "0.0.0.0", port), factory)
        self._listening[port] = listening
        factory.doStart()
        return listening

    def linkOf(self, protocol: IProtocol) -> MemoryLink:
        """
        @return: the link one end of which is C{protocol}'s transport.
        @raise KeyError: if there is none.
        """
        transport = getattr(protocol, "transport", None)
        for link in self.links:
            if transport is link.clientTransport or transport is link.serverTransport:
                return link
        raise KeyError(protocol)

    def flush(self) -> bool:
        """
        Complete (or refuse) the connection attempts made so far, run the
        calls due now, and move bytes and closed connections over every
        link, until nothing moves.

        @return: whether anything moved.
        """
        moved = False
        for _ in range(10000):
            self.advance(0)
            progressed = self._completeAttempts()
            for link in self.links:
                if not link.closed and link.pump():
                    progressed = True
            if not progressed:
                return moved
            moved = True
        raise RuntimeError("the memory network never settled")

    def _completeAttempts(self) -> bool:
        attempts = self.tcpClients[self._attempted :]
        connectors = self.connectors[self._attempted :]
        self._attempted = len(self.tcpClients)
        for (host, port, factory, _timeout, _bindAddress), connector in zip(
            attempts, connectors, strict=True
        ):
            if connector.stoppedConnecting:
                continue
            listening = self._listening.get(port)
            if listening is None:
                refused = ConnectionRefusedError(f"nothing listens on port {port}")  # type: ignore[no-untyped-call]
                factory.clientConnectionFailed(connector, Failure(refused))  # type: ignore[no-untyped-call]
                continue
            clientAddress = IPv4Address("TCP", "127.0.0.1", next(self._ports))
            serverAddress = IPv4Address("TCP", host, port)
            client = factory.buildProtocol(serverAddress)
            server = listening.factory.buildProtocol(clientAddress)
            if client is None or server is None:
                # A factory declined the connection: it never opens.
                continue
            self.links.append(
                MemoryLink(
                    client,
                    server,
                    iosim.FakeTransport(client, False, clientAddress, serverAddress),  # type: ignore[no-untyped-call]
                    iosim.FakeTransport(server, True, serverAddress, clientAddress),  # type: ignore[no-untyped-call]
                )
            )
        return bool(attempts)
