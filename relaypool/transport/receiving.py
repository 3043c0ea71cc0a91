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


class WholeMessages:
    """
    Mixed in before an Autobahn WebSocket protocol class: each whole message
    goes to L{messageReceived}.

    Frames that are a whole text or binary message, as nearly every Nostr
    message is, are taken from what is read here, in one pass: header,
    mask, UTF-8 check (if the protocol checks it) and delivery, without a
    copy of the rest of the buffer per frame. Anything else (a fragment, a
    control frame, a frame not whole yet, or one that breaks a rule or a
    bound, which Autobahn then fails the connection for), and everything
    after it in the read, goes through Autobahn, in slices of L{READ_SLICE}
    bytes: Autobahn copies the rest of its buffer each time it takes a
    frame off its front, so given a 64 KB read at once it would copy a
    hundred times what it parses. Either way a message is delivered without
    Autobahn's debug log line per read and its observable "message" event
    (a Deferred per message), and the frames taken here are not counted in
    Autobahn's C{trafficStats}.
    """

    state: int
    data: bytes
    current_frame: Any
    inside_message: bool
    factory: Any
    failedByMe: bool
    message_data: Any
    message_is_binary: bool
    _dataReceived: Any

    def dataReceived(self, data: bytes) -> None:
        if not self.data and self._takesFrames():
            data = data[self._takeWholeFrames(data) :]
        for start in range(0, len(data), READ_SLICE):
            self._dataReceived(data[start : start + READ_SLICE])

    def _takesFrames(self) -> bool:
        """
        Whether the frames read now may be taken here: the connection is
        open, Autobahn is between messages, and nothing it does per frame
        (compression, frame logs, timings, a pong awaited) is on.
        """
        protocol: Any = self
        return (
            protocol.state == WebSocketProtocol.STATE_OPEN
            and protocol.current_frame is None
            and not protocol.inside_message
            and protocol._perMessageCompress is None
            and protocol.applyMask
            and not (protocol.logFrames or protocol.logOctets or protocol.trackedTimings)
            and protocol.autoPingTimeoutCall is None
        )

    def _takeWholeFrames(self, data: bytes) -> int:
        """
        Deliver the whole-message frames at the start of C{data}.

        @return: the offset of the first byte not taken.
        """
        protocol: Any = self
        masked = bool(protocol.factory.isServer)
        maskBit = 0x80 if masked else 0
        bounds = (protocol.maxFramePayloadSize, protocol.maxMessagePayloadSize)
        bound = min((b for b in bounds if b > 0), default=None)
        checkText = protocol.utf8validateIncoming
        end = len(data)
        offset = 0
        while end - offset >= 2 and protocol.state == WebSocketProtocol.STATE_OPEN:
            first, second = data[offset], data[offset + 1]
            if (first != _TEXT_FRAME and first != _BINARY_FRAME) or second & 0x80 != maskBit:
                break
            size = second & 0x7F
            start = offset + 2
            if size == 126:
                size = int.from_bytes(data[start : start + 2], "big")
                start += 2
                if size < 126:
                    break
            elif size == 127:
                size = int.from_bytes(data[start : start + 8], "big")
                start += 8
                if size < 65536 or size >= 2**63:
                    break
            if masked:
                start += 4
            stop = start + size
            if stop > end or (bound is not None and size > bound):
                break
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
        return offset

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


__all__ = ["READ_SLICE", "WholeMessages", "unmask"]
