"""
The gateway's HTTP side, on the same port as its WebSocket endpoint: the
NIP-11 relay information document, C{/stats} (JSON) and C{/metrics}
(Prometheus text).
"""

# twisted.web's Resource, Request and Site methods have no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.resource import WebSocketResource
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from relaypool.gateway.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE

_PLAIN_PAGE = (
    b"This is a Nostr relay pool endpoint. Connect to it with a Nostr client "
    b"(WebSocket), or send Accept: application/nostr+json for its NIP-11 "
    b"relay information document.\n"
)


def _setCORSHeaders(request: Request) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-headers", b"*")
    request.setHeader(b"access-control-allow-methods", b"GET, HEAD, OPTIONS")


class _RootPage(Resource):
    """
    C{/}: hands WebSocket upgrades to Autobahn, answers the NIP-11 document
    to C{Accept: application/nostr+json}, and a short text page otherwise.
    """

    def __init__(
        self, webSocketResource: WebSocketResource, information: Callable[[], dict[str, Any]]
    ) -> None:
        super().__init__()
        self._webSocketResource = webSocketResource
        self._information = information

    def render_GET(self, request: Request) -> bytes | int:
        upgrade = request.getHeader(b"upgrade")
        if upgrade is not None and b"websocket" in upgrade.lower():
            result: bytes | int = self._webSocketResource.render(request)
            return result
        request.setHeader(b"vary", b"Accept")
        accept = request.getHeader(b"accept") or b""
        if b"application/nostr+json" in accept.lower():
            _setCORSHeaders(request)
            request.setHeader(b"content-type", b"application/nostr+json")
            return orjson.dumps(self._information())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return _PLAIN_PAGE

    def render_OPTIONS(self, request: Request) -> bytes:
        """
        Answer a CORS preflight request.
        """
        _setCORSHeaders(request)
        request.setResponseCode(204)
        return b""


class _StatsPage(Resource):
    """
    C{/stats}: the gateway's statistics as JSON.
    """

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return orjson.dumps(self._stats())


class _MetricsPage(Resource):
    """
    C{/metrics}: the gateway's metrics in the Prometheus text format.
    """

    def __init__(self, metrics: Callable[[], str]) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self._metrics().encode("utf-8")


class GatewayResource(Resource):
    """
    The gateway's root resource: C{/} (WebSocket and NIP-11), C{/stats} and
    C{/metrics}; every other path is a 404.
    """

    def __init__(
        self,
        webSocketFactory: Any,
        information: Callable[[], dict[str, Any]],
        stats: Callable[[], dict[str, Any]],
        metrics: Callable[[], str],
    ) -> None:
        """
        @param webSocketFactory: the
            L{autobahn.twisted.websocket.WebSocketServerFactory} serving the
            WebSocket upgrades on C{/}.
        @param information: returns the NIP-11 document, JSON-serializable.
        @param stats: returns the C{/stats} document, JSON-serializable.
        @param metrics: returns the C{/metrics} page, e.g. rendered by
            L{relaypool.gateway.prometheus.render}.
        """
        super().__init__()
        self.putChild(b"", _RootPage(WebSocketResource(webSocketFactory), information))
        self.putChild(b"stats", _StatsPage(stats))
        self.putChild(b"metrics", _MetricsPage(metrics))


class _QuietSite(Site):
    """
    A L{Site} that writes no access log: at one line per request it would
    drown the daemon's own log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


def makeSite(resource: Resource, timeout: float = 60.0, reactor: Any = None) -> Site:
    """
    Build the L{Site} serving the gateway.

    @param resource: usually a L{GatewayResource}.
    @param timeout: seconds an HTTP connection may stay idle before it is
        closed; a connection upgraded to WebSocket is not subject to it.
    @param reactor: an L{IReactorTime}; the global reactor if L{None}.
    @return: a site that writes no access log and shows no tracebacks.
    """
    site = _QuietSite(resource, timeout=timeout, reactor=reactor)
    site.displayTracebacks = False
    return site


__all__ = ["GatewayResource", "makeSite"]
