"""
The gateway's HTTP side, on the same port as its WebSocket endpoint: the
NIP-11 relay information document, the NIP-86 management API, C{/stats}
(JSON), C{/metrics} (Prometheus text), C{/healthz} and C{/readyz} (JSON),
the status page, and the bounds of request heads and bodies (HTTP 414, 431,
411 and 413).
"""

# twisted.web's Resource, Request and Site methods have no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from relaypool._reactor import defaultReactor
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits
from relaypool.gateway.management import RPC_CONTENT_TYPE, ManagementAPI
from relaypool.gateway.status import StatusFiles, renderStatusPage, wantsStatusPage

REFUSAL_LINGER = 2.0
"""
Seconds a connection whose request was refused (HTTP 400, 414 or 431) is
kept half-open after the answer, its input discarded, so that the client
reads the answer before the connection closes (closing with unread input
would reset it).
"""

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
    to C{Accept: application/nostr+json}, the status page (if there is one)
    to C{Accept: text/html}, and a short text page otherwise; hands C{POST}s
    with C{Content-Type: application/nostr+json+rpc} to the NIP-86
    management API.
    """

    def __init__(
        self,
        webSocketResource: WebSocketResource,
        information: Callable[[], dict[str, Any]],
        management: ManagementAPI | None = None,
        statusPage: bool = False,
    ) -> None:
        super().__init__()
        self._webSocketResource = webSocketResource
        self._information = information
        self._statusPage = statusPage
        self._management = management

    def render_POST(self, request: Request) -> bytes | int:
        """
        Answer a NIP-86 call (see L{ManagementAPI.render}); HTTP 415 for
        another content type, 404 without a management API.
        """
        contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if contentType.lower() != RPC_CONTENT_TYPE:
            request.setResponseCode(415)
            return b"POST / is the NIP-86 management API: send Content-Type: application/nostr+json+rpc\n"
        if self._management is None:
            request.setResponseCode(404)
            return b"this gateway has no NIP-86 management API\n"
        return self._management.render(request)

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
        if self._statusPage and wantsStatusPage(request):
            return renderStatusPage(request)
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


class _CheckPage(Resource):
    """
    A health check (C{/healthz}, C{/readyz}): the status code and the JSON
    document C{check} returns.
    """

    def __init__(self, check: Callable[[], tuple[int, dict[str, Any]]]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> bytes:
        code, document = self._check()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return orjson.dumps(document)


class GatewayResource(Resource):
    """
    The gateway's root resource: C{/} (WebSocket, NIP-11 and the status
    page), C{/stats}, C{/metrics}, C{/healthz} and C{/readyz}, and with a
    status board C{/status.json} and C{/status/} (the page's script and
    style sheet); every other path is a 404.
    """

    def __init__(
        self,
        webSocketFactory: Any,
        information: Callable[[], dict[str, Any]],
        stats: Callable[[], dict[str, Any]],
        metrics: IResource,
        management: ManagementAPI | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        liveness: Callable[[], tuple[int, dict[str, Any]]] | None = None,
        readiness: Callable[[], tuple[int, dict[str, Any]]] | None = None,
    ) -> None:
        """
        @param webSocketFactory: the
            L{autobahn.twisted.websocket.WebSocketServerFactory} serving the
            WebSocket upgrades on C{/}.
        @param information: returns the NIP-11 document, JSON-serializable.
        @param stats: returns the C{/stats} document, JSON-serializable.
        @param metrics: the C{/metrics} resource, e.g.
            L{relaypool.gateway.metrics.GatewayMetrics.resource}.
        @param management: the NIP-86 API answering C{POST /}, or L{None}.
        @param status: returns the C{/status.json} document, e.g.
            L{relaypool.gateway.status.StatusBoard.status}; L{None} for no
            status page.
        @param liveness: returns the status code and JSON document of
            C{/healthz}; no C{/healthz} if L{None}.
        @param readiness: returns the status code and JSON document of
            C{/readyz}; no C{/readyz} if L{None}.
        """
        super().__init__()
        root = _RootPage(
            WebSocketResource(webSocketFactory), information, management, status is not None
        )
        self.putChild(b"", root)
        self.putChild(b"stats", _StatsPage(stats))
        self.putChild(b"metrics", metrics)
        if liveness is not None:
            self.putChild(b"healthz", _CheckPage(liveness))
        if readiness is not None:
            self.putChild(b"readyz", _CheckPage(readiness))
        if status is not None:
            self.putChild(b"status.json", _StatsPage(status))
            self.putChild(b"status", StatusFiles())


_REFUSALS = {
    400: "Bad Request",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


class _GatewayChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} that answers a request head over the site's
    bounds with a status line and a short body, for plain requests and
    WebSocket handshakes alike: HTTP 414 for a request line over
    C{maxRequestLine} bytes, HTTP 431 for a head over C{maxHeaderBytes}
    bytes or with more than C{maxHeaders} headers, and HTTP 400 (with a
    body too) for a malformed head. Twisted alone drops the connection
    without a word for a line over its C{MAX_LENGTH}.
    """

    factory: _QuietSite
    _expectingRequestLine = True
    _refused = False
    _linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        limits = self.factory.limits
        self._maxRequestLine = limits.maxRequestLine
        self.MAX_LENGTH = self.totalHeadersSize = limits.maxHeaderBytes
        self.maxHeaders = limits.maxHeaders
        super().connectionMade()

    def lineReceived(self, line: bytes) -> None:
        if self._expectingRequestLine and line:
            if len(line) > self._maxRequestLine:
                self._refuseRequestLine()
                return
            self._expectingRequestLine = False
        elif not line:
            self._expectingRequestLine = True
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuseHeaders()
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        """
        Refuse a request body over C{maxBodyBytes} (HTTP 413), or of unknown
        length (chunked: HTTP 411), before reading it.
        """
        maxBody = self.factory.limits.maxBodyBytes
        encoding = self.requests[-1].requestHeaders.getRawHeaders(b"transfer-encoding") or []
        if any(b"chunked" in value.lower() for value in encoding):
            self._refuse(411, "send the request body with a Content-Length")
        elif self.length is not None and self.length > maxBody:
            self._refuse(413, f"request body of {self.length} bytes is over {maxBody} bytes")
        else:
            super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._expectingRequestLine:
            self._refuseRequestLine()
        else:
            self._refuseHeaders()

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, f"more than {self.maxHeaders} request headers")
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, "malformed request")

    def _refuseRequestLine(self) -> None:
        self._refuse(414, f"request line over {self._maxRequestLine} bytes")

    def _refuseHeaders(self) -> None:
        self._refuse(431, f"request line and headers over {self.totalHeadersSize} bytes")

    def _refuse(self, code: int, why: str) -> None:
        """
        Answer C{code} with C{why} as the body, then stop reading requests:
        close the writing side, discard the input, and close for good after
        L{REFUSAL_LINGER} seconds or when the client closes.
        """
        if self._refused:
            return
        self._refused = True
        reason = _REFUSALS[code]
        body = f"{code} {reason}: {why}\n".encode("ascii")
        transport: Any = self.transport
        transport.write(
            f"HTTP/1.1 {code} {reason}\r\n".encode("ascii")
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )
        self.setTimeout(None)
        self.clearLineBuffer()
        self.dataReceived = self._discard  # type: ignore[method-assign]
        if ITCPTransport.providedBy(transport):
            producer: Any = self._networkProducer
            producer.unregisterProducer()
            transport.loseWriteConnection()
            self._linger = self.callLater(REFUSAL_LINGER, transport.abortConnection)
        else:
            self.loseConnection()

    def _discard(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


class _QuietSite(Site):
    """
    A L{Site} that writes no access log (at one line per request it would
    drown the daemon's own log), and bounds request heads with
    L{_GatewayChannel}.

    @ivar limits: the gateway's limits, for the bounds of request heads.
    """

    noisy = False
    protocol = _GatewayChannel  # type: ignore[assignment]
    limits: GatewayLimits = DEFAULT_LIMITS

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


def makeSite(
    resource: Resource,
    timeout: float = 60.0,
    reactor: IReactorTime | None = None,
    limits: GatewayLimits = DEFAULT_LIMITS,
) -> Site:
    """
    Build the L{Site} serving the gateway.

    @param resource: usually a L{GatewayResource}.
    @param timeout: seconds an HTTP connection may stay idle before it is
        closed; a connection upgraded to WebSocket is not subject to it.
    @param reactor: an L{IReactorTime}; the global reactor if L{None}.
    @param limits: the bounds of request heads (C{maxRequestLine},
        C{maxHeaderBytes}, C{maxHeaders}).
    @return: a site that writes no access log, shows no tracebacks, and
        answers request heads over the bounds with HTTP 414 or 431.
    """
    site = _QuietSite(resource, timeout=timeout, reactor=defaultReactor(reactor))
    site.limits = limits
    site.displayTracebacks = False
    return site


__all__ = ["REFUSAL_LINGER", "GatewayResource", "makeSite"]
