"""
Relay URLs: the one place that decides what a C{ws://}/C{wss://} relay URL
is, for the pool, the configuration and NIP-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from relaypool.errors import InvalidRelayURL


@dataclass(frozen=True, slots=True)
class RelayURL:
    """
    A checked relay URL.

    @ivar url: the normalized URL: lowercase scheme and host, the port only
        when given, a path of at least C{/}.
    @ivar host: the host name or IP literal (no brackets).
    @ivar port: the port, 80 or 443 when the URL has none.
    @ivar secure: whether the scheme is C{wss}.
    @ivar path: the path, at least C{/}.
    @ivar query: the query without its C{?}, or C{""}.
    """

    url: str
    host: str
    port: int
    secure: bool
    path: str = "/"
    query: str = ""

    @property
    def informationURL(self) -> str:
        """
        The HTTP URL of the relay's NIP-11 document: C{http://} for C{ws://},
        C{https://} for C{wss://}, the rest of the normalized URL unchanged.
        """
        rest = self.url.split("://", 1)[1]
        return f"{'https' if self.secure else 'http'}://{rest}"

    @property
    def name(self) -> str:
        """
        C{host:port}, as a name service takes it (IPv6 hosts in brackets).
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parseRelayURL(url: object) -> RelayURL:
    """
    Check a relay URL.

    @raise InvalidRelayURL: if C{url} is not a C{ws://} or C{wss://} URL with
        a host (and a valid port, if any), with a message naming the problem.
    """
    if not isinstance(url, str):
        raise InvalidRelayURL(f"a relay URL must be a string, got {type(url).__name__}")
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise InvalidRelayURL(f"{_quoted(url)} is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise InvalidRelayURL(f"{_quoted(url)} is not a ws:// or wss:// URL")
    if not parts.hostname:
        raise InvalidRelayURL(f"{_quoted(url)} has no host")
    secure = scheme == "wss"
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path or "/"
    normalized = f"{scheme}://{netloc}{path}"
    if parts.query:
        normalized += f"?{parts.query}"
    defaultPort = 443 if secure else 80
    return RelayURL(
        normalized, host, port if port is not None else defaultPort, secure, path, parts.query
    )


__all__ = [
    "RelayURL",
    "parseRelayURL",
]
