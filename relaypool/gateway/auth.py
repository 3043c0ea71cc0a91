"""
NIP-42 authentication of downstream clients: challenges and the
verification of their kind-22242 C{AUTH} events.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from relaypool.errors import InvalidEvent
from relaypool.nostr.event import AUTH_KIND, Event

AUTH_WINDOW = 600.0
"""
How far, in seconds, an authentication event's C{created_at} may be from
the gateway's clock (NIP-42 suggests about ten minutes).
"""


def makeChallenge() -> str:
    """
    @return: a new random challenge string for one connection.
    """
    return secrets.token_urlsafe(24)


def _tag(event: Event, name: str) -> str | None:
    values = event.tagValues(name)
    return values[0] if values else None


def _hostAndPath(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), parts.path.rstrip("/")


def relayURLMatches(claimed: str, relayURL: str) -> bool:
    """
    Whether the C{relay} tag of an authentication event names this relay.

    The comparison is loose, as NIP-42 suggests: the scheme (C{ws}/C{wss},
    which differ behind a TLS terminator), the port and a trailing slash are
    ignored; the host name (case-insensitive) and the path must be equal.
    """
    mine = _hostAndPath(relayURL)
    return mine is not None and _hostAndPath(claimed) == mine


def verifyAuthEvent(
    event: Event,
    challenge: str,
    relayURL: str | None,
    now: float,
    window: float = AUTH_WINDOW,
) -> None:
    """
    Check a client's NIP-42 authentication event.

    @param challenge: the challenge sent to the connection.
    @param relayURL: this gateway's public URL, compared with the event's
        C{relay} tag by L{relayURLMatches}; L{None} only requires the tag to
        be present (the per-connection challenge already prevents replays
        across relays).
    @param now: the current time, in seconds since the epoch.
    @param window: the largest accepted distance between C{created_at} and
        C{now}, in seconds.
    @raise InvalidEvent: with a C{invalid: } message saying what is wrong.
    """
    if event.kind != AUTH_KIND:
        raise InvalidEvent(f"invalid: an authentication event must be of kind {AUTH_KIND}")
    if abs(event.createdAt - now) > window:
        raise InvalidEvent(
            f"invalid: created_at must be within {window:g} seconds of the relay's time"
        )
    if _tag(event, "challenge") != challenge:
        raise InvalidEvent("invalid: the challenge tag does not match this connection's")
    relay = _tag(event, "relay")
    if relay is None:
        raise InvalidEvent("invalid: the authentication event has no relay tag")
    if relayURL is not None and not relayURLMatches(relay, relayURL):
        raise InvalidEvent(f"invalid: the relay tag does not name this relay ({relayURL})")
    event.verify()


__all__ = [
    "AUTH_WINDOW",
    "makeChallenge",
    "relayURLMatches",
    "verifyAuthEvent",
]
