"""
Fetch a relay's NIP-11 information document over HTTP with treq.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers

from relaypool._reactor import ClientReactor
from relaypool.errors import InvalidRelayInformation
from relaypool.nostr.nip11 import RelayInformation, informationURL

#: The most bytes of a NIP-11 document read before giving up on it.
MAX_DOCUMENT_BYTES = 256 * 1024


def fetchRelayInformation(
    reactor: ClientReactor,
    relayURL: str,
    timeout: float = 10.0,
    tlsPolicy: Any = None,
) -> Deferred[RelayInformation]:
    """
    Fetch the NIP-11 document of the relay at C{relayURL} (a C{ws://} or
    C{wss://} URL), asking for C{application/nostr+json}.

    The connection is not kept alive, so nothing lingers after the fetch.

    @param tlsPolicy: an C{IPolicyForHTTPS} for C{https://}, or L{None} for
        Twisted's default (system trust roots, hostname checked).
    @return: a Deferred firing with the L{RelayInformation}, or failing with
        L{InvalidRelayInformation} for a non-200 answer or a bad document, or
        with the connection error.
    """
    return _fetch(quietHTTPClient(reactor, tlsPolicy), informationURL(relayURL), timeout)


def quietHTTPClient(reactor: Any, tlsPolicy: Any = None) -> HTTPClient:
    """
    @param tlsPolicy: an C{IPolicyForHTTPS} for C{https://}, or L{None} for
        Twisted's default (system trust roots, hostname checked).
    @return: a treq client that keeps no connection alive (nothing lingers
        after a request) and logs no "Starting factory" lines.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
    pool._factory = _QuietHTTP11ClientFactory
    if tlsPolicy is None:
        agent = Agent(reactor, pool=pool)  # type: ignore[no-untyped-call]
    else:
        agent = Agent(reactor, contextFactory=tlsPolicy, pool=pool)  # type: ignore[no-untyped-call]
    return HTTPClient(agent)


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """
    The HTTP client factory of one fetch, which does not log "Starting
    factory ..." and "Stopping factory ..." (Twisted's documented way to
    quiet an L{HTTPConnectionPool}).
    """

    noisy = False


@inlineCallbacks
def _fetch(client: HTTPClient, url: str, timeout: float) -> Any:
    response = yield client.get(
        url, headers=Headers({"Accept": ["application/nostr+json"]}), timeout=timeout
    )
    if response.code != 200:
        yield treq.content(response).addErrback(lambda _: None)
        raise InvalidRelayInformation(f"{url} answered HTTP {response.code}")
    length = response.length
    if isinstance(length, int) and length > MAX_DOCUMENT_BYTES:
        response.deliverBody(_Discard())
        raise InvalidRelayInformation(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    body = yield treq.content(response)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise InvalidRelayInformation(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    return RelayInformation.fromJSON(body)


class _Discard:
    """
    A body consumer that drops what it is given (to release a connection
    whose body we refuse to read).
    """

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


__all__ = [
    "MAX_DOCUMENT_BYTES",
    "fetchRelayInformation",
    "quietHTTPClient",
]
