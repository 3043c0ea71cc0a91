"""
Tests for L{relaypool.gateway.registry}.
"""

from __future__ import annotations

import struct
from typing import Any

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from relaypool.errors import ConfigError, UnknownConnection
from relaypool.gateway.http import GatewayResource
from relaypool.gateway.registry import (
    DRAIN_CHUNK_BYTES,
    Claims,
    ConnectionRegistry,
    RegistryStats,
)

_HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: localhost\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

OPCODE_TEXT = 1
OPCODE_CLOSE = 8
OPCODE_PING = 9


def parseFrames(data: bytes) -> list[tuple[int, bytes]]:
    """
    Split unmasked (server to client) WebSocket frames.

    @return: C{(opcode, payload)} pairs.
    """
    frames = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


class _MemoryFixture:
    """
    Open Autobahn server protocols over L{StringTransport}s, with Autobahn and
    the registry on a L{Clock}.
    """

    def setUpMemory(self, testCase: SynchronousTestCase, **options: Any) -> None:
        self.clock = Clock()
        savedLoop = txaio.config.loop
        txaio.config.loop = self.clock
        testCase.addCleanup(setattr, txaio.config, "loop", savedLoop)
        self.factory = WebSocketServerFactory()
        self.factory.protocol = WebSocketServerProtocol
        # Only the registry's own abort timer, in these tests.
        self.factory.setProtocolOptions(closeHandshakeTimeout=0)
        self.registry = ConnectionRegistry(reactor=self.clock, **options)

    def openProtocol(self, host: str = "10.1.2.3") -> tuple[Any, StringTransport]:
        """
        @return: an open server protocol and its transport, whose output so
            far (the handshake) is cleared.
        """
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4567))
        protocol.makeConnection(transport)
        protocol.dataReceived(_HANDSHAKE)
        assert protocol.state == WebSocketProtocol.STATE_OPEN
        transport.clear()
        return protocol, transport

    def registerOpen(self, **kwargs: Any) -> tuple[int, StringTransport]:
        """
        Open a protocol and register it.

        @return: its id and transport.
        """
        protocol, transport = self.openProtocol()
        return self.registry.register(protocol, **kwargs), transport


class ConnectionTests(_MemoryFixture, SynchronousTestCase):
    """
    Registering, unregistering and claims.
    """

    def setUp(self) -> None:
        self.setUpMemory(self)

    def test_registerAssignsDistinctIds(self) -> None:
        """
        Each registered connection gets its own id and is counted.
        """
        first, _ = self.registerOpen()
        second, _ = self.registerOpen()
        self.assertNotEqual(first, second)
        self.assertEqual(self.registry.connectionCount(), 2)

    def test_unregister(self) -> None:
        """
        An unregistered connection is no longer counted, and unregistering it
        again does nothing.
        """
        connId, _ = self.registerOpen()
        self.registry.unregister(connId)
        self.registry.unregister(connId)
        self.assertEqual(self.registry.connectionCount(), 0)

    def test_defaultClaims(self) -> None:
        """
        Without claims, a connection claims its peer's IP and no pubkey.
        """
        connId, _ = self.registerOpen()
        self.assertEqual(self.registry.claims(connId), Claims(ip="10.1.2.3"))

    def test_claimsAreMutable(self) -> None:
        """
        The claims given at registration are returned, and an update (NIP-42
        authentication) is seen by later readers.
        """
        connId, _ = self.registerOpen(claims=Claims(ip="192.0.2.1"))
        self.registry.claims(connId).pubkey = "ab" * 32
        self.assertEqual(self.registry.claims(connId), Claims(ip="192.0.2.1", pubkey="ab" * 32))

    def test_claimsOfUnknownConnection(self) -> None:
        """
        Asking for the claims of an unregistered connection raises
        L{UnknownConnection}.
        """
        self.assertRaises(UnknownConnection, self.registry.claims, 42)

    def test_autoPingRefused(self) -> None:
        """
        A protocol running Autobahn's per-connection auto-ping is refused with
        a L{ConfigError}.
        """
        self.factory.setProtocolOptions(autoPingInterval=10)
        protocol, _ = self.openProtocol()
        error = self.assertRaises(ConfigError, self.registry.register, protocol)
        self.assertEqual(error.key, "autoPingInterval")

    def test_registersStreamingProducer(self) -> None:
        """
        Registering a connection registers a streaming L{IPushProducer} on its
        transport, replacing a producer left there (twisted.web's channel).
        """
        protocol, transport = self.openProtocol()
        transport.registerProducer(object(), True)
        self.registry.register(protocol)
        self.assertTrue(IPushProducer.providedBy(transport.producer))
        self.assertTrue(transport.streaming)


