"""
The raw-socket WebSocket clients of the load client processes of
C{bench/fanout.py} and C{bench/cluster.py}: plain Twisted protocols that
send the opening handshake, mask their frames with an all-zero key (free),
cut the server's frames out of one buffer by their headers only and answer
pings, so that the load costs as little as possible.

It imports Twisted: import it in a load client process, not in an
orchestrator.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

#: Clients a load client opens at once.
CONNECT_BATCH = 100

_HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def handshake(port: int) -> bytes:
    """
    @return: the opening handshake of a client of 127.0.0.1:C{port}, with a
        fresh key.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    return _HANDSHAKE.format(port=port, key=key).encode()


def masked(first: int, payload: bytes) -> bytes:
    """
    @param first: the frame's first byte (FIN bit and opcode).
    @param payload: shorter than 64 KiB.
    @return: a client frame carrying C{payload}. A client frame must be
        masked; an all-zero mask leaves the payload as is.
    """
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return header + b"\x00\x00\x00\x00" + payload


def maskedText(payload: bytes) -> bytes:
    """
    @return: a client text frame carrying C{payload}.
    """
    return masked(0x81, payload)


def splitFrames(
    buffer: bytes, write: Callable[[bytes], None]
) -> tuple[list[tuple[int, int]], int]:
    """
    Cut the complete frames out of C{buffer}, answering each ping with a
    pong through C{write} (or the server's idle sweep closes a client that
    only listens through a long run).

    @return: the start and end in C{buffer} of the payload of each other
        complete frame, and the offset where the incomplete rest begins.
    """
    frames = []
    offset = 0
    size = len(buffer)
    while size - offset >= 2:
        length = buffer[offset + 1] & 0x7F
        start = offset + 2
        if length == 126:
            if size - offset < 4:
                break
            (length,) = struct.unpack_from("!H", buffer, offset + 2)
            start = offset + 4
        elif length == 127:
            if size - offset < 10:
                break
            (length,) = struct.unpack_from("!Q", buffer, offset + 2)
            start = offset + 10
        end = start + length
        if end > size:
            break
        if buffer[offset] & 0x0F == 0x9:
            write(masked(0x8A, buffer[start:end]))
        else:
            frames.append((start, end))
        offset = end
    return frames, offset


class RawClient(Protocol):
    """
    A client of 127.0.0.1:C{port}: it sends the opening handshake when
    connected, takes everything up to the first blank line it receives as
    the server's answer (unchecked) and then calls L{handshakeDone}; after
    that, L{framesReceived} with the complete frames of what came, pings
    answered.

    @ivar opened: a Deferred the subclass fires when the client is ready.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = b""
        self.upgraded = False
        self.opened: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(handshake(self.port))

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.upgraded = True
            buffer = buffer[end + 4 :]
            self.handshakeDone()
        frames, rest = splitFrames(buffer, self.transport.write)
        self.buffer = buffer[rest:]
        if frames:
            self.framesReceived(buffer, frames)

    def handshakeDone(self) -> None:
        """
        The server answered the opening handshake: frames may be sent.
        """

    def framesReceived(self, buffer: bytes, frames: list[tuple[int, int]]) -> None:
        """
        Complete frames came, pings excepted.

        @param frames: the start and end in C{buffer} of each one's payload.
        """
