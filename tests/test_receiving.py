"""
Tests for L{relaypool.transport.receiving}: whole-message frames are taken
at once, everything else goes through Autobahn, and either way each message
arrives whole, once, in order, and a frame that breaks a rule fails the
connection as Autobahn fails it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaypool.transport.receiving import KEEP_BYTES, WholeMessages, unmask

MASK = b"\x12\x34\x56\x78"
BOUND = 100_000
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(
    payload: bytes,
    opcode: int = 1,
    fin: bool = True,
    mask: bytes | None = MASK,
    rsv: int = 0,
) -> bytes:
    """
    One WebSocket frame, with the shortest length form.
    """
    size = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    maskBit = 0x80 if mask is not None else 0
    if size < 126:
        header = bytes((first, maskBit | size))
    elif size < 65536:
        header = bytes((first, maskBit | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, maskBit | 127)) + size.to_bytes(8, "big")
    if mask is None:
        return header + payload
    return header + mask + unmask(mask, payload)


class _Transport(StringTransport):
    """
    An in-memory transport that, like a TCP one, lets Autobahn unregister
    a producer it never registered when it drops the connection.
    """

    def unregisterProducer(self) -> None:
        self.producer = None


class _Recording(WholeMessages):
    """
    Keeps the messages it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))


class _ServerRecorder(_Recording, WebSocketServerProtocol):  # type: ignore[misc]
    """
    A server protocol keeping the messages from its client.
    """


class _ClientRecorder(_Recording, WebSocketClientProtocol):  # type: ignore[misc]
    """
    A client protocol keeping the messages from its server.
    """


def _closeCode(written: bytes) -> int:
    """
    The status code of the close frame that C{written} starts with (masked
    if a client wrote it).
    """
    assert written[0] == 0x88, written[:16]
    if written[1] & 0x80:
        return int.from_bytes(unmask(written[2:6], written[6:8]), "big")
    return int.from_bytes(written[2:4], "big")


def _openServer() -> tuple[_ServerRecorder, _Transport]:
    """
    A server protocol past its opening handshake on an in-memory transport.
    """
    factory = WebSocketServerFactory("ws://127.0.0.1:7777")
    factory.protocol = _ServerRecorder
    factory.setProtocolOptions(
        maxMessagePayloadSize=BOUND,
        maxFramePayloadSize=BOUND,
        autoPingInterval=0,
        failByDrop=False,
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    key = base64.b64encode(os.urandom(16))
    protocol.dataReceived(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:7777\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
    transport.clear()
    return protocol, transport


def _openClient() -> tuple[_ClientRecorder, _Transport]:
    """
    A client protocol past its opening handshake on an in-memory transport.
    """
    factory = WebSocketClientFactory("ws://127.0.0.1:7777")
    factory.protocol = _ClientRecorder
    factory.setProtocolOptions(autoPingInterval=0, utf8validateIncoming=False, failByDrop=False)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7777))
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7777))
    protocol.makeConnection(transport)
    found = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", transport.value())
    assert found is not None
    accept = base64.b64encode(hashlib.sha1(found.group(1) + _GUID).digest())
    transport.clear()
    protocol.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    assert protocol.state == protocol.STATE_OPEN
    return protocol, transport


# Messages of every length form, text and binary, and in between a message
# in two fragments and a ping (which Autobahn answers).
_MIXED = [
    (frame(b'["EVENT",{}]'), (b'["EVENT",{}]', False)),
    (frame(b""), (b"", False)),
    (frame("\u00e9\U0001f600".encode() * 50), ("\u00e9\U0001f600".encode() * 50, False)),
    (frame(b"x" * 70_000), (b"x" * 70_000, False)),
    (frame(b"hel", fin=False) + frame(b"lo", opcode=0), (b"hello", False)),
    (frame(b"ping!", opcode=9), None),
    (frame(b"\x00\xff" * 10, opcode=2), (b"\x00\xff" * 10, True)),
    (frame(b"last"), (b"last", False)),
]


class _AutobahnOnClock(SynchronousTestCase):
    """
    Autobahn's timers (the close handshake's, once it fails a connection)
    go on a L{Clock}, not the global reactor.
    """

    def setUp(self) -> None:
        savedLoop = txaio.config.loop
        txaio.config.loop = Clock()
        self.addCleanup(setattr, txaio.config, "loop", savedLoop)


