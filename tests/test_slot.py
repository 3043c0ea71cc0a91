"""
Tests for the connection slot of L{relaypool.transport.mux}: its transitions,
driven on a L{MemoryReactorClock} with iosim connections (no real sockets,
no real time).

The slot's contract with a connection is Autobahn's: C{is_open} fires when
the WebSocket handshake is done, C{is_closed} when the connection is gone,
C{sendClose} starts the close handshake. L{FakeWebSocket} keeps that
contract over an iosim transport, so each test decides when the handshake
succeeds, fails or closes.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaypool.errors import ConnectionDrained
from relaypool.interfaces import IRequestProtocol
from relaypool.transport import mux as muxModule
from relaypool.transport.mux import Backoff, IllegalTransition, SlotStatus, UniformMultiplexer
from relaypool.transport.names import Address, StaticNameService

NAME = "relay.test:80"
ADDRESS = Address("10.0.0.1", 80)


@implementer(IRequestProtocol)
class FakeWebSocket(Protocol):
    """
    A client connection with Autobahn's C{is_open}/C{is_closed}/C{sendClose}
    and L{IRequestProtocol}'s draining methods, whose handshake and requests
    the test drives.

    @ivar closesSent: every C{sendClose} call's C{(code, reason)}.
    @ivar failedWith: what L{failPending} was called with.
    """

    def __init__(self) -> None:
        self.is_open: Deferred[None] = Deferred()
        self.is_closed: Deferred[Any] = Deferred()
        self.closesSent: list[tuple[int | None, str | None]] = []
        self.remoteCloseCode: int | None = None
        self.remoteCloseReason: str | None = None
        self.wasNotCleanReason: str | None = None
        self.pending: list[Deferred[bytes]] = []
        self.failedWith: list[Exception] = []
        self._idle: list[Deferred[None]] = []

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.is_closed.callback(self)

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        self.closesSent.append((code, reason))

    def request(self, payload: bytes) -> Deferred[bytes]:
        self.pending.append(Deferred())
        return self.pending[-1]

    def inFlight(self) -> int:
        return len(self.pending)

    def whenIdle(self) -> Deferred[None]:
        self._idle.append(Deferred())
        waiter = self._idle[-1]
        if not self.pending:
            self.answerAll()
        return waiter

    def failPending(self, reason: Exception) -> None:
        self.failedWith.append(reason)
        self.answerAll()

    def answerAll(self) -> None:
        """
        Answer every pending request, then tell the idle waiters.
        """
        while self.pending:
            self.pending.pop().callback(b"")
        while self._idle:
            self._idle.pop().callback(None)


class SlotTests(SynchronousTestCase):
    """
    The transitions of one connection slot of a L{UniformMultiplexer}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.names = StaticNameService({NAME: [ADDRESS]})
        self.statuses: list[SlotStatus] = []
        factory = WebSocketClientFactory("ws://relay.test")
        factory.protocol = FakeWebSocket
        self.mux = UniformMultiplexer(
            self.reactor,
            self.names,
            NAME,
            factory,
            backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0, resetAfter=10.0),
            onStateChange=self.statuses.append,
            closeTimeout=5.0,
            drainTimeout=30.0,
        )
        self.pumps: list[iosim.IOPump] = []
        self.mux.startService()

    # --- helpers ----------------------------------------------------------

    def status(self) -> SlotStatus:
        (status,) = self.mux.slots()
        return status

    def states(self) -> list[str]:
        """
        @return: the announced states so far, then forget them.
        """
        states = [status.state for status in self.statuses]
        del self.statuses[:]
        return states

    def tcpConnect(self) -> FakeWebSocket:
        """
        Complete the latest TCP attempt over an iosim transport.
        """
        factory = self.reactor.tcpClients[-1][2]
        client = factory.buildProtocol(None)
        server = Protocol()
        self.pumps.append(
            iosim.connect(
                server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
            )
        )
        protocol: FakeWebSocket = client._wrappedProtocol
        return protocol

    def openConnection(self) -> FakeWebSocket:
        protocol = self.tcpConnect()
        protocol.is_open.callback(None)
        return protocol

    def refuse(self) -> None:
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def drop(self, protocol: FakeWebSocket) -> None:
        """
        The connection of C{protocol} goes away (server close or abort).
        """
        protocol.transport.loseConnection()
        self.pumps[-1].flush()

    def retryIn(self) -> float:
        nextRetry = self.status().nextRetry
        assert nextRetry is not None
        return nextRetry - self.reactor.seconds()

    # --- connecting -------------------------------------------------------

    def test_connectSuccess(self) -> None:
        """
        A slot announces C{connecting}, stays so while the WebSocket
        handshake runs, then announces C{open} and its connection is ready.
        """
        self.assertEqual(self.states(), ["connecting"])
        protocol = self.tcpConnect()
        self.assertEqual((self.status().state, self.states()), ("connecting", []))
        self.assertEqual(self.mux.readyConnections(), [])
        protocol.is_open.callback(None)
        self.assertEqual(self.states(), ["open"])
        self.assertEqual(self.mux.readyConnections(), [protocol])
        self.assertIs(self.successResultOf(self.mux.whenReady()), protocol)

    def test_connectFailureBacksOff(self) -> None:
        """
        A refused attempt moves the slot to C{backing-off} with the error;
        the attempt count and delay grow with each failure in a row, and
        C{failingSince} keeps the time of the first.
        """
        self.reactor.advance(100)
        self.refuse()
        status = self.status()
        self.assertEqual((status.state, status.attempts, status.failingSince), ("backing-off", 1, 100))
        self.assertIn("refused", status.lastError or "")
        self.assertEqual(self.retryIn(), 1.0)
        self.reactor.advance(1.0)
        self.assertEqual(self.status().state, "connecting")
        self.refuse()
        self.assertEqual((self.status().attempts, self.status().failingSince), (2, 100))
        self.assertEqual(self.retryIn(), 2.0)

    def test_handshakeRejectedCountsAsFailure(self) -> None:
        """
        A connection that closes before its WebSocket handshake finished is
        a failed attempt: C{backing-off}, a growing delay, and the reason in
        C{lastError}; it is never ready.
        """
        for attempt, delay in ((1, 1.0), (2, 2.0)):
            protocol = self.tcpConnect()
            protocol.wasNotCleanReason = "HTTP 403"
            self.drop(protocol)
            status = self.status()
            self.assertEqual((status.state, status.attempts), ("backing-off", attempt))
            self.assertEqual(status.lastError, "WebSocket handshake failed: HTTP 403")
            self.assertEqual(self.retryIn(), delay)
            self.reactor.advance(delay)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertNotIn("open", self.states())

    def test_connectionLostReconnects(self) -> None:
        """
        An open connection that closes moves the slot to C{backing-off};
        after the delay it connects again and opens.
        """
        protocol = self.openConnection()
        protocol.remoteCloseCode, protocol.remoteCloseReason = 1001, "going away"
        self.states()
        self.drop(protocol)
        self.assertEqual(self.states(), ["backing-off"])
        self.assertEqual(self.status().lastError, "connection closed: close code 1001 (going away)")
        self.assertEqual(self.mux.readyConnections(), [])
        self.reactor.advance(self.retryIn())
        self.assertEqual(len(self.reactor.tcpClients), 2)
        second = self.openConnection()
        self.assertEqual(self.states(), ["connecting", "open"])
        self.assertEqual(self.mux.readyConnections(), [second])

    def test_stableConnectionResetsAttempts(self) -> None:
        """
        A connection that stayed open C{resetAfter} seconds ends the run of
        failures: when it closes, the next delay is the first one again.
        """
        for _ in range(3):
            self.refuse()
            self.reactor.advance(self.retryIn())
        protocol = self.openConnection()
        self.assertEqual(self.status().attempts, 3)
        self.reactor.advance(10.0)
        self.drop(protocol)
        self.assertEqual((self.status().attempts, self.status().failingSince), (1, 17.0))
        self.assertEqual(self.retryIn(), 1.0)

    def test_shortConnectionKeepsAttempts(self) -> None:
        """
        A connection that closes before C{resetAfter} seconds continues the
        run of failures.
        """
        self.refuse()
        self.reactor.advance(self.retryIn())
        self.drop(self.openConnection())
        self.assertEqual(self.status().attempts, 2)
        self.assertEqual(self.retryIn(), 2.0)

    # --- removing the address ---------------------------------------------

    def test_removeWhileOpenDrains(self) -> None:
        """
        When the address goes away, an open connection stops being handed
        out, finishes its requests (C{draining}), then closes with a close
        handshake and the slot is gone.
        """
        protocol = self.openConnection()
        reply = protocol.request(b"x")
        self.states()
        self.names.update(NAME, [])
        self.assertEqual((self.states(), self.mux.readyConnections()), (["draining"], []))
        self.assertEqual(protocol.closesSent, [])
        protocol.answerAll()
        self.successResultOf(reply)
        self.assertEqual(protocol.closesSent, [(1000, "relaypool: closing")])
        self.assertEqual(self.status().state, "draining")
        self.drop(protocol)
        self.assertEqual(self.mux.slots(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drainTimeout(self) -> None:
        """
        Requests still pending C{drainTimeout} seconds after the address
        went away fail with L{ConnectionDrained}, and the connection closes.
        """
        protocol = self.openConnection()
        protocol.request(b"x")
        self.names.update(NAME, [])
        self.reactor.advance(29.9)
        self.assertEqual((protocol.failedWith, protocol.closesSent), ([], []))
        self.reactor.advance(0.1)
        [reason] = protocol.failedWith
        self.assertIsInstance(reason, ConnectionDrained)
        self.assertEqual(len(protocol.closesSent), 1)

    def test_removeWhileAttempting(self) -> None:
        """
        When the address goes away during the TCP attempt, the attempt is
        cancelled and the slot is gone at once, with no retry.
        """
        self.names.update(NAME, [])
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.mux.slots(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_removeWhileHandshaking(self) -> None:
        """
        When the address goes away during the WebSocket handshake, the
        connection is aborted; once it is closed the slot is gone and does
        not reconnect.
        """
        protocol = self.tcpConnect()
        self.names.update(NAME, [])
        self.assertTrue(protocol.transport.disconnecting)
        self.assertEqual(self.status().state, "connecting")
        self.pumps[-1].flush()
        self.assertEqual(self.mux.slots(), [])
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_removeWhileBackingOff(self) -> None:
        """
        When the address goes away while the slot backs off, the retry is
        cancelled and the slot is gone.
        """
        self.refuse()
        self.names.update(NAME, [])
        self.assertEqual(self.mux.slots(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    # --- stopping ---------------------------------------------------------

    def test_stopWhileOpen(self) -> None:
        """
        Stopping closes an open connection with a close handshake
        (C{closing}); the stop finishes when it has closed, and nothing
        reconnects.
        """
        protocol = self.openConnection()
        self.states()
        stopped = self.mux.stopService()
        self.assertEqual((self.states(), protocol.closesSent), (["closing"], [(1000, "relaypool: closing")]))
        self.assertNoResult(stopped)
        self.drop(protocol)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual((self.mux.slots(), self.reactor.getDelayedCalls()), ([], []))

    def test_stopAbortsAfterCloseTimeout(self) -> None:
        """
        A close handshake that does not finish within C{closeTimeout}
        seconds is cut short by aborting the connection.
        """
        protocol = self.openConnection()
        stopped = self.mux.stopService()
        self.reactor.advance(4.9)
        self.assertFalse(protocol.transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(protocol.transport.disconnecting)
        self.pumps[-1].flush()
        self.successResultOf(stopped)

    def test_stopWhileHandshaking(self) -> None:
        """
        Stopping during the WebSocket handshake aborts the connection; the
        stop finishes once it is closed.
        """
        protocol = self.tcpConnect()
        stopped = self.mux.stopService()
        self.assertTrue(protocol.transport.disconnecting)
        self.assertNoResult(stopped)
        self.pumps[-1].flush()
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_stopWhileDraining(self) -> None:
        """
        Stopping while a connection drains closes it at once (C{closing})
        and cancels the drain timeout.
        """
        protocol = self.openConnection()
        protocol.request(b"x")
        self.names.update(NAME, [])
        self.states()
        stopped = self.mux.stopService()
        self.assertEqual((self.states(), len(protocol.closesSent)), (["closing"], 1))
        self.drop(protocol)
        self.successResultOf(stopped)
        self.assertEqual((protocol.failedWith, self.reactor.getDelayedCalls()), ([], []))

    def test_stopWhileRecycling(self) -> None:
        """
        Stopping while a recycled connection closes makes it close for good:
        the slot does not connect again.
        """
        protocol = self.openConnection()
        self.mux.recycle(protocol)
        stopped = self.mux.stopService()
        self.drop(protocol)
        self.successResultOf(stopped)
        self.assertEqual((self.mux.slots(), len(self.reactor.tcpClients)), ([], 1))

    # --- recycling --------------------------------------------------------

    def test_recycleWhileOpen(self) -> None:
        """
        Recycling an open connection closes it (C{closing}), then the slot
        connects again at once, without a backoff delay or a failed attempt.
        """
        protocol = self.openConnection()
        self.states()
        closed = self.mux.recycle(protocol)
        self.assertEqual((self.states(), len(protocol.closesSent)), (["closing"], 1))
        self.assertEqual(self.mux.readyConnections(), [])
        self.drop(protocol)
        self.successResultOf(closed)
        self.assertEqual(self.states(), ["connecting"])
        self.assertEqual((len(self.reactor.tcpClients), self.status().attempts), (2, 0))

    def test_recycleWhileHandshaking(self) -> None:
        """
        Recycling a connection whose handshake runs aborts it, then the slot
        connects again at once.
        """
        protocol = self.tcpConnect()
        closed = self.mux.recycle(protocol)
        self.assertTrue(protocol.transport.disconnecting)
        self.pumps[-1].flush()
        self.successResultOf(closed)
        self.assertEqual((len(self.reactor.tcpClients), self.status().state), (2, "connecting"))

    # --- the table --------------------------------------------------------

    def test_illegalInputRaises(self) -> None:
        """
        An input the slot's state has no transition for raises
        L{IllegalTransition} and leaves the slot where it was: a retry timer
        firing for an open slot is a bug, not something to ignore.
        """
        protocol = self.openConnection()
        [slot] = self.mux._slots[ADDRESS]
        self.assertRaises(IllegalTransition, slot._retryDue)
        self.assertEqual(self.status().state, "open")
        self.assertEqual(self.mux.readyConnections(), [protocol])

    def test_tableRejectsRepeatedPair(self) -> None:
        """
        A transition table naming the same state and input twice is refused.
        """
        table = "heading\nopen stop closing\nopen stop closing _announce\n"
        self.assertRaises(ValueError, muxModule._parseTable, table)

    def test_tableRejectsUnknownOutput(self) -> None:
        """
        A transition table naming an output the slot lacks is refused.
        """
        self.assertRaises(AttributeError, muxModule._parseTable, "heading\nopen stop closing _nope\n")

    def test_everyStateLeadsSomewhere(self) -> None:
        """
        Every state but C{gone} has a transition out of it and every state
        but C{new} is reached by one.
        """
        table = muxModule._TRANSITIONS
        left = {state for state, _ in table}
        reached = {after for after, _ in table.values()}
        everyState = set(muxModule._State)
        self.assertEqual(everyState - left, {muxModule._State.GONE})
        self.assertEqual(everyState - reached, {muxModule._State.NEW})
