"""
NIP-42 authentication of downstream clients: challenges and the
verification of their kind-22242 C{AUTH} events.
"""

from __future__ import annotations

import secrets

from relaypool.errors import InvalidEvent, InvalidRelayURL
from relaypool.nostr.event import AUTH_KIND, Event
from relaypool.nostr.url import parseRelayURL

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


_HOST_FORBIDDEN = frozenset("/?#@\\ \t")


def _normalized(url: str) -> tuple[bool, str, int, str, str] | None:
    """
    The parts of a relay URL that NIP-42 compares: whether it is C{wss}, the
    host (lowercase), the port (80 or 443 when absent), the path without a
    trailing slash, and the query; L{None} if C{url} is not a relay URL.
    """
    try:
        parsed = parseRelayURL(url)
    except InvalidRelayURL:
        return None
    return parsed.secure, parsed.host, parsed.port, parsed.path.rstrip("/"), parsed.query


def relayURLMatches(claimed: str, relayURL: str) -> bool:
    """
    Whether the C{relay} tag of an authentication event names this relay.

    Both URLs are normalized before they are compared: the scheme and host
    are case-insensitive, a missing port is the scheme's default (80 for
    C{ws}, 443 for C{wss}) and a trailing slash is ignored. The scheme, host,
    port and path must then be equal.
    """
    mine = _normalized(relayURL)
    return mine is not None and _normalized(claimed) == mine


def expectedRelayURL(configured: str | None, host: str | None, secure: bool) -> str | None:
    """
    The relay URL a connection's authentication events must name.

    @param configured: the gateway's configured public URL, if any: it wins.
    @param host: the C{Host} header the client connected with (C{host} or
        C{host:port}).
    @param secure: whether the client reached the gateway over TLS (directly,
        or through a TLS terminator that said so).
    @return: the normalized URL, C{ws://<host>/} or C{wss://<host>/} when
        none is configured; L{None} if there is no usable C{Host} header.
    """
    if configured is not None:
        return parseRelayURL(configured).url
    if not host or any(c in _HOST_FORBIDDEN for c in host):
        return None
    try:
        return parseRelayURL(f"{'wss' if secure else 'ws'}://{host}/").url
    except InvalidRelayURL:
        return None


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
    @param relayURL: the URL the event's C{relay} tag must name (see
        L{expectedRelayURL} and L{relayURLMatches}); L{None} if this relay
        does not know its URL, and then every event is refused.
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
    if relayURL is None:
        raise InvalidEvent(
            "invalid: this relay cannot tell its own URL (no usable Host header) "
            "to check the relay tag against"
        )
    if not relayURLMatches(relay, relayURL):
        raise InvalidEvent(f"invalid: the relay tag must name this relay, {relayURL}")
    event.verify()


__all__ = [
    "AUTH_WINDOW",
    "expectedRelayURL",
    "makeChallenge",
    "relayURLMatches",
    "verifyAuthEvent",
]