class RoomTests(_MemoryFixture, SynchronousTestCase):
    """
    Joining and leaving rooms.
    """

    def setUp(self) -> None:
        self.setUpMemory(self)

    def test_joinRoom(self) -> None:
        """
        Joined rooms are counted, sized and listed per connection.
        """
        first, _ = self.registerOpen()
        second, _ = self.registerOpen()
        self.registry.joinRoom(first, "a")
        self.registry.joinRoom(first, "b")
        self.registry.joinRoom(second, "a")
        self.assertEqual(
            (self.registry.roomCount(), self.registry.roomSize("a"), self.registry.roomSize("b")),
            (2, 2, 1),
        )
        self.assertEqual(self.registry.roomsOf(first), frozenset({"a", "b"}))

    def test_leaveRoomReportsEmpty(self) -> None:
        """
        L{ConnectionRegistry.leaveRoom} returns C{True} only when the last
        member left, and an empty room is no longer counted.
        """
        first, _ = self.registerOpen()
        second, _ = self.registerOpen()
        self.registry.joinRoom(first, "a")
        self.registry.joinRoom(second, "a")
        self.assertEqual(
            [self.registry.leaveRoom(first, "a"), self.registry.leaveRoom(second, "a")],
            [False, True],
        )
        self.assertEqual(self.registry.roomCount(), 0)

    def test_unregisterLeavesEveryRoom(self) -> None:
        """
        Unregistering a connection takes it out of all its rooms; a room it
        leaves empty is gone.
        """
        first, _ = self.registerOpen()
        second, _ = self.registerOpen()
        self.registry.joinRoom(first, "a")
        self.registry.joinRoom(first, "b")
        self.registry.joinRoom(second, "a")
        self.registry.unregister(first)
        self.assertEqual(
            (self.registry.roomSize("a"), self.registry.roomSize("b"), self.registry.roomCount()),
            (1, 0, 1),
        )

    def test_unknownConnectionJoinsNothing(self) -> None:
        """
        An unregistered connection joins no room and is in none.
        """
        self.registry.joinRoom(42, "a")
        self.assertEqual((self.registry.roomCount(), self.registry.roomsOf(42)), (0, frozenset()))