class ServerSideTests(_AutobahnOnClock):
    """
    Frames from a client, masked.
    """

    def test_manyInOneRead(self) -> None:
        """
        Whole-message frames read at once are each delivered, in order, text
        and binary told apart.
        """
        protocol, transport = _openServer()
        messages = [(f'["REQ","{i}",{{}}]'.encode(), False) for i in range(50)]
        messages.append((b"\x01\x02", True))
        protocol.dataReceived(
            b"".join(frame(payload, opcode=2 if binary else 1) for payload, binary in messages)
        )
        self.assertEqual(protocol.messages, messages)
        self.assertEqual(transport.value(), b"")
        # Taken here, not by Autobahn, which counts the messages it takes.
        self.assertEqual(protocol.trafficStats.incomingWebSocketMessages, 0)

    def test_anySplit(self) -> None:
        """
        However the stream is cut into reads, fragmented messages and pings
        among whole ones included, every message arrives whole, in order,
        and the ping is answered.
        """
        stream = b"".join(data for data, _ in _MIXED)
        expected = [message for _, message in _MIXED if message is not None]
        for piece in (1, 3, 7, 100, 4096, 65536, len(stream)):
            protocol, transport = _openServer()
            for start in range(0, len(stream), piece):
                protocol.dataReceived(stream[start : start + piece])
            self.assertEqual(protocol.messages, expected, f"reads of {piece} bytes")
            self.assertEqual(transport.value(), b"\x8a\x05ping!", f"reads of {piece} bytes")

    def test_streamTakenHere(self) -> None:
        """
        A stream of frames read in pieces that cut frames anywhere is still
        taken here: the start of a frame waits for the next read.
        """
        protocol, _ = _openServer()
        messages = [(f'["EVENT","sub",{{"n":{i}}}]'.encode(), False) for i in range(300)]
        stream = b"".join(frame(payload) for payload, _ in messages)
        for start in range(0, len(stream), 1000):
            protocol.dataReceived(stream[start : start + 1000])
        self.assertEqual(protocol.messages, messages)
        self.assertEqual(protocol.trafficStats.incomingWebSocketMessages, 0)

    def test_longFrameThenShortOnes(self) -> None:
        """
        A frame longer than L{KEEP_BYTES} goes through Autobahn as it
        comes; the frames after it are taken here again.
        """
        protocol, _ = _openServer()
        messages = [(b"z" * (KEEP_BYTES + 1), False)]
        messages += [(f"short {i}".encode(), False) for i in range(10)]
        stream = b"".join(frame(payload) for payload, _ in messages)
        for start in range(0, len(stream), 4096):
            protocol.dataReceived(stream[start : start + 4096])
        self.assertEqual(protocol.messages, messages)
        self.assertEqual(protocol.trafficStats.incomingWebSocketMessages, 1)

    def assertFailed(self, data: bytes, code: int, delivered: int = 1) -> None:
        """
        After a good message, C{data} fails the connection with C{code},
        and only the good message was delivered.
        """
        protocol, transport = _openServer()
        protocol.dataReceived(frame(b"good") + data + frame(b"never"))
        self.assertEqual(protocol.messages[:delivered], [(b"good", False)])
        self.assertEqual(len(protocol.messages), delivered)
        self.assertEqual(_closeCode(transport.value()), code)

    def test_invalidUTF8(self) -> None:
        """
        A text message that is not UTF-8 fails the connection with 1007.
        """
        self.assertFailed(frame(b"caf\xe9"), 1007)
        self.assertFailed(frame(b"\xed\xa0\x80"), 1007)

    def test_unmasked(self) -> None:
        """
        A client frame without a mask fails the connection with 1002.
        """
        self.assertFailed(frame(b"bare", mask=None), 1002)

    def test_reservedBits(self) -> None:
        """
        A frame with an RSV bit set, no extension being negotiated, fails
        the connection with 1002.
        """
        self.assertFailed(frame(b"odd", rsv=1), 1002)

    def test_longerThanTheBound(self) -> None:
        """
        A frame over the payload bound fails the connection with 1009; one
        at the bound is delivered.
        """
        self.assertFailed(frame(b"x" * (BOUND + 1)), 1009)
        protocol, _ = _openServer()
        protocol.dataReceived(frame(b"x" * BOUND))
        self.assertEqual(protocol.messages, [(b"x" * BOUND, False)])

    def test_longLengthFormForAShortFrame(self) -> None:
        """
        A length written in a longer form than it needs fails the connection
        with 1002.
        """
        self.assertFailed(bytes((0x81, 0xFE)) + (5).to_bytes(2, "big") + MASK + b"abcde", 1002)

    def test_nothingAfterClose(self) -> None:
        """
        Once the protocol has failed the connection, the rest of the read is
        not delivered.
        """
        protocol, transport = _openServer()
        protocol.dataReceived(frame(b"\xff") + frame(b"after"))
        self.assertEqual(protocol.messages, [])
        self.assertEqual(_closeCode(transport.value()), 1007)


class ClientSideTests(_AutobahnOnClock):
    """
    Frames from a server, unmasked.
    """

    def test_anySplit(self) -> None:
        """
        However the server's frames are cut into reads, every message
        arrives whole and in order.
        """
        whole = [(b'["EOSE","s"]', False), (b"y" * 70_000, False), (b"\x00", True)]
        stream = b"".join(
            frame(payload, opcode=2 if binary else 1, mask=None) for payload, binary in whole
        )
        stream += frame(b"a", fin=False, mask=None) + frame(b"b", opcode=0, mask=None)
        for piece in (1, 5, 4096, len(stream)):
            protocol, _ = _openClient()
            for start in range(0, len(stream), piece):
                protocol.dataReceived(stream[start : start + piece])
            self.assertEqual(protocol.messages, whole + [(b"ab", False)], f"reads of {piece} bytes")

    def test_masked(self) -> None:
        """
        A masked frame from the server fails the connection with 1002.
        """
        protocol, transport = _openClient()
        protocol.dataReceived(frame(b"ok", mask=None) + frame(b"masked") + frame(b"no", mask=None))
        self.assertEqual(protocol.messages, [(b"ok", False)])
        self.assertEqual(_closeCode(transport.value()), 1002)


class UnmaskTests(SynchronousTestCase):
    """
    L{unmask}.
    """

    def test_xorWithTheRepeatedMask(self) -> None:
        """
        Each byte is XORed with the mask byte at its position modulo 4;
        the length is kept, leading zeros included.
        """
        for size in (0, 1, 3, 4, 5, 127, 1000):
            payload = os.urandom(size)
            expected = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
            self.assertEqual(unmask(MASK, payload), expected)
        self.assertEqual(unmask(MASK, MASK * 3), bytes(12))
