"""
A minimal Nostr WebSocket client for the gateway tests: connect, send
messages, collect the frames, wait (boundedly) for a frame matching a
predicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

Frame = list[Any]


class _Protocol(WebSocketClientProtocol):  # type: ignore[misc]
    client: NostrClient

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._received(orjson.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(code, reason)


class NostrClient:
    """
    One test client connection.

    @ivar frames: every decoded frame received, in order.
    @ivar closeCode: the close code once closed.
    """

    def __init__(self, reactor: Any, timeout: float = 5.0) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self.frames: list[Frame] = []
        self.protocol: _Protocol | None = None
        self.closeCode: int | None = None
        self.closeReason: str | None = None
        self.isClosed = False
        self._closeWaiters: list[Deferred[None]] = []
        self._opening: Deferred[NostrClient] = Deferred()
        self._waiters: list[tuple[Callable[[Frame], bool], Deferred[Frame], Any]] = []

    def connect(self, port: int, headers: dict[str, str] | None = None) -> Deferred[NostrClient]:
        """
        Connect to C{ws://127.0.0.1:<port>/}.

        @return: a Deferred firing with this client once the WebSocket is
            open, failing if the connection closes first.
        """
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/", headers=headers)
        factory.protocol = _Protocol
        factory.setProtocolOptions(autoPingInterval=0)
        client = self

        def build(addr: Any) -> _Protocol:
            protocol = _Protocol()
            protocol.factory = factory
            protocol.client = client
            return protocol

        factory.buildProtocol = build
        endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", port, timeout=5)
        endpoint.connect(factory).addErrback(self._failOpen)
        return self._opening

    def _failOpen(self, failure: Any) -> None:
        if not self._opening.called:
            self._opening.errback(failure)

    def _opened(self, protocol: _Protocol) -> None:
        self.protocol = protocol
        self._opening.callback(self)

    def _received(self, frame: Frame) -> None:
        self.frames.append(frame)
        for waiter in list(self._waiters):
            predicate, d, call = waiter
            if predicate(frame):
                self._waiters.remove(waiter)
                call.cancel()
                d.callback(frame)

    def _closed(self, code: int | None, reason: str | None) -> None:
        self.closeCode = code
        self.closeReason = reason
        if not self._opening.called:
            self._opening.errback(ConnectionError(f"closed before opening: {code} {reason}"))
        self.isClosed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, *message: Any) -> None:
        """
        Send a JSON array of C{message}.
        """
        self.sendRaw(orjson.dumps(list(message)))

    def sendRaw(self, payload: bytes, isBinary: bool = False) -> None:
        """
        Send one WebSocket message as is.
        """
        assert self.protocol is not None
        self.protocol.sendMessage(payload, isBinary)

    def waitFor(self, predicate: Callable[[Frame], bool]) -> Deferred[Frame]:
        """
        @return: a Deferred firing with the first frame, already received or
            to come, that matches C{predicate}; it fails with L{TimeoutError}
            after the client's timeout.
        """
        for frame in self.frames:
            if predicate(frame):
                d: Deferred[Frame] = Deferred()
                d.callback(frame)
                return d
        d = Deferred()

        def expire() -> None:
            self._waiters[:] = [w for w in self._waiters if w[1] is not d]
            d.errback(TimeoutError(f"no matching frame; received {self.frames!r}"))

        self._waiters.append((predicate, d, self._reactor.callLater(self._timeout, expire)))
        return d

    def waitForVerb(self, verb: str, *values: Any) -> Deferred[Frame]:
        """
        Wait for a frame whose first elements are C{verb, *values}.
        """
        prefix = [verb, *values]
        return self.waitFor(lambda frame: frame[: len(prefix)] == prefix)

    def verbs(self, subscriptionId: str | None = None) -> list[str]:
        """
        @return: the verbs received, optionally only those of frames for
            C{subscriptionId}.
        """
        return [
            frame[0]
            for frame in self.frames
            if subscriptionId is None or (len(frame) > 1 and frame[1] == subscriptionId)
        ]

    def eventIds(self, subscriptionId: str) -> list[str]:
        """
        @return: the ids of the events received for C{subscriptionId}.
        """
        return [
            frame[2]["id"]
            for frame in self.frames
            if frame[0] == "EVENT" and frame[1] == subscriptionId
        ]

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self.isClosed:
            d.callback(None)
        else:
            self._closeWaiters.append(d)
        return d

    def close(self) -> Deferred[None]:
        """
        Start the close handshake (abort if it lasts more than the timeout).

        @return: L{whenClosed}.
        """
        if self.isClosed or self.protocol is None:
            return self.whenClosed()
        self.protocol.sendClose(1000)
        transport = self.protocol.transport
        abort = self._reactor.callLater(self._timeout, transport.abortConnection)
        return self.whenClosed().addBoth(lambda r: abort.cancel() if abort.active() else None)
