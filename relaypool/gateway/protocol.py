"""
The downstream WebSocket protocol and its factory: each connection registers
with the L{ConnectionRegistry} and hands its messages to the factory's
L{RelayFacade}; the factory holds the WebSocket options and counts
connections per IP.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from relaypool.gateway.facade import RelayFacade
from relaypool.gateway.registry import Claims, ConnectionRegistry
from relaypool.gateway.session import Session
from relaypool.transport.receiving import WholeMessages

HARD_SIZE_FACTOR = 2
"""
Autobahn closes a connection (code 1009) whose message exceeds
C{HARD_SIZE_FACTOR * maxMessageSize} before buffering it; a message between
the two sizes is answered with a C{NOTICE} and the connection stays usable.
"""


_HANDSHAKE_STATE = (
    "_wskey",
    "http_headers",
    "http_request_data",
    "http_request_host",
    "http_request_params",
    "http_request_path",
    "http_request_uri",
    "http_response_data",
    "http_status_line",
    "websocket_extensions",
    "websocket_origin",
    "websocket_protocols",
    "_host",
    "_secure",
)
"""
The attributes that Autobahn's server handshake (and L{GatewayProtocol}'s
C{onConnect}) leave on a protocol and nothing reads once it is open.
"""


class _SendQueue(list[Any]):
    """
    Autobahn's queue of chopped or synchronous writes, which the gateway
    never makes: an empty list takes 56 bytes where an empty deque takes 760.
    """

    def popleft(self) -> Any:
        return self.pop(0)


# Autobahn's own bases disagree on two attributes' types (mypy sees it
# once the class has a second base).
class GatewayProtocol(WholeMessages, WebSocketServerProtocol):  # type: ignore[misc]
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
        self._session: Session | None = None

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
        self._shedHandshakeState()

    def _shedHandshakeState(self) -> None:
        """
        Drop what only the handshake needed and rebuild the instance
        dictionary at its new size: an Autobahn protocol holds about a hundred
        attributes, and a dictionary never shrinks by itself (a dictionary of
        86 to 170 entries takes 3.3 KB, one of up to 85 takes 1.6 KB). Swap
        Autobahn's empty write queue for a smaller one.
        """
        state = self.__dict__
        for name in _HANDSHAKE_STATE:
            state.pop(name, None)
        if not state.get("send_queue", True):
            state["send_queue"] = _SendQueue()
        self.__dict__ = dict(state)

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
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


class GatewayFactory(WebSocketServerFactory):
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
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            autoPingInterval=0,
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )
        self.applyLimits()

    def applyLimits(self) -> None:
        """
        Set the WebSocket message and frame size bounds from the facade's
        limits, for the connections opened from now on.
        """
        size = HARD_SIZE_FACTOR * self.facade.limits.maxMessageSize
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=size, maxFramePayloadSize=size
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
    "GatewayFactory",
    "GatewayProtocol",
]