class SendTests(_MemoryFixture, SynchronousTestCase):
    """
    Sending and broadcasting text frames.
    """

    def setUp(self) -> None:
        self.setUpMemory(self, maxPendingBytes=100, maxLag=10.0, maxBacklogBytes=200)

    def test_sendText(self) -> None:
        """
        L{ConnectionRegistry.sendText} writes one text frame and returns
        C{True}.
        """
        connId, transport = self.registerOpen()
        self.assertTrue(self.registry.sendText(connId, b'["NOTICE","hi"]'))
        self.clock.advance(0)
        self.assertEqual(parseFrames(transport.value()), [(OPCODE_TEXT, b'["NOTICE","hi"]')])

    def test_sendTextStr(self) -> None:
        """
        L{ConnectionRegistry.sendText}, L{ConnectionRegistry.broadcastText}
        and L{ConnectionRegistry.broadcastRoomText} accept a L{str} and send
        it UTF-8 encoded, counting its encoded size.
        """
        connId, transport = self.registerOpen()
        self.registry.joinRoom(connId, "r")
        self.assertTrue(self.registry.sendText(connId, '["NOTICE","h\u00e9"]'))
        self.assertEqual(self.registry.broadcastText("\u00e9v"), 1)
        self.assertEqual(self.registry.broadcastRoomText("r", "room"), 1)
        self.clock.advance(0)
        self.assertEqual(
            parseFrames(transport.value()),
            [
                (OPCODE_TEXT, '["NOTICE","h\u00e9"]'.encode()),
                (OPCODE_TEXT, "\u00e9v".encode()),
                (OPCODE_TEXT, b"room"),
            ],
        )

    def test_sendTextWrongType(self) -> None:
        """
        A text frame that is neither L{bytes} nor L{str} fails with
        L{TypeError} at the call, even with no recipient, and nothing is
        sent.
        """
        connId, transport = self.registerOpen()
        self.registry.joinRoom(connId, "r")
        wrong: Any = {"not": "text"}
        self.assertRaises(TypeError, self.registry.sendText, connId, wrong)
        self.assertRaises(TypeError, self.registry.sendText, 42, wrong)
        self.assertRaises(TypeError, self.registry.broadcastText, wrong)
        self.assertRaises(TypeError, self.registry.broadcastRoomText, "r", wrong)
        self.assertRaises(TypeError, self.registry.broadcastRoomText, "nobody", wrong)
        self.assertEqual(transport.value(), b"")

    def test_sendTextUnknown(self) -> None:
        """
        Sending to an unregistered connection returns C{False}.
        """
        self.assertFalse(self.registry.sendText(42, b"x"))

    def test_broadcastOncePerConnection(self) -> None:
        """
        L{ConnectionRegistry.broadcastText} writes the frame once to every
        connection and returns how many it wrote to.
        """
        transports = [self.registerOpen()[1] for _ in range(3)]
        self.assertEqual(self.registry.broadcastText(b"event"), 3)
        self.clock.advance(0)
        self.assertEqual(
            [parseFrames(t.value()) for t in transports], [[(OPCODE_TEXT, b"event")]] * 3
        )

    def test_broadcastPreparesOnce(self) -> None:
        """
        A broadcast builds one prepared message for all its recipients.
        """
        calls = []
        prepare = self.factory.prepareMessage
        self.factory.prepareMessage = lambda payload: calls.append(payload) or prepare(payload)
        for _ in range(3):
            self.registerOpen()
        self.registry.broadcastText(b"event")
        self.assertEqual(calls, [b"event"])

    def test_extensionFramesThroughAutobahn(self) -> None:
        """
        A connection that negotiated permessage-deflate gets its frames from
        Autobahn, compressed (RSV1 set), not the prepared plain frame.
        """
        self.factory.setProtocolOptions(
            perMessageCompressionAccept=lambda offers: PerMessageDeflateOfferAccept(offers[0])
        )
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567))
        protocol.makeConnection(transport)
        protocol.dataReceived(
            _HANDSHAKE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        )
        transport.clear()
        connId = self.registry.register(protocol)
        self.assertTrue(self.registry.sendText(connId, b"x" * 50))
        frame = transport.value()
        self.assertEqual((frame[0] & 0x40, frame[0] & 0x0F), (0x40, OPCODE_TEXT))
        self.assertLess(len(frame), 50)

    def test_broadcastRoom(self) -> None:
        """
        L{ConnectionRegistry.broadcastRoomText} writes only to the room's
        members.
        """
        member, memberTransport = self.registerOpen()
        _, otherTransport = self.registerOpen()
        self.registry.joinRoom(member, "r")
        self.assertEqual(self.registry.broadcastRoomText("r", b"event"), 1)
        self.clock.advance(0)
        self.assertEqual(
            (parseFrames(memberTransport.value()), otherTransport.value()),
            ([(OPCODE_TEXT, b"event")], b""),
        )

    def test_oneWritePerTurn(self) -> None:
        """
        The frames written to a connection in one reactor turn reach its
        transport in one write, in order, at the end of the turn.
        """
        connId, transport = self.registerOpen()
        self.registry.joinRoom(connId, "r")
        writes: list[bytes] = []
        original = transport.write
        transport.write = lambda data: writes.append(data) or original(data)  # type: ignore[method-assign]
        self.registry.sendText(connId, b"1")
        self.registry.broadcastRoomText("r", b"2")
        self.registry.broadcastText(b"3")
        self.assertEqual(writes, [])
        self.clock.advance(0)
        self.assertEqual(
            (len(writes), parseFrames(transport.value())),
            (1, [(OPCODE_TEXT, b"1"), (OPCODE_TEXT, b"2"), (OPCODE_TEXT, b"3")]),
        )

    def test_turnWritesChunked(self) -> None:
        """
        Frames written in one turn are handed to the transport as soon as
        they reach L{DRAIN_CHUNK_BYTES}, not held to the end of the turn.
        """
        connId, transport = self.registerOpen()
        frame = b"x" * (DRAIN_CHUNK_BYTES // 2)
        self.registry.sendText(connId, frame)
        self.assertEqual(transport.value(), b"")
        self.registry.sendText(connId, frame)
        self.assertEqual(parseFrames(transport.value()), [(OPCODE_TEXT, frame)] * 2)

    def test_closeWritesTurnFirst(self) -> None:
        """
        A connection the registry closes gets the frames written to it in
        the turn before its Close frame.
        """
        connId, transport = self.registerOpen()
        self.registry.sendText(connId, b"last")
        self.registry.closeAll()
        self.clock.advance(0)
        self.assertEqual(
            [opcode for opcode, _ in parseFrames(transport.value())], [OPCODE_TEXT, OPCODE_CLOSE]
        )

    def test_closedByClientDropsTurn(self) -> None:
        """
        The frames written in a turn to a connection whose client closed it
        meanwhile are not written after the Close frame.
        """
        protocol, transport = self.openProtocol()
        connId = self.registry.register(protocol)
        self.registry.sendText(connId, b"late")
        protocol.sendCloseFrame(code=1000)
        self.clock.advance(0)
        self.assertEqual([opcode for opcode, _ in parseFrames(transport.value())], [OPCODE_CLOSE])

    def test_stopLeavesNoTimer(self) -> None:
        """
        Stopping the registry writes each connection's frames before its
        Close frame and leaves no end-of-turn call behind (only the timer that
        aborts the connections that do not finish closing).
        """
        self.registry.startService()
        connId, transport = self.registerOpen()
        self.registry.sendText(connId, b"last")
        self.registry.stopService()
        self.assertEqual(
            ([opcode for opcode, _ in parseFrames(transport.value())], len(self.clock.getDelayedCalls())),
            ([OPCODE_TEXT, OPCODE_CLOSE], 1),
        )

    def test_broadcastUnknownRoom(self) -> None:
        """
        Broadcasting to a room without members writes nothing.
        """
        self.registerOpen()
        self.assertEqual(self.registry.broadcastRoomText("nobody", b"event"), 0)

    def test_deadMemberDroppedSilently(self) -> None:
        """
        A member whose connection already closed is skipped without a log
        line or an eviction; the others still get the frame.
        """
        deadProtocol, _ = self.openProtocol()
        dead = self.registry.register(deadProtocol)
        live, liveTransport = self.registerOpen()
        self.registry.joinRoom(dead, "r")
        self.registry.joinRoom(live, "r")
        deadProtocol.connectionLost(Failure(ConnectionDone()))
        with capturedLogs() as events:
            written = self.registry.broadcastRoomText("r", b"event")
            self.clock.advance(0)
        self.assertEqual(
            (written, parseFrames(liveTransport.value()), events),
            (1, [(OPCODE_TEXT, b"event")], []),
        )
        stats = self.registry.stats()
        self.assertEqual((stats.droppedDead, stats.evictedSlow), (1, 0))

    def test_burstQueuedNotEvicted(self) -> None:
        """
        Frames sent while the transport reports a full buffer wait in the
        connection's backlog, even well over C{maxPendingBytes}: a burst does
        not evict a client. When the transport drains, the backlog is written
        in order.
        """
        connId, transport = self.registerOpen()
        transport.producer.pauseProducing()
        frames = [bytes([65 + i]) * 30 for i in range(5)]
        for frame in frames:
            self.assertTrue(self.registry.sendText(connId, frame))
        self.assertEqual(
            (transport.value(), self.registry.stats().bytesPending), (b"", 150)
        )
        transport.producer.resumeProducing()
        self.assertEqual(parseFrames(transport.value()), [(OPCODE_TEXT, f) for f in frames])
        stats = self.registry.stats()
        self.assertEqual((stats.bytesPending, stats.evictedSlow), (0, 0))

    def test_backlogWrittenUntilTransportFullAgain(self) -> None:
        """
        A drained transport gets the backlog in writes of L{DRAIN_CHUNK_BYTES}
        (the last frame of a write may go past it) until it reports a full
        buffer again; the rest waits for the next drain.
        """
        self.registry.setBounds(100, 30.0, 90.0, 10.0, 10 * DRAIN_CHUNK_BYTES)
        connId, transport = self.registerOpen()
        producer = transport.producer
        producer.pauseProducing()
        third = DRAIN_CHUNK_BYTES // 3 + 1
        for i in range(5):
            self.registry.sendText(connId, b"%d" % i * third)
        writes = []
        original = transport.write

        def writeThenFill(data: bytes) -> None:
            original(data)
            writes.append(data)
            producer.pauseProducing()

        transport.write = writeThenFill  # type: ignore[method-assign]
        producer.resumeProducing()
        self.assertEqual(
            (len(writes), [payload[:1] for _, payload in parseFrames(transport.value())]),
            (1, [b"0", b"1", b"2"]),
        )
        self.assertEqual(self.registry.stats().bytesPending, 2 * third)

    def test_behindForMaxLagEvicted(self) -> None:
        """
        A connection whose backlog stays over C{maxPendingBytes} for
        C{maxLag} seconds is closed with code 1008 and a logged reason at the
        next frame, while the other connections get that frame.
        """
        slow, slowTransport = self.registerOpen()
        _, fastTransport = self.registerOpen()
        slowTransport.producer.pauseProducing()
        self.registry.broadcastText(b"x" * 101)
        self.clock.advance(9.9)
        self.assertEqual(self.registry.broadcastText(b"y" * 10), 2)
        self.assertEqual(self.registry.stats().evictedSlow, 0)
        self.clock.advance(0.1)
        with capturedLogs() as events:
            self.assertEqual(self.registry.broadcastText(b"z" * 10), 2)
        self.clock.advance(0)
        reason = b"slow client: more than 100 bytes behind for 10 s"
        self.assertEqual(
            parseFrames(slowTransport.value()), [(OPCODE_CLOSE, struct.pack("!H", 1008) + reason)]
        )
        self.assertEqual(parseFrames(fastTransport.value())[-1], (OPCODE_TEXT, b"z" * 10))
        self.assertEqual([e["reason"] for e in events], [reason.decode()])
        self.assertEqual(self.registry.stats().evictedSlow, 1)
        self.assertFalse(self.registry.sendText(slow, b"w"))

    def test_catchingUpResetsLag(self) -> None:
        """
        A connection that gets back under C{maxPendingBytes} is no longer
        behind: its lag counts again from zero the next time it falls behind.
        """
        connId, transport = self.registerOpen()
        producer = transport.producer
        producer.pauseProducing()
        self.registry.sendText(connId, b"x" * 101)
        self.clock.advance(9)
        producer.resumeProducing()
        producer.pauseProducing()
        self.registry.sendText(connId, b"y" * 101)
        self.clock.advance(9)
        self.registry.sendText(connId, b"z")
        self.assertEqual(self.registry.stats().evictedSlow, 0)

    def test_backlogCapEvictsAtOnce(self) -> None:
        """
        A connection whose backlog reaches C{maxBacklogBytes} is evicted at
        once, however short its lag.
        """
        connId, transport = self.registerOpen()
        transport.producer.pauseProducing()
        self.registry.sendText(connId, b"x" * 150)
        self.assertEqual(self.registry.stats().evictedSlow, 0)
        self.registry.sendText(connId, b"y" * 50)
        self.assertEqual(
            parseFrames(transport.value()),
            [(OPCODE_CLOSE, struct.pack("!H", 1008) + b"slow client: 200 bytes waiting to be read")],
        )

    def test_sweepEvictsStalledConnection(self) -> None:
        """
        The sweep evicts a connection that stays behind even when no new
        frame is sent to it.
        """
        connId, transport = self.registerOpen()
        self.registry.touch(connId)
        transport.producer.pauseProducing()
        self.registry.sendText(connId, b"x" * 101)
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        self.clock.advance(30)
        self.assertEqual(self.registry.stats().evictedSlow, 1)

    def test_backlogSmallerThanPendingBoundRejected(self) -> None:
        """
        A C{maxBacklogBytes} below C{maxPendingBytes} is a configuration
        error naming the setting.
        """
        error = self.assertRaises(
            ConfigError, ConnectionRegistry, self.clock, maxPendingBytes=100, maxBacklogBytes=99
        )
        self.assertIn("maxBacklogBytes", str(error))

    def test_isWritable(self) -> None:
        """
        A connection is writable while its transport's buffer is not full and
        its backlog is empty; an unknown one is not.
        """
        connId, transport = self.registerOpen()
        producer = transport.producer
        writable = [self.registry.isWritable(connId)]
        producer.pauseProducing()
        writable.append(self.registry.isWritable(connId))
        self.registry.sendText(connId, b"x")
        producer.resumeProducing()
        writable.append(self.registry.isWritable(connId))
        writable.append(self.registry.isWritable(42))
        self.assertEqual(writable, [True, False, True, False])

    def test_notifyWritableAfterBacklog(self) -> None:
        """
        L{ConnectionRegistry.notifyWritable} calls back once, after the
        transport drained and the backlog was written, not before.
        """
        connId, transport = self.registerOpen()
        producer = transport.producer
        producer.pauseProducing()
        self.registry.sendText(connId, b"queued")
        calls: list[bytes] = []
        self.assertTrue(
            self.registry.notifyWritable(connId, lambda: calls.append(transport.value()))
        )
        self.assertEqual(calls, [])
        producer.resumeProducing()
        producer.pauseProducing()
        producer.resumeProducing()
        self.assertEqual(len(calls), 1)
        self.assertEqual(parseFrames(calls[0]), [(OPCODE_TEXT, b"queued")])

    def test_notifyWritableGone(self) -> None:
        """
        L{ConnectionRegistry.notifyWritable} registers nothing for an unknown
        connection.
        """
        self.assertFalse(self.registry.notifyWritable(42, lambda: None))

    def test_evictedAbortedAfterCloseTimeout(self) -> None:
        """
        An evicted connection that does not finish the close handshake is
        aborted and unregistered after C{closeTimeout}.
        """
        connId, transport = self.registerOpen()
        transport.producer.pauseProducing()
        self.registry.sendText(connId, b"x" * 200)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.registry.connectionCount(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SweepTests(_MemoryFixture, SynchronousTestCase):
    """
    The idle sweep, the ping loop, closing everything and stopping.
    """

    def setUp(self) -> None:
        self.setUpMemory(self, pingInterval=30.0, maxIdle=90.0, closeTimeout=5.0)

    def test_sweepIdle(self) -> None:
        """
        L{ConnectionRegistry.sweepIdle} closes the connections with no
        inbound frame for longer than the window and returns their ids.
        """
        silent, silentTransport = self.registerOpen()
        active, activeTransport = self.registerOpen()
        self.clock.advance(60)
        self.registry.touch(active)
        self.clock.advance(31)
        self.assertEqual(self.registry.sweepIdle(90), [silent])
        self.assertEqual(parseFrames(silentTransport.value())[0][0], OPCODE_CLOSE)
        self.assertEqual(activeTransport.value(), b"")
        self.assertEqual(self.registry.stats().reapedIdle, 1)

    def test_pingLoop(self) -> None:
        """
        The running service pings every connection each C{pingInterval}.
        """
        _, transport = self.registerOpen()
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual(parseFrames(transport.value()), [(OPCODE_PING, b"")] * 2)

    def test_setBoundsPingInterval(self) -> None:
        """
        A new C{pingInterval} from L{ConnectionRegistry.setBounds} restarts
        the running sweep at the new interval, keeping the connection.
        """
        _, transport = self.registerOpen()
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        self.registry.setBounds(1 << 20, 5.0, 90.0, 10.0, 8 << 20)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(parseFrames(transport.value()), [(OPCODE_PING, b"")] * 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_setBoundsChecked(self) -> None:
        """
        L{ConnectionRegistry.setBounds} refuses a C{maxBacklogBytes} under
        C{maxPendingBytes}.
        """
        error = self.assertRaises(
            ConfigError, self.registry.setBounds, 100, 5.0, 90.0, 10.0, 99
        )
        self.assertEqual(error.key, "maxBacklogBytes")

    def test_pingLoopReaps(self) -> None:
        """
        The sweep closes the connections silent for longer than C{maxIdle},
        and pings only the others.
        """
        silent, silentTransport = self.registerOpen()
        active, _ = self.registerOpen()
        self.registry.startService()
        self.addCleanup(self.registry.stopService)
        for _ in range(3):
            self.clock.advance(30)
            self.registry.touch(active)
        silentTransport.clear()
        self.clock.advance(30)
        self.assertEqual([f[0] for f in parseFrames(silentTransport.value())], [OPCODE_CLOSE])
        self.assertEqual(self.registry.stats().reapedIdle, 1)

    def test_closeAll(self) -> None:
        """
        L{ConnectionRegistry.closeAll} sends a Close frame (1001) to every
        open connection and returns how many.
        """
        transports = [self.registerOpen()[1] for _ in range(2)]
        self.assertEqual(self.registry.closeAll(), 2)
        for transport in transports:
            opcode, payload = parseFrames(transport.value())[0]
            self.assertEqual((opcode, payload[:2]), (OPCODE_CLOSE, struct.pack("!H", 1001)))
        self.assertEqual(self.registry.stats().closing, 2)

    def test_stopServiceWaitsForClose(self) -> None:
        """
        The Deferred L{ConnectionRegistry.stopService} returns fires when the
        last connection unregisters.
        """
        first, _ = self.registerOpen()
        second, _ = self.registerOpen()
        self.registry.startService()
        stopped = self.registry.stopService()
        self.registry.unregister(first)
        self.assertNoResult(stopped)
        self.registry.unregister(second)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopServiceAbortsStragglers(self) -> None:
        """
        Connections that do not close within C{closeTimeout} of
        L{ConnectionRegistry.stopService} are aborted, and its Deferred fires.
        """
        _, transport = self.registerOpen()
        self.registry.startService()
        stopped = self.registry.stopService()
        self.clock.advance(5)
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)

    def test_stats(self) -> None:
        """
        L{ConnectionRegistry.stats} reports connections, rooms and frames.
        """
        connId, _ = self.registerOpen()
        self.registry.joinRoom(connId, "r")
        self.registry.broadcastRoomText("r", b"event")
        self.assertEqual(
            self.registry.stats(),
            RegistryStats(
                connections=1,
                closing=0,
                rooms=1,
                evictedSlow=0,
                reapedIdle=0,
                droppedDead=0,
                framesSent=1,
                bytesPending=0,
            ),
        )


class RegisteringServerProtocol(WebSocketServerProtocol):
    """
    A facade-like server protocol: registers on open, touches on every
    inbound frame, unregisters on close.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.connId = self.factory.registry.register(self)
        self.factory.opened.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.registry.touch(self.connId)

    def onPong(self, payload: bytes) -> None:
        self.factory.registry.touch(self.connId)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if hasattr(self, "connId"):
            self.factory.registry.unregister(self.connId)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class RecordingClientProtocol(WebSocketClientProtocol):
    """
    A client that records the text messages it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.opened: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


def makeWebSocketFactory(registry: ConnectionRegistry) -> WebSocketServerFactory:
    """
    @return: a WebSocket factory whose protocols register with C{registry};
        its C{opened} lists them in the order they opened.
    """
    factory = WebSocketServerFactory()
    factory.protocol = RegisteringServerProtocol
    # The registry's closeTimeout bounds the closes it starts; Autobahn's own
    # close timer would outlive an aborted connection.
    factory.setProtocolOptions(closeHandshakeTimeout=0, maxMessagePayloadSize=1 << 20)
    factory.registry = registry
    factory.opened = []
    return factory


def listen(testCase: TestCase, site: Site) -> int:
    """
    Serve C{site} on 127.0.0.1 until cleanup.

    @return: the port number.
    """
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return int(port.getHost().port)


async def connectClient(testCase: TestCase, portNumber: int) -> RecordingClientProtocol:
    """
    Connect a L{RecordingClientProtocol} and wait until it is open; at
    cleanup, abort it if still connected and wait until it is gone.
    """
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{portNumber}/")
    factory.protocol = RecordingClientProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=1 << 22)
    connected: Deferred[RecordingClientProtocol] = Deferred()
    factory.clientConnectionFailed = lambda connector, reason: connected.errback(reason)
    protocols: list[RecordingClientProtocol] = []
    buildProtocol = factory.buildProtocol

    def build(addr: Any) -> RecordingClientProtocol:
        protocol = buildProtocol(addr)
        protocols.append(protocol)
        connected.callback(protocol)
        return protocol

    factory.buildProtocol = build
    reactor.connectTCP("127.0.0.1", portNumber, factory)
    protocol = await connected

    async def cleanup() -> None:
        if not protocol.lost.called:
            protocol.transport.abortConnection()
        await protocol.lost

    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    await protocol.opened
    return protocol


async def waitFor(condition: Any, attempts: int = 500) -> None:
    """
    Let the reactor run until C{condition()} is true, at most C{attempts}
    short turns.
    """
    for _ in range(attempts):
        if condition():
            return
        await deferLater(reactor, 0.005)
    raise AssertionError("condition not reached")


class RealSocketTests(TestCase):
    """
    The registry with real WebSocket connections on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.registry = ConnectionRegistry(
            maxPendingBytes=256 * 1024, maxBacklogBytes=512 * 1024, closeTimeout=0.5
        )
        self.factory = makeWebSocketFactory(self.registry)
        resource = GatewayResource(self.factory, dict, dict, Resource())
        self.portNumber = listen(self, Site(resource))

    async def test_broadcastReachesClients(self) -> None:
        """
        Clients connected through the gateway resource each receive a
        broadcast frame once.
        """
        clients = [await connectClient(self, self.portNumber) for _ in range(3)]
        await waitFor(lambda: self.registry.connectionCount() == 3)
        self.assertEqual(self.registry.broadcastText(b'["EVENT"]'), 3)
        await waitFor(lambda: all(client.received for client in clients))
        self.assertEqual([client.received for client in clients], [[b'["EVENT"]']] * 3)

    async def test_slowClientEvictedOthersReceive(self) -> None:
        """
        A client that stops reading is evicted once its backlog reaches
        C{maxBacklogBytes}, while a reading client receives every frame.
        """
        slow = await connectClient(self, self.portNumber)
        fast = await connectClient(self, self.portNumber)
        await waitFor(lambda: self.registry.connectionCount() == 2)
        slowServer = self.factory.opened[0]
        slow.transport.pauseProducing()
        payload = b"x" * (64 * 1024)
        sent = 0
        for _ in range(2000):
            if self.registry.stats().evictedSlow:
                break
            self.registry.broadcastText(payload)
            sent += 1
            await deferLater(reactor, 0)
        self.assertEqual(self.registry.stats().evictedSlow, 1)
        self.assertEqual(self.registry.broadcastText(b"last"), 1)
        await waitFor(lambda: fast.received[-1:] == [b"last"], attempts=2000)
        self.assertEqual(len(fast.received), sent + 1)
        await slowServer.lost
        self.assertEqual(self.registry.connectionCount(), 1)

    async def test_stopServiceClosesClients(self) -> None:
        """
        L{ConnectionRegistry.stopService} closes every client with a close
        handshake and fires once they are gone.
        """
        clients = [await connectClient(self, self.portNumber) for _ in range(2)]
        await waitFor(lambda: self.registry.connectionCount() == 2)
        self.registry.startService()
        await self.registry.stopService()
        for client in clients:
            await client.lost
            self.assertTrue(client.wasClean)
        self.assertEqual(self.registry.connectionCount(), 0)
