"""
The uniform multiplexer: a fixed number of reconnecting WebSocket client
connections to every address a name service returns, picked round-robin.

It knows nothing of what the connections carry: any Autobahn
L{WebSocketClientFactory} plugs in.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from relaypool.errors import ConnectionDrained, NoConnectionAvailable, PoolClosed, QueueFull
from relaypool.interfaces import INameService, INameSubscription, IRequestProtocol
from relaypool.transport.names import Address

__all__ = [
    "BACKING_OFF",
    "CLOSING",
    "CONNECTING",
    "DRAINING",
    "OPEN",
    "Backoff",
    "SlotStatus",
    "UniformMultiplexer",
]

CONNECTING = "connecting"
OPEN = "open"
BACKING_OFF = "backing-off"
DRAINING = "draining"
CLOSING = "closing"

FactoryArgument = WebSocketClientFactory | Callable[[Address], WebSocketClientFactory]


@dataclass(frozen=True, slots=True)
class Backoff:
    """
    Exponential reconnection delays with jitter.

    @ivar initial: the delay before the first retry, in seconds.
    @ivar maximum: no delay is longer, jitter included.
    @ivar factor: each further failed attempt multiplies the delay by it.
    @ivar jitter: the delay varies at random by up to this fraction of it,
        up or down.
    @ivar resetAfter: a connection that stayed open this many seconds
        resets the attempt count when it closes.
    """

    initial: float = 0.5
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.25
    resetAfter: float = 10.0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """
        @param attempt: how many attempts failed in a row, 1 for the first.
        @param random: returns a float in [0, 1).
        @return: seconds to wait before the next attempt.
        """
        try:
            base = min(self.maximum, self.initial * self.factor ** max(attempt - 1, 0))
        except OverflowError:
            base = self.maximum
        spread = base * self.jitter * (2.0 * random() - 1.0)
        return max(0.0, min(self.maximum, base + spread))


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """
    What one connection slot of a L{UniformMultiplexer} is doing.

    @ivar address: the address the slot connects to.
    @ivar index: the slot's number among that address's slots.
    @ivar state: C{"connecting"}, C{"open"}, C{"backing-off"}, C{"draining"}
        (its address was removed; closing once idle) or C{"closing"} (close
        handshake under way after L{UniformMultiplexer.recycle} or a stop).
    @ivar attempts: how many connection attempts failed in a row.
    @ivar nextRetry: when backing off, the C{reactor.seconds()} of the next
        attempt; else L{None}.
    @ivar lastError: why the last attempt failed or the last connection
        closed, once one did; else L{None}.
    @ivar failingSince: the C{reactor.seconds()} of the first of the
        C{attempts} failed attempts in a row; L{None} when C{attempts} is 0.
    """

    address: Address
    index: int
    state: str
    attempts: int
    nextRetry: float | None
    lastError: str | None = None
    failingSince: float | None = None


def _closeReason(protocol: Any, wasOpen: bool) -> str:
    """
    @return: why the connection of C{protocol} (an Autobahn WebSocket
        protocol, or any protocol) closed, in a few words.
    """
    what = "connection closed" if wasOpen else "WebSocket handshake failed"
    code = getattr(protocol, "remoteCloseCode", None)
    if code is not None:
        reason = getattr(protocol, "remoteCloseReason", None)
        return f"{what}: close code {code}" + (f" ({reason})" if reason else "")
    detail = getattr(protocol, "wasNotCleanReason", None)
    return f"{what}: {detail}" if detail else what


def _ignoreCancelled(failure: Failure) -> None:
    failure.trap(CancelledError)  # type: ignore[no-untyped-call]


class _Slot:
    """
    One connection kept to one address: connects, reconnects with backoff,
    drains and closes.
    """

    def __init__(self, mux: UniformMultiplexer, address: Address, index: int) -> None:
        self.mux = mux
        self.address = address
        self.index = index
        self.state = CONNECTING
        self.attempts = 0
        self.nextRetry: float | None = None
        self.lastError: str | None = None
        self.failingSince: float | None = None
        self.protocol: Any = None
        self.retired = False
        self._openedAt: float | None = None
        self._recycling = False
        self._connecting: Deferred[Any] | None = None
        self._retryCall: IDelayedCall | None = None
        self._abortCall: IDelayedCall | None = None
        self._drainCall: IDelayedCall | None = None
        self._idle: Deferred[Any] | None = None
        self._closedWaiters: list[Deferred[None]] = []

    def status(self) -> SlotStatus:
        return SlotStatus(
            self.address,
            self.index,
            self.state,
            self.attempts,
            self.nextRetry,
            self.lastError,
            self.failingSince,
        )

    def _setState(self, state: str) -> None:
        self.state = state
        self.mux._stateChanged(self)

    def connect(self) -> None:
        self._retryCall = None
        self.nextRetry = None
        self._setState(CONNECTING)
        connecting = maybeDeferred(self.mux._connect, self.address)
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol: Any) -> None:
        self._connecting = None
        self.protocol = protocol
        self.mux._byProtocol[protocol] = self
        protocol.is_open.addCallback(self._opened, protocol)
        protocol.is_closed.addCallback(self._closed, protocol)

    def _connectFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self.retired:
            self.mux._slotGone(self)
            return
        # Logged with the state change (see SlotStatus.lastError).
        self.lastError = failure.getErrorMessage()
        self._backOff()

    def _opened(self, result: object, protocol: Any) -> object:
        if protocol is self.protocol and self.state == CONNECTING and not self.retired:
            self._openedAt = self.mux._reactor.seconds()
            self.mux._slotOpened(self)
        return result

    def _closed(self, result: object, protocol: Any) -> object:
        if protocol is not self.protocol:
            return result
        now = self.mux._reactor.seconds()
        for call in (self._abortCall, self._drainCall):
            if call is not None and call.active():
                call.cancel()
        self._abortCall = self._drainCall = None
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.cancel()
        self.mux._byProtocol.pop(protocol, None)
        self.mux._unready(protocol)
        self.protocol = None
        wasOpen = self._openedAt is not None
        if self._openedAt is not None and now - self._openedAt >= self.mux._backoff.resetAfter:
            self.attempts = 0
            self.failingSince = None
        self._openedAt = None
        if self.retired:
            self.mux._slotGone(self)
        elif self._recycling:
            self._recycling = False
            self.connect()
        else:
            self.lastError = _closeReason(protocol, wasOpen)
            self._backOff()
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        return result

    def _backOff(self) -> None:
        if self.attempts == 0:
            self.failingSince = self.mux._reactor.seconds()
        self.attempts += 1
        delay = self.mux._backoff.delay(self.attempts, self.mux._random)
        self.nextRetry = self.mux._reactor.seconds() + delay
        self._retryCall = self.mux._reactor.callLater(delay, self.connect)
        self._setState(BACKING_OFF)

    def whenClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def retire(self, graceful: bool) -> None:
        """
        Stop for good: drain first if C{graceful} (address removed), else
        close at once (multiplexer stopping).
        """
        self.retired = True
        if self.state == BACKING_OFF:
            if self._retryCall is not None and self._retryCall.active():
                self._retryCall.cancel()
            self._retryCall = None
            self.mux._slotGone(self)
        elif self._connecting is not None:
            self._connecting.cancel()
        elif self.state == CONNECTING:
            self._abort()
        elif self.state == OPEN and graceful:
            self._drain()
        elif self.state in (OPEN, DRAINING):
            self.close(CLOSING)

    def recycle(self) -> Deferred[None]:
        closed = self.whenClosed()
        if not self.retired and self.state in (CONNECTING, OPEN):
            self._recycling = True
            if self.state == OPEN:
                self.close(CLOSING)
            else:
                self._abort()
        return closed

    def _drain(self) -> None:
        protocol = self.protocol
        self.mux._unready(protocol)
        self._setState(DRAINING)
        if not IRequestProtocol.providedBy(protocol):
            self.close(DRAINING)
            return
        self._drainCall = self.mux._reactor.callLater(self.mux._drainTimeout, self._drainExpired)
        idle: Deferred[Any] = protocol.whenIdle()  # type: ignore[no-untyped-call]
        self._idle = idle
        idle.addCallback(self._drained).addErrback(_ignoreCancelled)

    def _drained(self, result: object) -> None:
        self._idle = None
        self.close(DRAINING)

    def _drainExpired(self) -> None:
        self._drainCall = None
        self.protocol.failPending(
            ConnectionDrained(
                f"{self.address} was removed from {self.mux._name} and its connection "
                f"did not finish its requests within {self.mux._drainTimeout}s"
            )
        )
        self.close(DRAINING)

    def close(self, state: str) -> None:
        """
        Start the close handshake; abort the connection if it does not finish
        within the close timeout.
        """
        if self._drainCall is not None and self._drainCall.active():
            self._drainCall.cancel()
        self._drainCall = None
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.cancel()
        self.mux._unready(self.protocol)
        self._setState(state)
        if self._abortCall is None:
            self._abortCall = self.mux._reactor.callLater(self.mux._closeTimeout, self._abort)
        self.protocol.sendClose(code=1000, reason="relaypool: closing")

    def _abort(self) -> None:
        self._abortCall = None
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()


class UniformMultiplexer(service.Service):
    """
    Keeps exactly C{connectionsPerAddress} WebSocket connections to each
    address the name service currently returns for C{name}, and hands them
    out round-robin.

    Every slot reconnects on its own with L{Backoff}, counting refused
    connections and rejected or timed-out WebSocket handshakes as failed
    attempts. When the name service removes an address its slots drain:
    a protocol providing L{IRequestProtocol} gets C{drainTimeout} seconds to
    finish its requests, then the rest fail with L{ConnectionDrained}; then
    the connection closes with a close handshake.

    @ivar maxMessageSize: the message and frame payload limit, in bytes, set
        on every factory whose limits were left unlimited (Autobahn's
        default).
    """

    def __init__(
        self,
        reactor: Any,
        nameService: INameService,
        name: str,
        factory: FactoryArgument,
        connectionsPerAddress: int = 1,
        backoff: Backoff = Backoff(),
        tls: IOpenSSLClientConnectionCreator | None = None,
        onStateChange: Callable[[SlotStatus], None] | None = None,
        closeTimeout: float = 5.0,
        drainTimeout: float = 30.0,
        random: Callable[[], float] = _random.random,
        maxMessageSize: int = 1 << 20,
        maxWaiters: int = 1000,
    ) -> None:
        """
        @param reactor: an L{IReactorTCP} and L{IReactorTime}; the global
            reactor if L{None}.
        @param nameService: resolves C{name}.
        @param name: C{"host:port"} to follow.
        @param factory: the factory building every connection's protocol, or
            a callable returning a new factory for an L{Address} (called on
            every connection attempt).
        @param connectionsPerAddress: connections kept to each address.
        @param backoff: reconnection delays.
        @param tls: for C{wss://} factories, how to verify the server;
            L{None} verifies the certificate against the factory's URL
            hostname with the platform's trust roots. Ignored for C{ws://}.
        @param onStateChange: called with a L{SlotStatus} on every slot
            state change.
        @param closeTimeout: seconds a close handshake may take before the
            connection is aborted.
        @param drainTimeout: seconds a draining connection may take to
            finish its requests.
        @param random: source of jitter, returning floats in [0, 1).
        @param maxMessageSize: default payload limit in bytes (1 MiB).
        @param maxWaiters: how many L{whenReady} calls may wait at once; more
            fail with L{QueueFull}.
        """
        if connectionsPerAddress < 1:
            raise ValueError("connectionsPerAddress must be at least 1")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._nameService = nameService
        self._name = name
        self._factory = factory
        self._connectionsPerAddress = connectionsPerAddress
        self._backoff = backoff
        self._tls = tls
        self._onStateChange = onStateChange
        self._closeTimeout = closeTimeout
        self._drainTimeout = drainTimeout
        self._random = random
        self.maxMessageSize = maxMessageSize
        self._maxWaiters = maxWaiters
        self._slots: dict[Address, list[_Slot]] = {}
        self._retired: set[_Slot] = set()
        self._byProtocol: dict[Any, _Slot] = {}
        self._ready: list[Any] = []
        self._cursor = 0
        self._waiters: list[tuple[Deferred[Any], IDelayedCall | None]] = []
        self._subscription: INameSubscription | None = None
        self._stopping = False
        self._stopWaiters: list[Deferred[None]] = []
        self._tlsByHost: dict[str, IOpenSSLClientConnectionCreator] = {}
        self._observers: list[Callable[[SlotStatus], None]] = []
        if isinstance(factory, WebSocketClientFactory):
            self._limit(factory)

    # --- service ----------------------------------------------------------

    def startService(self) -> None:
        """
        Subscribe to the name service and connect to every address it
        returns. Does nothing if already running.
        """
        if self.running:
            return
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        self._subscription = self._nameService.subscribe(  # type: ignore[no-untyped-call]
            self._name, self._addressesChanged
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop following the name service, cancel pending retries and attempts,
        fail L{whenReady} waiters with L{PoolClosed} and close every open
        connection with a close handshake (aborting it after
        C{closeTimeout}).

        @return: a Deferred firing when every connection is closed.
        """
        if not self.running and not self._stopping:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stopWaiters.append(done)
        if self._stopping:
            return done
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        waiters, self._waiters = self._waiters, []
        for waiter, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            waiter.errback(PoolClosed(f"the multiplexer for {self._name} stopped"))
        for slots in self._slots.values():
            self._retired.update(slots)
        self._slots.clear()
        for slot in list(self._retired):
            slot.retire(graceful=False)
        self._checkStopped()
        return done

    # --- public queries ---------------------------------------------------

    def pick(self) -> Any:
        """
        @return: the next open connection, round-robin over all of them.
        @raise NoConnectionAvailable: if no connection is open.
        """
        ready = self._ready
        if not ready:
            raise NoConnectionAvailable(f"no open connection to {self._name}")
        index = self._cursor % len(ready)
        self._cursor = index + 1
        return ready[index]

    def whenReady(self, timeout: float | None = None) -> Deferred[Any]:
        """
        @param timeout: seconds to wait at most; L{None} waits until a
            connection opens or the multiplexer stops.
        @return: a Deferred firing with an open connection (picked as by
            L{pick}) as soon as one is open; failing with
            L{NoConnectionAvailable} on timeout, L{PoolClosed} if the
            multiplexer is not running or stops, L{QueueFull} if
            C{maxWaiters} calls already wait.
        """
        if not self.running:
            return fail(PoolClosed(f"the multiplexer for {self._name} is not running"))
        if self._ready:
            return succeed(self.pick())
        if len(self._waiters) >= self._maxWaiters:
            return fail(QueueFull(f"{self._maxWaiters} callers already wait for {self._name}"))
        entry: tuple[Deferred[Any], IDelayedCall | None]

        def cancel(waiter: Deferred[Any]) -> None:
            self._forgetWaiter(entry)

        waiter: Deferred[Any] = Deferred(cancel)
        timer = None
        if timeout is not None:
            timer = self._reactor.callLater(timeout, self._waiterExpired, waiter, timeout)
        entry = (waiter, timer)
        self._waiters.append(entry)
        return waiter

    def readyConnections(self) -> list[Any]:
        """
        @return: every open connection (neither draining nor closing).
        """
        return list(self._ready)

    def slots(self) -> list[SlotStatus]:
        """
        @return: the status of every slot, draining and closing ones
            included, by address and index.
        """
        every = [slot for slots in self._slots.values() for slot in slots]
        every.extend(self._retired)
        return sorted(
            (slot.status() for slot in every), key=lambda status: (status.address, status.index)
        )

    def addresses(self) -> frozenset[Address]:
        """
        @return: the addresses the name service currently returns (those
            with slots that are not draining).
        """
        return frozenset(self._slots)

    def addStateObserver(self, observer: Callable[[SlotStatus], None]) -> Callable[[], None]:
        """
        Call C{observer} with a L{SlotStatus} on every slot state change,
        after C{onStateChange}.

        @return: a callable that removes the observer.
        """
        self._observers.append(observer)

        def remove() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return remove

    def addressOf(self, protocol: Any) -> Address:
        """
        @return: the address C{protocol} is connected to.
        @raise KeyError: if C{protocol} is not a connection of this
            multiplexer (or has closed).
        """
        return self._byProtocol[protocol].address

    def whenClosed(self, protocol: Any) -> Deferred[None]:
        """
        @return: a Deferred firing once C{protocol} has closed (at once if it
            is not a live connection of this multiplexer).
        """
        slot = self._byProtocol.get(protocol)
        if slot is None:
            return succeed(None)
        return slot.whenClosed()

    def recycle(self, protocol: Any) -> Deferred[None]:
        """
        Close C{protocol} with a close handshake; its slot reconnects at once
        unless its address was removed or the multiplexer stopped.

        @return: a Deferred firing once it has closed.
        @raise KeyError: if C{protocol} is not a connection of this
            multiplexer.
        """
        return self._byProtocol[protocol].recycle()

    # --- internals --------------------------------------------------------

    def _limit(self, factory: WebSocketClientFactory) -> None:
        if not factory.maxMessagePayloadSize and not factory.maxFramePayloadSize:
            factory.setProtocolOptions(  # type: ignore[no-untyped-call]
                maxMessagePayloadSize=self.maxMessageSize,
                maxFramePayloadSize=self.maxMessageSize,
            )

    def _connect(self, address: Address) -> Deferred[Any]:
        factory = self._factory
        if not isinstance(factory, WebSocketClientFactory):
            factory = factory(address)
            self._limit(factory)
        endpoint: IStreamClientEndpoint
        if ":" in address.host:
            endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                self._reactor, address.host, address.port
            )
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address.host, address.port)
        if factory.isSecure:
            endpoint = wrapClientTLS(self._tlsFor(factory.host), endpoint)
        connecting: Deferred[Any] = endpoint.connect(factory)
        return connecting

    def _tlsFor(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        if self._tls is not None:
            return self._tls
        if hostname not in self._tlsByHost:
            self._tlsByHost[hostname] = optionsForClientTLS(hostname)
        return self._tlsByHost[hostname]

    def _addressesChanged(self, addresses: frozenset[Address]) -> None:
        current = frozenset(self._slots)
        for address in sorted(current - addresses):
            slots = self._slots.pop(address)
            self._retired.update(slots)
            for slot in slots:
                slot.retire(graceful=True)
        for address in sorted(addresses - current):
            slots = [_Slot(self, address, i) for i in range(self._connectionsPerAddress)]
            self._slots[address] = slots
            for slot in slots:
                slot.connect()

    def _stateChanged(self, slot: _Slot) -> None:
        if self._onStateChange is None and not self._observers:
            return
        status = slot.status()
        if self._onStateChange is not None:
            self._onStateChange(status)
        for observer in list(self._observers):
            observer(status)

    def _slotOpened(self, slot: _Slot) -> None:
        self._ready.append(slot.protocol)
        slot._setState(OPEN)
        while self._waiters and self._ready:
            waiter, timer = self._waiters.pop(0)
            if timer is not None and timer.active():
                timer.cancel()
            waiter.callback(self.pick())

    def _unready(self, protocol: Any) -> None:
        if protocol in self._ready:
            self._ready.remove(protocol)

    def _slotGone(self, slot: _Slot) -> None:
        self._retired.discard(slot)
        self._checkStopped()

    def _checkStopped(self) -> None:
        if self._stopping and not self._slots and not self._retired:
            self._stopping = False
            waiters, self._stopWaiters = self._stopWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _forgetWaiter(self, entry: tuple[Deferred[Any], IDelayedCall | None]) -> None:
        if entry in self._waiters:
            self._waiters.remove(entry)
        timer = entry[1]
        if timer is not None and timer.active():
            timer.cancel()

    def _waiterExpired(self, waiter: Deferred[Any], timeout: float) -> None:
        self._waiters = [entry for entry in self._waiters if entry[0] is not waiter]
        waiter.errback(
            NoConnectionAvailable(f"no connection to {self._name} opened within {timeout}s")
        )
