"""
One downstream connection's state in the relay facade, and the replies the
facade sends to it, counted for its statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relaypool.gateway.limits import TokenBucket
from relaypool.gateway.registry import Claims, ConnectionRegistry, ConnId
from relaypool.nostr.messages import RelayClosed, RelayNotice, RelayOK


@dataclass(eq=False, slots=True)
class Session:
    """
    The facade's state for one downstream connection.

    @ivar subscriptions: by subscription id, the connection's
        L{relaypool.gateway.subscriptions.Member}s.
    @ivar syncs: by subscription id, the connection's NIP-77 syncs
        (L{relaypool.gateway.negentropy.NegentropySync}).
    """

    connId: ConnId
    claims: Claims
    events: TokenBucket
    reqs: TokenBucket
    challenge: str | None = None
    relayURL: str | None = None
    pubkeys: set[str] = field(default_factory=set)
    subscriptions: dict[str, Any] = field(default_factory=dict)
    syncs: dict[str, Any] = field(default_factory=dict)
    open: bool = True


def frameVerb(frame: bytes) -> str:
    """
    @param frame: a message relaypool built, C{["VERB",...]}.
    @return: its verb, e.g. C{"EVENT"}.
    """
    end = frame.find(b'"', 2)
    return frame[2:end].decode("ascii", "replace") if end > 2 else "?"


class Replies:
    """
    Sends frames to sessions through the registry, nothing to a session that
    is closed, and counts the C{OK} and C{NOTICE} answers, and the messages
    sent by verb.

    @ivar sent: by verb (C{EVENT}, C{EOSE}, C{OK}, ...), the messages
        written or queued to downstream connections.
    """

    def __init__(self, registry: ConnectionRegistry) -> None:
        self._registry = registry
        self.okAccepted = 0
        self.okRejected = 0
        self.notices = 0
        self.sent: dict[str, int] = {}

    def send(self, session: Session, frame: bytes) -> None:
        """
        Send one frame to C{session}, if it is still open.
        """
        if session.open and self._registry.sendText(session.connId, frame):
            self.countSent(frameVerb(frame))

    def countSent(self, verb: str, count: int = 1) -> None:
        """
        Count C{count} messages with C{verb} sent (for those not sent
        through L{send}, such as an event framed once for a room).
        """
        self.sent[verb] = self.sent.get(verb, 0) + count

    def ok(self, session: Session, eventId: str, accepted: bool, message: str) -> None:
        """
        Send C{["OK", eventId, accepted, message]}.
        """
        if accepted:
            self.okAccepted += 1
        else:
            self.okRejected += 1
        self.send(session, RelayOK(eventId, accepted, message).toJSON())

    def closed(self, session: Session, subscriptionId: str, message: str) -> None:
        """
        Send C{["CLOSED", subscriptionId, message]}.
        """
        self.send(session, RelayClosed(subscriptionId, message).toJSON())

    def notice(self, session: Session, message: str) -> None:
        """
        Send a C{NOTICE}.
        """
        self.notices += 1
        self.send(session, RelayNotice(message).toJSON())


__all__ = ["Replies", "Session", "frameVerb"]
