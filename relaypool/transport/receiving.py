"""
The receiving side of an Autobahn protocol, leaner: see L{WholeMessages}.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

READ_SLICE = 4096
"""
The size of the slices L{WholeMessages} hands what it reads to Autobahn in.
"""

# The first byte of a whole (FIN) text or binary frame with no RSV bit set.
_TEXT_FRAME = 0x81
_BINARY_FRAME = 0x82


def unmask(mask: bytes, payload: bytes) -> bytes:
    """
    C{payload} XORed with the 4-byte C{mask} repeated (RFC 6455 5.3), as one
    operation on two integers.
    """
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


KEEP_BYTES = 65536
"""
The largest frame L{WholeMessages} waits for the rest of, keeping its start
until the next read, rather than handing it to Autobahn (which reads a
longer one as it comes, without holding it whole).
"""


class WholeMessages:
    """
    Mixed in before an Autobahn WebSocket protocol class: each whole message
    goes to L{messageReceived}.

    Frames that are a whole text or binary message, as nearly every Nostr
    message is, are taken from what is read here, in one pass: header,
    mask, UTF-8 check (if the protocol checks it) and delivery, without a
    copy of the rest of the buffer per frame. The start of such a frame of
    at most L{KEEP_BYTES} at the end of a read waits for the next read.
    Anything else (a fragment, a control frame, a longer frame, or one that
    breaks a rule or a bound, which Autobahn then fails the connection for)
    goes through Autobahn, in slices of L{READ_SLICE} bytes: Autobahn copies
    the rest of its buffer each time it takes a frame off its front, so
    given a 64 KB read at once it would copy a hundred times what it
    parses. Once Autobahn has read the frame it was given, the next frames
    are taken here again. Either way a message is delivered without
    Autobahn's debug log line per read and its observable "message" event
    (a Deferred per message), and the frames taken here are not counted in
    Autobahn's C{trafficStats}.
    """

    state: int
    data: bytes
    current_frame: Any
    current_frame_masker: Any
    inside_message: bool
    factory: Any
    failedByMe: bool
    message_data: Any
    message_is_binary: bool
    _dataReceived: Any

    def dataReceived(self, data: bytes) -> None:
        if self._plain() and self.current_frame is not None:
            # Autobahn is inside a frame: it gets the rest of that frame.
            needed = self.current_frame.length - self.current_frame_masker.pointer()
            self._toAutobahn(data[:needed])
            data = data[needed:]
        if data and self._plain() and self.current_frame is None and not self.inside_message:
            if self.data:
                data, self.data = self.data + data, b""
            offset, wait = self._takeWholeFrames(data)
            if wait:
                self.data = data[offset:]
                return
            data = data[offset:]
        self._toAutobahn(data)

    def _toAutobahn(self, data: bytes) -> None:
        for start in range(0, len(data), READ_SLICE):
            self._dataReceived(data[start : start + READ_SLICE])

    def _plain(self) -> bool:
        """
        Whether the connection is open and nothing Autobahn does per frame
        (compression, frame logs, timings, a pong awaited) is on.
        """
        protocol: Any = self
        return (
            protocol.state == WebSocketProtocol.STATE_OPEN
            and protocol._perMessageCompress is None
            and protocol.applyMask
            and not (protocol.logFrames or protocol.logOctets or protocol.trackedTimings)
            and protocol.autoPingTimeoutCall is None
        )

    def _takeWholeFrames(self, data: bytes) -> tuple[int, bool]:
        """
        Deliver the whole-message frames at the start of C{data}.

        @return: the offset of the first byte not taken, and whether the
            bytes from there are only the start of a frame to wait for the
            rest of (a frame of at most L{KEEP_BYTES}, or its header).
        """
        protocol: Any = self
        masked = bool(protocol.factory.isServer)
        maskBit = 0x80 if masked else 0
        bounds = (protocol.maxFramePayloadSize, protocol.maxMessagePayloadSize)
        bound = min((b for b in bounds if b > 0), default=None)
        checkText = protocol.utf8validateIncoming
        end = len(data)
        offset = 0
        while offset < end and protocol.state == WebSocketProtocol.STATE_OPEN:
            if end - offset < 2:
                return offset, True
            first, second = data[offset], data[offset + 1]
            if (first != _TEXT_FRAME and first != _BINARY_FRAME) or second & 0x80 != maskBit:
                break
            size = second & 0x7F
            start = offset + 2
            if size == 126:
                start += 2
            elif size == 127:
                start += 8
            if masked:
                start += 4
            if start > end:
                return offset, True
            if size == 126:
                size = int.from_bytes(data[offset + 2 : offset + 4], "big")
                if size < 126:
                    break
            elif size == 127:
                size = int.from_bytes(data[offset + 2 : offset + 10], "big")
                if size < 65536 or size >= 2**63:
                    break
            if bound is not None and size > bound:
                break
            stop = start + size
            if stop > end:
                return offset, size <= KEEP_BYTES
            payload = data[start:stop]
            if masked:
                payload = unmask(data[start - 4 : start], payload)
            if first == _TEXT_FRAME and checkText:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break
            offset = stop
            self.messageReceived(payload, first == _BINARY_FRAME)
        return offset, False

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self.messageReceived(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
        """
        A whole message arrived (text as UTF-8, checked unless the protocol
        does not check it).
        """
        raise NotImplementedError()


__all__ = ["KEEP_BYTES", "READ_SLICE", "WholeMessages", "unmask"]
