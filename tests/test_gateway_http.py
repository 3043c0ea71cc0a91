"""
Tests for L{relaypool.gateway.http} and L{relaypool.gateway.prometheus}.
"""

from __future__ import annotations

from typing import Any

import orjson
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from relaypool.errors import InvalidMetric
from relaypool.gateway.gateway import Gateway
from relaypool.gateway.http import GatewayResource, makeSite
from relaypool.gateway.limits import GatewayLimits
from relaypool.gateway.prometheus import MetricFamily, render
from relaypool.gateway.registry import ConnectionRegistry
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import RelayPool
from tests.test_gateway_registry import connectClient, listen, makeWebSocketFactory, waitFor

INFORMATION = {
    "name": "relaypool",
    "supported_nips": [1, 11],
    "limitation": {"max_subscriptions": 20},
}
STATS = {"connections": 3, "relays": [{"url": "wss://a", "state": "open"}]}
METRICS = "# HELP relaypool_connections Open connections.\n# TYPE relaypool_connections gauge\nrelaypool_connections 3\n"


class GatewayResourceTests(TestCase):
    """
    L{GatewayResource} served by L{makeSite} on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.registry = ConnectionRegistry(closeTimeout=0.5)
        self.site = makeSite(
            GatewayResource(
                makeWebSocketFactory(self.registry),
                lambda: INFORMATION,
                lambda: STATS,
                lambda: METRICS,
            )
        )
        self.portNumber = listen(self, self.site)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    async def request(
        self, path: bytes, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None
    ) -> tuple[Any, bytes]:
        """
        @return: the response and its body.
        """
        response = await self.agent.request(
            method,
            b"http://127.0.0.1:%d%s" % (self.portNumber, path),
            Headers({name: [value] for name, value in (headers or {}).items()}),
        )
        return response, await readBody(response)

    def header(self, response: Any, name: bytes) -> bytes | None:
        """
        @return: the response's only value of header C{name}, if any.
        """
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    async def test_informationDocument(self) -> None:
        """
        C{GET /} with C{Accept: application/nostr+json} returns the NIP-11
        document as C{application/nostr+json}.
        """
        response, body = await self.request(b"/", headers={b"accept": b"application/nostr+json"})
        self.assertEqual(
            (response.code, self.header(response, b"content-type"), orjson.loads(body)),
            (200, b"application/nostr+json", INFORMATION),
        )

    async def test_informationCORS(self) -> None:
        """
        The NIP-11 document comes with the CORS headers NIP-11 requires.
        """
        response, _ = await self.request(b"/", headers={b"accept": b"application/nostr+json"})
        self.assertEqual(
            [
                self.header(response, b"access-control-allow-origin"),
                self.header(response, b"access-control-allow-headers"),
                self.header(response, b"access-control-allow-methods"),
            ],
            [b"*", b"*", b"GET, HEAD, OPTIONS"],
        )

    async def test_preflight(self) -> None:
        """
        C{OPTIONS /} (a CORS preflight) is answered 204 with the CORS headers.
        """
        response, body = await self.request(b"/", method=b"OPTIONS")
        self.assertEqual(
            (response.code, self.header(response, b"access-control-allow-origin"), body),
            (204, b"*", b""),
        )

    async def test_plainRoot(self) -> None:
        """
        A plain C{GET /} returns a short text page about the endpoint.
        """
        response, body = await self.request(b"/")
        self.assertEqual(
            (response.code, self.header(response, b"content-type")),
            (200, b"text/plain; charset=utf-8"),
        )
        self.assertIn(b"Nostr relay pool endpoint", body)

    async def test_webSocketUpgrade(self) -> None:
        """
        A WebSocket upgrade on C{/} is served by the WebSocket factory.
        """
        client = await connectClient(self, self.portNumber)
        await waitFor(lambda: self.registry.connectionCount() == 1)
        self.assertEqual(client.state, WebSocketProtocol.STATE_OPEN)

    async def test_stats(self) -> None:
        """
        C{GET /stats} returns the stats document as JSON.
        """
        response, body = await self.request(b"/stats")
        self.assertEqual(
            (response.code, self.header(response, b"content-type"), orjson.loads(body)),
            (200, b"application/json", STATS),
        )

    async def test_metrics(self) -> None:
        """
        C{GET /metrics} returns the metrics page in the Prometheus text format.
        """
        response, body = await self.request(b"/metrics")
        self.assertEqual(
            (response.code, self.header(response, b"content-type"), body.decode()),
            (200, b"text/plain; version=0.0.4; charset=utf-8", METRICS),
        )

    async def test_unknownPath(self) -> None:
        """
        Paths other than C{/}, C{/stats} and C{/metrics} are 404.
        """
        codes = [(await self.request(path))[0].code for path in (b"/nope", b"/stats/more")]
        self.assertEqual(codes, [404, 404])

    async def test_noAccessLog(self) -> None:
        """
        The site writes no access log line per request.
        """
        with capturedLogs() as events:
            await self.request(b"/stats")
        self.assertEqual([e for e in events if "/stats" in str(e)], [])

    def test_noTracebacks(self) -> None:
        """
        The site does not show tracebacks to clients.
        """
        self.assertFalse(self.site.displayTracebacks)


class PrometheusTests(SynchronousTestCase):
    """
    L{render} and L{MetricFamily}.
    """

    def test_render(self) -> None:
        """
        Each family renders as a HELP line, a TYPE line and one line per
        sample, with labels in braces.
        """
        families = [
            MetricFamily("relaypool_events_total", "counter", "Events received.", [({}, 7)]),
            MetricFamily(
                "relaypool_relay_up",
                "gauge",
                "Relay state.",
                [
                    ({"url": "wss://a", "state": "open"}, 1),
                    ({"url": "wss://b", "state": "closed"}, 0),
                ],
            ),
        ]
        self.assertEqual(
            render(families),
            "# HELP relaypool_events_total Events received.\n"
            "# TYPE relaypool_events_total counter\n"
            "relaypool_events_total 7\n"
            "# HELP relaypool_relay_up Relay state.\n"
            "# TYPE relaypool_relay_up gauge\n"
            'relaypool_relay_up{url="wss://a",state="open"} 1\n'
            'relaypool_relay_up{url="wss://b",state="closed"} 0\n',
        )

    def test_labelValueEscaping(self) -> None:
        """
        Backslashes, double quotes and newlines in label values are escaped.
        """
        family = MetricFamily("m", "gauge", "h", [({"l": 'a\\b"c\nd'}, 1)])
        self.assertIn('m{l="a\\\\b\\"c\\nd"} 1\n', render([family]))

    def test_helpEscaping(self) -> None:
        """
        Backslashes and newlines in HELP text are escaped; quotes are not.
        """
        family = MetricFamily("m", "gauge", 'a\\b\n"c"', [])
        self.assertEqual(render([family]).splitlines()[0], '# HELP m a\\\\b\\n"c"')

    def test_values(self) -> None:
        """
        Integral values render without a fraction, others as floats, and the
        special values as NaN, +Inf and -Inf.
        """
        values = [3, 2.5, 1e20, float("nan"), float("inf"), float("-inf")]
        family = MetricFamily("m", "gauge", "h", [({"i": str(i)}, v) for i, v in enumerate(values)])
        rendered = [line.rsplit(" ", 1)[1] for line in render([family]).splitlines()[2:]]
        self.assertEqual(rendered, ["3", "2.5", "1e+20", "NaN", "+Inf", "-Inf"])

    def test_invalidName(self) -> None:
        """
        A metric name outside the Prometheus grammar raises L{InvalidMetric}.
        """
        self.assertRaises(InvalidMetric, MetricFamily, "relay-pool", "gauge", "h", [])

    def test_invalidType(self) -> None:
        """
        A metric type other than counter or gauge raises L{InvalidMetric}.
        """
        self.assertRaises(InvalidMetric, MetricFamily, "m", "histogram", "h", [])  # type: ignore[arg-type]

    def test_invalidLabelName(self) -> None:
        """
        A label name outside the grammar, or reserved (C{__} prefix), raises
        L{InvalidMetric}.
        """
        for label in ("a-b", "__name__"):
            self.assertRaises(InvalidMetric, MetricFamily, "m", "gauge", "h", [({label: "v"}, 1)])


class _RawClient(Protocol):
    """
    Send bytes as soon as connected; collect everything the server sends
    until the connection closes.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self._received))


