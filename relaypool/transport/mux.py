"""
The uniform multiplexer: a fixed number of reconnecting WebSocket client
connections to every address a name service returns, picked round-robin.

It knows nothing of what the connections carry: any Autobahn
L{WebSocketClientFactory} plugs in.
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
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

from relaypool._reactor import TimeTCPReactor, defaultReactor
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
    "IllegalTransition",
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


class _State(Enum):
    """
    Where a L{_Slot} is; L{_EXPOSED} gives the name L{SlotStatus} shows.
    """

    NEW = "new"
    ATTEMPTING = "attempting"  # TCP (and TLS) connection attempt under way
    HANDSHAKING = "handshaking"  # connected; WebSocket opening handshake under way
    OPEN = "open"
    BACKING_OFF = "backing-off"  # waiting for the retry timer
    DRAINING = "draining"  # address removed; waiting for the requests to finish
    DRAINED_CLOSING = "drained-closing"  # close handshake after draining, then gone
    RECYCLING = "recycling"  # close handshake, then connect again at once
    RECYCLING_ABORT = "recycling-abort"  # handshake aborted, then connect again
    CANCELLING = "cancelling"  # attempt cancelled for good
    ABORTING = "aborting"  # handshake aborted for good
    CLOSING = "closing"  # close handshake for good
    GONE = "gone"  # nothing left; the multiplexer forgot the slot


class _Input(Enum):
    """
    What can happen to a L{_Slot}.
    """

    START = "start"  # the multiplexer made the slot
    RETRY_DUE = "retry-due"  # the backoff delay is over
    CONNECTED = "connected"  # the attempt made a connection (argument: protocol)
    CONNECT_FAILED = "connect-failed"  # the attempt failed (argument: Failure)
    OPENED = "opened"  # the WebSocket handshake finished
    CLOSED = "closed"  # the connection closed (argument: protocol)
    RECYCLE = "recycle"  # UniformMultiplexer.recycle
    REMOVE = "remove"  # the name service dropped the address
    STOP = "stop"  # the multiplexer stops
    IDLE = "idle"  # a draining connection has no request left
    DRAIN_EXPIRED = "drain-expired"  # the drain timeout is over


_EXPOSED = {
    _State.NEW: CONNECTING,
    _State.ATTEMPTING: CONNECTING,
    _State.HANDSHAKING: CONNECTING,
    _State.OPEN: OPEN,
    _State.BACKING_OFF: BACKING_OFF,
    _State.DRAINING: DRAINING,
    _State.DRAINED_CLOSING: DRAINING,
    _State.RECYCLING: CLOSING,
    _State.RECYCLING_ABORT: CONNECTING,
    _State.CANCELLING: CONNECTING,
    _State.ABORTING: CONNECTING,
    _State.CLOSING: CLOSING,
    _State.GONE: CLOSING,
}


class IllegalTransition(RuntimeError):
    """
    A connection slot got an input its state has no transition for: a bug in
    the multiplexer.
    """


class _Slot:
    """
    One connection kept to one address: connects, reconnects with backoff,
    drains and closes. L{_TABLE} is its whole behaviour; the methods are its
    inputs and its outputs.

    @ivar attempts: failed attempts in a row (see L{SlotStatus}).
    @ivar protocol: the connection's protocol from C{CONNECTED} to
        C{CLOSED}, else L{None}.
    """

    def __init__(self, mux: UniformMultiplexer, address: Address, index: int) -> None:
        self.mux = mux
        self.address = address
        self.index = index
        self._state = _State.NEW
        self._inputs: deque[tuple[_Input, Any]] = deque()
        self._feeding = False
        self.attempts = 0
        self.nextRetry: float | None = None
        self.lastError: str | None = None
        self.failingSince: float | None = None
        self.protocol: Any = None
        self._openedAt: float | None = None
        self._connecting: Deferred[Any] | None = None
        self._retryCall: IDelayedCall | None = None
        self._abortCall: IDelayedCall | None = None
        self._drainCall: IDelayedCall | None = None
        self._idle: Deferred[Any] | None = None
        self._closedWaiters: list[Deferred[None]] = []

    @property
    def state(self) -> str:
        """
        The state's public name (C{"connecting"}, C{"open"}, ...).
        """
        return _EXPOSED[self._state]

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

    def _feed(self, what: _Input, argument: Any = None) -> None:
        """
        Take one input: move to the state L{_TRANSITIONS} gives and run its
        outputs. An input arriving while outputs run waits until they are
        done, so every transition runs to completion.

        @raise IllegalTransition: if the current state has no transition for
            C{what}; the slot stays where it was.
        """
        self._inputs.append((what, argument))
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._inputs:
                what, argument = self._inputs.popleft()
                try:
                    self._state, outputs = _TRANSITIONS[self._state, what]
                except KeyError:
                    raise IllegalTransition(
                        f"connection slot {self.address} #{self.index} of {self.mux._name} "
                        f"got {what.value!r} in state {self._state.value!r}"
                    ) from None
                for output in outputs:
                    output(self, argument)
        finally:
            self._feeding = False
            self._inputs.clear()

    # --- inputs -------------------------------------------------------------

    def start(self) -> None:
        self._feed(_Input.START)

    def remove(self) -> None:
        """
        Stop for good after draining: the name service dropped the address.
        """
        self._feed(_Input.REMOVE)

    def stop(self) -> None:
        """
        Stop for good, closing at once: the multiplexer stops.
        """
        self._feed(_Input.STOP)

    def recycle(self) -> Deferred[None]:
        closed = self.whenClosed()
        self._feed(_Input.RECYCLE)
        return closed

    def whenClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def _retryDue(self) -> None:
        self._feed(_Input.RETRY_DUE)

    def _connected(self, protocol: Any) -> None:
        self._feed(_Input.CONNECTED, protocol)

    def _connectFailed(self, failure: Failure) -> None:
        self._feed(_Input.CONNECT_FAILED, failure)

    def _opened(self, result: object, protocol: Any) -> object:
        self._checkCurrent(protocol)
        self._feed(_Input.OPENED)
        return result

    def _closed(self, result: object, protocol: Any) -> object:
        self._checkCurrent(protocol)
        self._feed(_Input.CLOSED, protocol)
        return result

    def _checkCurrent(self, protocol: Any) -> None:
        if protocol is not self.protocol:
            raise IllegalTransition(
                f"connection slot {self.address} #{self.index} of {self.mux._name} "
                f"got an event of {protocol!r}, not of its connection {self.protocol!r}"
            )

    def _drained(self, result: object) -> None:
        self._idle = None
        self._feed(_Input.IDLE)

    def _drainExpired(self) -> None:
        self._drainCall = None
        self._feed(_Input.DRAIN_EXPIRED)

    # --- outputs (each called with the input's argument) --------------------

    def _announce(self, argument: object) -> None:
        self.mux._stateChanged(self)

    def _attempt(self, argument: object) -> None:
        connecting = maybeDeferred(self.mux._connect, self.address)
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _forgetAttempt(self, argument: object) -> None:
        self._connecting = None

    def _cancelAttempt(self, argument: object) -> None:
        if self._connecting is not None:
            self._connecting.cancel()

    def _watch(self, protocol: Any) -> None:
        self.protocol = protocol
        self.mux._byProtocol[protocol] = self
        protocol.is_open.addCallback(self._opened, protocol)
        protocol.is_closed.addCallback(self._closed, protocol)

    def _markOpened(self, argument: object) -> None:
        self._openedAt = self.mux._reactor.seconds()

    def _makeReady(self, argument: object) -> None:
        self.mux._ready.append(self.protocol)

    def _serveWaiters(self, argument: object) -> None:
        self.mux._serveWaiters()

    def _unready(self, argument: object) -> None:
        self.mux._unready(self.protocol)

    def _recordAttemptError(self, failure: Failure) -> None:
        self.lastError = failure.getErrorMessage()

    def _recordHandshakeError(self, protocol: Any) -> None:
        self.lastError = _closeReason(protocol, wasOpen=False)

    def _recordCloseError(self, protocol: Any) -> None:
        self.lastError = _closeReason(protocol, wasOpen=True)

    def _resetIfStable(self, argument: object) -> None:
        """
        A connection that stayed open C{resetAfter} seconds ends the run of
        failed attempts.
        """
        openedAt, self._openedAt = self._openedAt, None
        if openedAt is None:
            return
        if self.mux._reactor.seconds() - openedAt >= self.mux._backoff.resetAfter:
            self.attempts = 0
            self.failingSince = None

    def _scheduleRetry(self, argument: object) -> None:
        now = self.mux._reactor.seconds()
        if self.attempts == 0:
            self.failingSince = now
        self.attempts += 1
        delay = self.mux._backoff.delay(self.attempts, self.mux._random)
        self.nextRetry = now + delay
        self._retryCall = self.mux._reactor.callLater(delay, self._retryDue)

    def _forgetRetry(self, argument: object) -> None:
        self._retryCall = None
        self.nextRetry = None

    def _cancelRetry(self, argument: object) -> None:
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._forgetRetry(argument)

    def _awaitIdle(self, argument: object) -> None:
        protocol = self.protocol
        if not IRequestProtocol.providedBy(protocol):
            self._feed(_Input.IDLE)
            return
        self._drainCall = self.mux._reactor.callLater(self.mux._drainTimeout, self._drainExpired)
        idle: Deferred[Any] = protocol.whenIdle()  # type: ignore[no-untyped-call]
        self._idle = idle
        idle.addCallback(self._drained).addErrback(_ignoreCancelled)

    def _stopDrainWait(self, argument: object) -> None:
        if self._drainCall is not None and self._drainCall.active():
            self._drainCall.cancel()
        self._drainCall = None
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.cancel()

    def _failPending(self, argument: object) -> None:
        self.protocol.failPending(
            ConnectionDrained(
                f"{self.address} was removed from {self.mux._name} and its connection "
                f"did not finish its requests within {self.mux._drainTimeout}s"
            )
        )

    def _sendClose(self, argument: object) -> None:
        """
        Start the close handshake; abort the connection if it does not finish
        within the close timeout.
        """
        if self._abortCall is None:
            self._abortCall = self.mux._reactor.callLater(self.mux._closeTimeout, self._abort)
        self.protocol.sendClose(code=1000, reason="relaypool: closing")

    def _abort(self, argument: object = None) -> None:
        self._abortCall = None
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _forgetConnection(self, protocol: Any) -> None:
        self._stopDrainWait(protocol)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortCall = None
        self.mux._byProtocol.pop(protocol, None)
        self.mux._unready(protocol)
        self.protocol = None

    def _fireClosed(self, argument: object) -> None:
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _gone(self, argument: object) -> None:
        self.mux._slotGone(self)


_Output = Callable[[_Slot, Any], None]

# Every legal (state, input) pair of a slot: the state it leads to and the
# outputs (methods of _Slot, each called with the input's argument) run in
# that order. Any other pair raises IllegalTransition. Failed attempts, be
# the TCP connection refused or the WebSocket handshake rejected, back off
# longer each time; a connection that opened resets the count once it stayed
# open Backoff.resetAfter seconds.
_TABLE = """
state            input           next state       outputs
new              start           attempting       _announce _attempt
attempting       connected       handshaking      _forgetAttempt _watch
attempting       connect-failed  backing-off      _forgetAttempt _recordAttemptError _scheduleRetry _announce
attempting       remove          cancelling       _cancelAttempt
attempting       stop            cancelling       _cancelAttempt
cancelling       connect-failed  gone             _forgetAttempt _gone
cancelling       connected       aborting         _forgetAttempt _watch _abort
handshaking      opened          open             _markOpened _makeReady _announce _serveWaiters
handshaking      closed          backing-off      _forgetConnection _recordHandshakeError _scheduleRetry _announce _fireClosed
handshaking      recycle         recycling-abort  _abort
handshaking      remove          aborting         _abort
handshaking      stop            aborting         _abort
open             closed          backing-off      _recordCloseError _forgetConnection _resetIfStable _scheduleRetry _announce _fireClosed
open             recycle         recycling        _unready _announce _sendClose
open             remove          draining         _unready _announce _awaitIdle
open             stop            closing          _unready _announce _sendClose
backing-off      retry-due       attempting       _forgetRetry _announce _attempt
backing-off      remove          gone             _cancelRetry _gone
backing-off      stop            gone             _cancelRetry _gone
draining         idle            drained-closing  _stopDrainWait _announce _sendClose
draining         drain-expired   drained-closing  _stopDrainWait _failPending _announce _sendClose
draining         closed          gone             _forgetConnection _gone _fireClosed
draining         recycle         draining
draining         stop            closing          _stopDrainWait _announce _sendClose
drained-closing  closed          gone             _forgetConnection _gone _fireClosed
drained-closing  recycle         drained-closing
drained-closing  stop            closing          _announce
recycling        closed          attempting       _forgetConnection _resetIfStable _announce _attempt _fireClosed
recycling        recycle         recycling
recycling        remove          closing
recycling        stop            closing
recycling-abort  closed          attempting       _forgetConnection _announce _attempt _fireClosed
recycling-abort  opened          recycling-abort
recycling-abort  recycle         recycling-abort
recycling-abort  remove          aborting
recycling-abort  stop            aborting
aborting         closed          gone             _forgetConnection _gone _fireClosed
aborting         opened          aborting
aborting         recycle         aborting
aborting         stop            aborting
closing          closed          gone             _forgetConnection _gone _fireClosed
closing          recycle         closing
closing          stop            closing
"""


def _parseTable(
    table: str,
) -> dict[tuple[_State, _Input], tuple[_State, tuple[_Output, ...]]]:
    """
    @return: C{table}'s rows (after its heading) by state and input.
    @raise ValueError: if a row names an unknown state or input or repeats
        a pair.
    @raise AttributeError: if a row names an output L{_Slot} lacks.
    """
    transitions: dict[tuple[_State, _Input], tuple[_State, tuple[_Output, ...]]] = {}
    for row in table.strip().splitlines()[1:]:
        state, what, after, *outputs = row.split()
        key = (_State(state), _Input(what))
        if key in transitions:
            raise ValueError(f"the slot's transition table repeats {state} {what}")
        transitions[key] = (_State(after), tuple(getattr(_Slot, name) for name in outputs))
    return transitions


_TRANSITIONS = _parseTable(_TABLE)


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
        reactor: TimeTCPReactor | None,
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
        @param reactor: a L{relaypool._reactor.TimeTCPReactor} (an
            L{IReactorTCP} and L{IReactorTime}); the global reactor if
            L{None}.
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
        reactor = defaultReactor(reactor)
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
            slot.stop()
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
                slot.remove()
        for address in sorted(addresses - current):
            slots = [_Slot(self, address, i) for i in range(self._connectionsPerAddress)]
            self._slots[address] = slots
            for slot in slots:
                slot.start()

    def _stateChanged(self, slot: _Slot) -> None:
        if self._onStateChange is None and not self._observers:
            return
        status = slot.status()
        if self._onStateChange is not None:
            self._onStateChange(status)
        for observer in list(self._observers):
            observer(status)

    def _serveWaiters(self) -> None:
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
