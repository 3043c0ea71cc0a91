"""
NIP-98 HTTP authentication: the kind-27235 event a client sends, base64
encoded, in an C{Authorization: Nostr <base64>} header, and the checks a
server makes before it trusts it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from relaypool.errors import InvalidEvent, InvalidHTTPAuth, InvalidRelayURL
from relaypool.nostr.event import Event
from relaypool.nostr.url import parseRelayURL

HTTP_AUTH_KIND = 27235
"""
The kind of NIP-98 HTTP authentication events.
"""

HTTP_AUTH_WINDOW = 60.0
"""
How far, in seconds, an authentication event's C{created_at} may be from
the server's clock by default (NIP-98's suggestion).
"""

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _comparable(url: str) -> tuple[bool, str, int, str, str] | None:
    """
    The parts of an C{http(s)://} or C{ws(s)://} URL that are compared:
    whether it is secure (C{https}/C{wss}), the host (lowercase), the port
    (80 or 443 when absent), the path without a trailing slash, and the
    query; L{None} if it is not such a URL.
    """
    scheme, separator, rest = url.strip().partition("://")
    mapped = _SCHEMES.get(scheme.lower())
    if not separator or mapped is None:
        return None
    try:
        parsed = parseRelayURL(f"{mapped}://{rest}")
    except InvalidRelayURL:
        return None
    return parsed.secure, parsed.host, parsed.port, parsed.path.rstrip("/"), parsed.query


def sameURL(claimed: str, expected: str) -> bool:
    """
    Whether the C{u} tag C{claimed} names the URL C{expected}.

    Both are normalized first: C{http} and C{ws} are the same, as are
    C{https} and C{wss} (NIP-86 names the relay's URL, which clients write
    either way); the scheme and host are case-insensitive, a missing port is
    the scheme's default and a trailing slash is ignored. Security, host,
    port, path and query must then be equal.
    """
    mine = _comparable(expected)
    return mine is not None and _comparable(claimed) == mine


def parseAuthorization(header: str | bytes | None) -> Event:
    """
    Decode the event of an C{Authorization: Nostr <base64>} header.

    @return: the event, its id and signature not yet checked.
    @raise InvalidHTTPAuth: if the header is missing, of another scheme, not
        base64 or not an event.
    """
    if header is None:
        raise InvalidHTTPAuth(
            "no Authorization header: send a NIP-98 event (Authorization: Nostr <base64>)"
        )
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "nostr" or not token.strip():
        raise InvalidHTTPAuth("the Authorization header must be 'Nostr <base64 of a NIP-98 event>'")
    try:
        data = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidHTTPAuth("the Authorization header's token is not base64") from None
    try:
        return Event.fromJSON(data)
    except InvalidEvent as e:
        raise InvalidHTTPAuth(f"the Authorization header holds no valid event ({e})") from None


def _tag(event: Event, name: str) -> str | None:
    values = event.tagValues(name)
    return values[0] if values else None


def verifyHTTPAuth(
    event: Event,
    url: str,
    method: str,
    body: bytes,
    now: float,
    window: float = HTTP_AUTH_WINDOW,
    requirePayload: bool = True,
) -> None:
    """
    Check that a NIP-98 event authorizes a request.

    @param url: the absolute URL of the request, as the server sees it.
    @param method: the request's HTTP method, e.g. C{POST}.
    @param body: the request's body.
    @param now: the current time, in seconds since the epoch.
    @param window: the largest accepted distance between C{created_at} and
        C{now}, in seconds.
    @param requirePayload: whether the C{payload} tag (the SHA-256 of the
        body, hex) is required, as NIP-86 requires it; when not required, it
        is still checked if present.
    @raise InvalidHTTPAuth: saying which check failed.
    """
    if event.kind != HTTP_AUTH_KIND:
        raise InvalidHTTPAuth(
            f"the authorization event must be of kind {HTTP_AUTH_KIND}, not {event.kind}"
        )
    if abs(event.createdAt - now) > window:
        raise InvalidHTTPAuth(
            f"the authorization event's created_at must be within {window:g} seconds of the "
            "server's time"
        )
    claimed = _tag(event, "u")
    if claimed is None or not sameURL(claimed, url):
        raise InvalidHTTPAuth(f"the authorization event's u tag must be the request URL, {url}")
    if (_tag(event, "method") or "").upper() != method.upper():
        raise InvalidHTTPAuth(f"the authorization event's method tag must be {method.upper()}")
    payload = _tag(event, "payload")
    if payload is None:
        if requirePayload:
            raise InvalidHTTPAuth(
                "the authorization event needs a payload tag, the SHA-256 of the body (hex)"
            )
    elif payload.lower() != hashlib.sha256(body).hexdigest():
        raise InvalidHTTPAuth(
            "the authorization event's payload tag is not the SHA-256 of the body"
        )
    try:
        event.verify()
    except InvalidEvent as e:
        raise InvalidHTTPAuth(f"the authorization event does not verify ({e})") from None


def makeAuthorization(
    privateKey: bytes | str,
    url: str,
    method: str,
    body: bytes | None = None,
    createdAt: int | None = None,
) -> str:
    """
    Sign a NIP-98 event for a request, as a client does.

    @param body: the request's body; its SHA-256 goes in a C{payload} tag
        when given.
    @return: the C{Authorization} header's value, C{Nostr <base64>}.
    """
    tags = [["u", url], ["method", method.upper()]]
    if body is not None:
        tags.append(["payload", hashlib.sha256(body).hexdigest()])
    event = Event.sign(privateKey, HTTP_AUTH_KIND, "", tags, createdAt)
    return "Nostr " + base64.b64encode(event.toJSON()).decode("ascii")


__all__ = [
    "HTTP_AUTH_KIND",
    "HTTP_AUTH_WINDOW",
    "makeAuthorization",
    "parseAuthorization",
    "sameURL",
    "verifyHTTPAuth",
]