class RequestHeadBoundsTests(TestCase):
    """
    A gateway listening on 127.0.0.1 answers request heads over its bounds
    with a status line and a short body, then closes the connection: HTTP
    414 for a long request line, HTTP 431 for big or many headers; plain
    requests and WebSocket handshakes alike.
    """

    timeout = 30

    def startGateway(self, **limits: Any) -> Gateway:
        pool = RelayPool(reactor, nameService=StaticNameService(), fetchInformation=False)
        gateway = Gateway(
            reactor, pool, "tcp:0:interface=127.0.0.1", limits=GatewayLimits(**limits)
        )
        gateway.startService()
        self.addCleanup(gateway.stopService)
        self.gateway = gateway
        return gateway

    async def exchange(self, head: bytes, **limits: Any) -> tuple[int, bytes]:
        """
        Send C{head} (and the blank line ending it) over a raw TCP
        connection to a gateway with C{limits}.

        @return: the status code and the body of the answer, once the
            gateway closed the connection.
        """
        gateway = self.startGateway(**limits)
        port = await gateway.whenListening()
        client = _RawClient(head + b"\r\n\r\n")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        answer = await client.done
        statusLine, _, rest = answer.partition(b"\r\n")
        _, _, body = rest.partition(b"\r\n\r\n")
        return int(statusLine.split(b" ")[1]), body

    def upgrade(self, path: bytes = b"/", *headers: bytes) -> bytes:
        """
        A WebSocket handshake request head, without its final blank line.
        """
        return b"\r\n".join(
            (
                b"GET %s HTTP/1.1" % path,
                b"Host: 127.0.0.1",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
                *headers,
            )
        )

    async def test_longPath(self) -> None:
        """
        A request line over C{maxRequestLine} bytes gets HTTP 414 with a body
        naming the bound.
        """
        code, body = await self.exchange(b"GET /%s HTTP/1.1\r\nHost: x" % (b"a" * 9000))
        self.assertEqual(code, 414)
        self.assertIn(b"8192", body)

    async def test_longPathUnterminated(self) -> None:
        """
        A request line longer than the whole head bound, still unterminated,
        gets HTTP 414 (Twisted alone drops the connection without a word).
        """
        code, _ = await self.exchange(b"GET /" + b"a" * 40_000)
        self.assertEqual(code, 414)

    async def test_longPathHandshake(self) -> None:
        """
        A WebSocket handshake with a request line over C{maxRequestLine}
        bytes gets HTTP 414.
        """
        code, _ = await self.exchange(self.upgrade(b"/" + b"a" * 9000))
        self.assertEqual(code, 414)

    async def test_longHeaderHandshake(self) -> None:
        """
        A WebSocket handshake with one header longer than C{maxHeaderBytes}
        gets HTTP 431 with a body naming the bound.
        """
        code, body = await self.exchange(self.upgrade(b"/", b"X-Big: " + b"b" * 20_000))
        self.assertEqual(code, 431)
        self.assertIn(b"16384", body)

    async def test_headersOverTotal(self) -> None:
        """
        A plain request whose headers add up to more than C{maxHeaderBytes}
        gets HTTP 431.
        """
        headers = b"\r\n".join(b"X-H%d: %s" % (i, b"h" * 2000) for i in range(10))
        code, _ = await self.exchange(b"GET /stats HTTP/1.1\r\nHost: x\r\n" + headers)
        self.assertEqual(code, 431)

    async def test_tooManyHeaders(self) -> None:
        """
        A request with more than C{maxHeaders} headers gets HTTP 431.
        """
        headers = b"\r\n".join(b"X-H%d: h" % i for i in range(6))
        code, body = await self.exchange(
            b"GET /stats HTTP/1.1\r\nHost: x\r\n" + headers, maxHeaders=5
        )
        self.assertEqual(code, 431)
        self.assertIn(b"more than 5 request headers", body)

    async def test_configuredRequestLine(self) -> None:
        """
        C{maxRequestLine} is the gateway's limit: a request line of 300 bytes
        gets HTTP 414 under a bound of 200.
        """
        code, _ = await self.exchange(
            b"GET /%s HTTP/1.1\r\nHost: x" % (b"a" * 300), maxRequestLine=200
        )
        self.assertEqual(code, 414)

    async def test_withinBounds(self) -> None:
        """
        A request within the bounds is served.
        """
        code, _ = await self.exchange(
            b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close", maxRequestLine=200
        )
        self.assertEqual(code, 200)

    async def test_bodyTooLarge(self) -> None:
        """
        A request whose C{Content-Length} is over C{maxBodyBytes} gets HTTP
        413 naming the bound, before its body is read.
        """
        code, body = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000", maxBodyBytes=1000
        )
        self.assertEqual(code, 413)
        self.assertIn(b"over 1000 bytes", body)

    async def test_chunkedBody(self) -> None:
        """
        A request body without a C{Content-Length} (chunked) gets HTTP 411.
        """
        code, body = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
        )
        self.assertEqual(code, 411)
        self.assertIn(b"Content-Length", body)

    async def test_bodyWithinBound(self) -> None:
        """
        A body within C{maxBodyBytes} is read and the request answered (here
        HTTP 415: C{POST /} takes NIP-86 calls only).
        """
        code, _ = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            maxBodyBytes=1000,
        )
        self.assertEqual(code, 415)

    async def test_malformed(self) -> None:
        """
        A malformed request head gets HTTP 400 with a short body.
        """
        code, body = await self.exchange(b"GET / HTTP/1.1\r\nno colon here")
        self.assertEqual(code, 400)
        self.assertIn(b"malformed", body)
