"""
Tests for L{relaypool.gateway.http} and L{relaypool.gateway.prometheus}.
"""

from __future__ import annotations

from typing import Any

import orjson
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from relaypool.errors import InvalidMetric
from relaypool.gateway.http import GatewayResource, makeSite
from relaypool.gateway.prometheus import MetricFamily, render
from relaypool.gateway.registry import ConnectionRegistry
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
