"""
The receiving side of an Autobahn protocol, leaner: see L{WholeMessages}.
"""

from __future__ import annotations

from typing import Any

READ_SLICE = 4096
"""
The size of the slices L{WholeMessages} hands what it reads to Autobahn in.
"""


class WholeMessages:
    """
    Mixed in before an Autobahn WebSocket protocol class: each whole message
    goes to L{messageReceived}, without what Autobahn does around it that
    nothing here uses (a debug log line built for every read, an observable
    "message" event with a Deferred for every message), and reads are handed
    to Autobahn in slices of L{READ_SLICE} bytes: Autobahn copies the rest
    of its buffer each time it takes a frame off its front, so given a 64 KB
    read at once it would copy a hundred times what it parses.
    """

    failedByMe: bool
    message_data: Any
    message_is_binary: bool
    _dataReceived: Any

    def dataReceived(self, data: bytes) -> None:
        for start in range(0, len(data), READ_SLICE):
            self._dataReceived(data[start : start + READ_SLICE])

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self.messageReceived(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
        """
        A whole message arrived (text as UTF-8, checked by Autobahn).
        """
        raise NotImplementedError()


__all__ = ["READ_SLICE", "WholeMessages"]
