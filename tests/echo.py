"""
A request/reply echo protocol pair over Autobahn, for the mux and pool tests
and the pool bench.

Every client message is an 8-byte request number followed by the payload;
the server sends it back unchanged, except payloads starting with C{hold},
which it keeps until L{EchoServerFactory.releaseHeld}.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from relaypool.errors import ConnectionLost
from relaypool.interfaces import IRequestProtocol


class EchoServerProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """
    Echoes every message, holding those whose payload starts with C{hold}.
    """

    factory: EchoServerFactory

    def onConnect(self, request: Any) -> None:
        if self.factory.reject:
            raise ConnectionDeny(403, "rejected by test")

    def onOpen(self) -> None:
        self.factory.connections.append(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        self.factory.closes.append(wasClean)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload[8:].startswith(b"hold"):
            self.factory.held.append((self, payload))
        else:
            self.sendMessage(payload, isBinary=True)


class EchoServerFactory(WebSocketServerFactory):  # type: ignore[misc]
    """
    @ivar connections: the open server-side protocols.
    @ivar closes: C{wasClean} of every server-side close, in order.
    @ivar held: C{(protocol, message)} kept back by C{hold} payloads.
    @ivar reject: if true, every handshake is refused with HTTP 403.
    """

    protocol = EchoServerProtocol

    def __init__(self, url: str = "ws://127.0.0.1", reject: bool = False) -> None:
        super().__init__(url)
        self.reject = reject
        self.connections: list[EchoServerProtocol] = []
        self.closes: list[bool] = []
        self.held: list[tuple[EchoServerProtocol, bytes]] = []

    def releaseHeld(self) -> None:
        """
        Answer every held message whose connection is still open.
        """
        held, self.held = self.held, []
        for protocol, payload in held:
            if protocol in self.connections:
                protocol.sendMessage(payload, isBinary=True)


@implementer(IRequestProtocol)
class EchoClientProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    """
    The request/reply client of L{EchoServerProtocol}; replies fire in
    whatever order they arrive.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[int, Deferred[bytes]] = {}
        self._next = 0
        self._idle: list[Deferred[None]] = []

    def request(self, payload: bytes) -> Deferred[bytes]:
        if self.state != self.STATE_OPEN:
            return fail(ConnectionLost("not open"))
        number = self._next
        self._next += 1
        reply: Deferred[bytes] = Deferred()
        self._pending[number] = reply
        self.sendMessage(number.to_bytes(8, "big") + payload, isBinary=True)
        return reply

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        reply = self._pending.pop(int.from_bytes(payload[:8], "big"), None)
        if reply is not None:
            reply.callback(payload[8:])
        if not self._pending and self._idle:
            self._fireIdle()

    def inFlight(self) -> int:
        return len(self._pending)

    def whenIdle(self) -> Deferred[None]:
        if not self._pending:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        return idle

    def failPending(self, reason: Exception) -> None:
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            reply.errback(reason)
        self._fireIdle()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.failPending(ConnectionLost(f"connection closed: {reason}"))

    def _fireIdle(self) -> None:
        idle, self._idle = self._idle, []
        for waiter in idle:
            if not waiter.called:
                waiter.callback(None)


def clientFactory(url: str) -> WebSocketClientFactory:
    """
    @return: a client factory building L{EchoClientProtocol} for C{url}.
    """
    factory = WebSocketClientFactory(url)
    factory.protocol = EchoClientProtocol
    return factory


def serve(testCase: TestCase, factory: EchoServerFactory, contextFactory: Any = None) -> int:
    """
    Listen with C{factory} on 127.0.0.1 (over TLS with C{contextFactory} if
    given), closing the port and every server connection at test end.

    @return: the port number.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    if contextFactory is None:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    else:
        port = reactor.listenSSL(0, factory, contextFactory, interface="127.0.0.1")

    def cleanup() -> Deferred[None]:
        stopped = Deferred.fromCoroutine(_stop(port, factory))
        return stopped.addCallback(lambda _: deferLater(reactor, 0, lambda: None))

    testCase.addCleanup(cleanup)
    return int(port.getHost().port)


async def _stop(port: Any, factory: EchoServerFactory) -> None:
    await port.stopListening()
    for protocol in list(factory.connections):
        if protocol.transport is not None:
            protocol.transport.abortConnection()
        await protocol.is_closed


async def waitFor(predicate: Any, timeout: float = 5.0) -> None:
    """
    Let the reactor run until C{predicate()} is true, for C{timeout} seconds
    at most.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {timeout}s")
