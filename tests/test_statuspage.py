"""
Tests for L{relaypool.gateway.status}: the status page's history, its
C{/status.json} document, its routes, and the page itself in headless
Chromium against a daemon serving real relays.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from relaypool._version import __version__
from relaypool.gateway.http import GatewayResource, makeSite
from relaypool.gateway.metrics import GatewayMetrics
from relaypool.gateway.registry import ConnectionRegistry
from relaypool.gateway.status import StatusBoard
from relaypool.nostr.filter import Filter
from relaypool.nostr.nip11 import RelayInformation
from relaypool.testing import FakeRelay, makeEvent
from tests.chromium import MISSING, HeadlessChromium, findChromium
from tests.daemons import startDaemon
from tests.redisserver import startRedis
from tests.test_gateway_http import INFORMATION, STATS, GatewayResourceTests
from tests.test_gateway_registry import listen, makeWebSocketFactory
from tests.test_service import _connect, _until


def _relay(url: str, received: int, health: float = 100.0, state: str = "open") -> dict[str, Any]:
    """
    @return: a relay's entry of a C{/stats} document.
    """
    return {
        "url": url,
        "name": None,
        "state": state,
        "healthScore": health,
        "connections": 1 if state == "open" else 0,
        "latency": 0.012,
        "eventsReceived": received,
        "reconnects": 0,
        "okAccepted": 3,
        "okRejected": 1,
        "connectedFor": 5.0,
    }


class _Gateway:
    """
    A gateway's C{/stats} document the test changes at will.
    """

    def __init__(self) -> None:
        self.received = {"wss://a": 0, "wss://b": 0}
        self.open = {"wss://a", "wss://b"}
        self.framesSent = 0
        self.published = 0

    def stats(self) -> dict[str, Any]:
        relays = {
            url: _relay(url, count, state="open" if url in self.open else "backing-off")
            for url, count in self.received.items()
        }
        return {
            "registry": {
                "connections": 4,
                "rooms": 2,
                "framesSent": self.framesSent,
                "bytesPending": 0,
            },
            "gateway": {
                "eventsPublished": self.published,
                "eventsDelivered": 0,
                "subscriptions": 5,
                "sharedSubscriptions": 2,
            },
            "pool": {
                "relays": len(relays),
                "activeRelays": len(self.open & set(relays)),
                "subscriptions": 2,
                "eventsReceived": sum(self.received.values()),
                "eventsUnique": 0,
            },
            "relays": relays,
        }


class _Store:
    """
    An event store that only counts, C{events} events, and remembers how
    many times it was asked.
    """

    def __init__(self, events: int) -> None:
        self.events = events
        self.counts: list[list[Filter]] = []
        self.path = ":memory:"

    def count(self, filters: list[Filter]) -> Deferred[int]:
        self.counts.append(filters)
        return succeed(self.events)


class StatusBoardTests(SynchronousTestCase):
    """
    L{StatusBoard} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = _Gateway()
        self.store = _Store(7)
        self.board = StatusBoard(self.gateway.stats, self.store, 5.0, 4, self.clock)
        self.board.startService()
        self.addCleanup(self.board.stopService)

    def test_sampledEveryInterval(self) -> None:
        """
        A sample is taken when the board starts and then every interval.
        """
        self.clock.advance(5.0)
        self.clock.advance(5.0)
        self.assertEqual([s.at for s in self.board.samples()], [0.0, 5.0, 10.0])

    def test_historyBounded(self) -> None:
        """
        The history keeps its last C{history} samples, dropping the oldest.
        """
        for _ in range(10):
            self.clock.advance(5.0)
        self.assertEqual([s.at for s in self.board.samples()], [35.0, 40.0, 45.0, 50.0])

    def test_rates(self) -> None:
        """
        Rates are the counters' increase over the last sample interval, per
        second; the history holds one per pair of samples, oldest first.
        """
        self.gateway.received["wss://a"] = 50
        self.gateway.framesSent = 10
        self.clock.advance(5.0)
        self.gateway.received["wss://a"] = 60
        self.gateway.framesSent = 110
        self.clock.advance(5.0)
        status = self.board.status()
        self.assertEqual(
            (
                status["rates"]["eventsIn"],
                status["rates"]["framesOut"],
                status["history"]["eventsIn"],
                status["relays"][0]["eventsPerSecond"],
                status["relays"][0]["history"]["eventsPerSecond"],
            ),
            (2.0, 20.0, [10.0, 2.0], 2.0, [10.0, 2.0]),
        )

    def test_noRatesBeforeTwoSamples(self) -> None:
        """
        Before a second sample there is no rate to show.
        """
        status = self.board.status()
        self.assertEqual((status["rates"]["eventsIn"], status["history"]["eventsIn"]), (None, []))

    def test_relayAddedLater(self) -> None:
        """
        A relay absent from a sample has a gap (C{None}) in its history.
        """
        self.clock.advance(5.0)
        self.gateway.received["wss://c"] = 20
        self.clock.advance(5.0)
        self.clock.advance(5.0)
        relays = {r["url"]: r for r in self.board.status()["relays"]}
        self.assertEqual(relays["wss://c"]["history"]["eventsPerSecond"], [None, None, 0.0])

    def test_counterRestartNotNegative(self) -> None:
        """
        A counter that went down (a relay removed and added again) gives a
        rate of 0, not a negative one.
        """
        self.gateway.received["wss://a"] = 100
        self.clock.advance(5.0)
        self.gateway.received["wss://a"] = 3
        self.clock.advance(5.0)
        self.assertEqual(self.board.status()["relays"][0]["eventsPerSecond"], 0.0)

    def test_relayFigures(self) -> None:
        """
        Each relay's entry has its state, health, connections, latency and
        OK counts from C{/stats}, relays sorted by URL.
        """
        self.gateway.open.discard("wss://b")
        relays = self.board.status()["relays"]
        self.assertEqual(
            [
                (
                    r["url"],
                    r["state"],
                    r["healthScore"],
                    r["connections"],
                    r["latency"],
                    r["okAccepted"],
                )
                for r in relays
            ],
            [
                ("wss://a", "open", 100.0, 1, 0.012, 3),
                ("wss://b", "backing-off", 100.0, 0, 0.012, 3),
            ],
        )

    def test_health(self) -> None:
        """
        The overall health is C{ok} with every relay open, C{degraded} with
        some, C{down} with none.
        """
        seen = [self.board.status()["health"]]
        self.gateway.open.discard("wss://a")
        seen.append(self.board.status()["health"])
        self.gateway.open.clear()
        seen.append(self.board.status()["health"])
        self.assertEqual(seen, ["ok", "degraded", "down"])

    def test_storeCountedPerSample(self) -> None:
        """
        The store's events are counted at each sample, not per request.
        """
        self.board.status()
        self.board.status()
        self.store.events = 9
        self.clock.advance(5.0)
        store = self.board.status()["store"]
        self.assertEqual((len(self.store.counts), store), (2, {"events": 9, "bytes": None}))

    def test_uptimeAndVersion(self) -> None:
        """
        The document has the version, the uptime since the board started,
        and the history's bounds.
        """
        self.clock.advance(12.5)
        status = self.board.status()
        self.assertEqual(
            (
                status["version"],
                status["uptime"],
                status["sampleInterval"],
                status["historySamples"],
            ),
            (__version__, 12.5, 5.0, 4),
        )

    def test_stopsSampling(self) -> None:
        """
        A stopped board takes no more samples.
        """
        self.board.stopService()
        self.clock.advance(50.0)
        self.assertEqual(len(self.board.samples()), 1)

    def test_badBounds(self) -> None:
        """
        A sample interval that is not positive, or a history under 2
        samples, is refused with the bound named.
        """
        errors = [
            str(self.assertRaises(ValueError, StatusBoard, dict, interval=0.0)),
            str(self.assertRaises(ValueError, StatusBoard, dict, history=1)),
        ]
        self.assertEqual(
            errors,
            [
                "the status page's sample interval must be positive, not 0.0",
                "the status page's history must keep at least 2 samples, not 1",
            ],
        )


STATUS = {"version": "test", "relays": [{"url": "wss://a"}]}


class StatusRoutesTests(TestCase):
    """
    The status page's routes on a L{GatewayResource} served on 127.0.0.1,
    beside NIP-11 and the WebSocket on C{/}.
    """

    request = GatewayResourceTests.request
    header = GatewayResourceTests.header

    def setUp(self) -> None:
        self.registry = ConnectionRegistry(closeTimeout=0.5)
        resource = GatewayResource(
            makeWebSocketFactory(self.registry),
            lambda: INFORMATION,
            lambda: STATS,
            GatewayMetrics(processMetrics=False).resource(),
            status=lambda: STATUS,
        )
        self.portNumber = listen(self, makeSite(resource))
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    async def test_browserGetsPage(self) -> None:
        """
        C{GET /} with a browser's C{Accept} header returns the status page,
        under a content security policy allowing only the server's own
        scripts and requests.
        """
        response, body = await self.request(
            b"/", headers={b"accept": b"text/html,application/xhtml+xml,*/*;q=0.8"}
        )
        policy = self.header(response, b"content-security-policy") or b""
        self.assertEqual(
            (
                response.code,
                self.header(response, b"content-type"),
                b'<script src="status/status.js"' in body,
                b"script-src 'self'" in policy,
            ),
            (200, b"text/html; charset=utf-8", True, True),
        )

    async def test_informationStillServed(self) -> None:
        """
        C{Accept: application/nostr+json} still gets the NIP-11 document,
        also when the client accepts HTML too.
        """
        response, body = await self.request(
            b"/", headers={b"accept": b"application/nostr+json, text/html"}
        )
        self.assertEqual(
            (self.header(response, b"content-type"), orjson.loads(body)),
            (b"application/nostr+json", INFORMATION),
        )

    async def test_plainRootStillServed(self) -> None:
        """
        A C{GET /} without C{text/html} in C{Accept} (curl) still gets the
        short text page.
        """
        response, _ = await self.request(b"/", headers={b"accept": b"*/*"})
        self.assertEqual(self.header(response, b"content-type"), b"text/plain; charset=utf-8")

    async def test_statusJSON(self) -> None:
        """
        C{GET /status.json} returns the status document, not cached.
        """
        response, body = await self.request(b"/status.json")
        self.assertEqual(
            (self.header(response, b"cache-control"), orjson.loads(body)), (b"no-store", STATUS)
        )

    async def test_assets(self) -> None:
        """
        The page's script and style sheet are served from the package with
        their content types.
        """
        script, scriptBody = await self.request(b"/status/status.js")
        style, _ = await self.request(b"/status/status.css")
        self.assertEqual(
            (
                self.header(script, b"content-type"),
                self.header(style, b"content-type"),
                b"status.json" in scriptBody,
            ),
            (b"text/javascript; charset=utf-8", b"text/css; charset=utf-8", True),
        )

    async def test_unknownAsset(self) -> None:
        """
        Any other name under C{/status/} is a 404, also one reaching out of
        the folder.
        """
        codes = []
        for path in (b"/status/index.htm", b"/status/../http.py", b"/status/x/status.js"):
            response, _ = await self.request(path)
            codes.append(response.code)
        self.assertEqual(codes, [404, 404, 404])

    def test_noStatusBoardNoPage(self) -> None:
        """
        Without a status document there is no C{/status.json}.
        """
        resource = GatewayResource(
            makeWebSocketFactory(self.registry), dict, dict, GatewayMetrics(processMetrics=False).resource()
        )
        self.assertEqual(set(resource.children), {b"", b"stats", b"metrics"})


class InstalledFilesTests(SynchronousTestCase):
    """
    The page's files are package data of the installed package.
    """

    def test_installed(self) -> None:
        """
        The installed relaypool (imported from outside the source tree)
        reads the page, its script and style sheet from its package.
        """
        script = (
            "from relaypool.gateway import status;"
            "print(status.__file__);"
            "print(*[len(status._packageFile(n)) > 0 for n in"
            " ('index.html', 'status.js', 'status.css')])"
        )
        with tempfile.TemporaryDirectory() as elsewhere:
            out = subprocess.run(
                [sys.executable, "-c", script],
                cwd=elsewhere,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                capture_output=True,
                text=True,
                timeout=60,
            )
        where, found = (out.stdout.splitlines() + ["", ""])[:2]
        self.assertEqual(
            (found, os.path.dirname(__file__) not in where, out.stderr),
            ("True True True", True, ""),
        )


# What the page shows, read from its rendered DOM.
_READ_PAGE = """document.body && document.body.dataset.updates && JSON.stringify({
  marker: window.__marker || null,
  updates: Number(document.body.dataset.updates),
  health: document.querySelector('[data-field="health"]').textContent,
  clients: Object.fromEntries(['connections', 'subscriptions', 'rooms', 'sharedSubscriptions']
    .map(k => [k, document.querySelector('[data-field="clients.' + k + '"]').textContent])),
  relays: [...document.querySelectorAll('#relays tbody tr')].map(tr => ({
    url: tr.querySelector('.url').textContent,
    name: tr.querySelector('.relay-name').textContent,
    state: tr.querySelector('[data-col="state"]').textContent,
    connections: tr.querySelector('td[data-col="connections"]').textContent,
  })),
  injected: document.querySelectorAll('#injected').length,
})"""


class BrowserTests(TestCase):
    """
    The status page in headless Chromium, served by a daemon with two real
    relays on 127.0.0.1.
    """

    timeout = 120

    def setUp(self) -> None:
        if findChromium() is None:
            if os.environ.get("CI") == "true":
                self.fail(MISSING)
            raise SkipTest(MISSING)

    async def startDaemon(self, relays: list[FakeRelay]) -> tuple[Any, int]:
        daemon, port = await startDaemon(
            self, [relay.url for relay in relays], **{"status-page-interval": "0.5"}
        )
        await _until(lambda: len(daemon.pool.activeRelayURLs()) == len(relays))
        return daemon, port

    async def fakeRelays(self) -> list[FakeRelay]:
        names = ['<b id="injected">bold</b> relay', "second relay"]
        relays = []
        for name in names:
            relay = FakeRelay(information=RelayInformation(name=name))
            await relay.start()
            self.addCleanup(relay.stop)
            relays.append(relay)
        return relays

    async def stats(self, port: int) -> Any:
        response = await treq.get(f"http://127.0.0.1:{port}/stats", persistent=False)
        return orjson.loads(await treq.content(response))

    async def test_pageMatchesStatsAndFollowsChanges(self) -> None:
        """
        The rendered page shows every relay with the state and connections
        C{/stats} gives, and the clients' counts; relay names are shown as
        text (markup in them is not interpreted). When a relay goes down,
        the page shows it, and the pool degraded, without a reload.
        """
        relays = await self.fakeRelays()
        daemon, port = await self.startDaemon(relays)
        clients = [await _connect(port) for _ in range(2)]
        for client in clients:
            self.addCleanup(client.dropConnection, abort=True)
            client.send("REQ", "feed", {"kinds": [1]})
        await _until(lambda: all(relay.subscriptionCount() == 1 for relay in relays))
        relays[0].store(makeEvent(content="seen by the page"))
        await _until(lambda: daemon.pool.totals().eventsReceived == 1)

        browser = HeadlessChromium(reactor)
        self.addCleanup(browser.stop)
        await browser.start()
        await browser.navigate(f"http://127.0.0.1:{port}/")
        shown = await browser.waitFor(
            _READ_PAGE, lambda page: bool(page) and len(orjson.loads(page)["relays"]) == 2
        )
        stats = await self.stats(port)
        page = orjson.loads(shown)
        self.assertEqual(
            (page["relays"], page["clients"], page["health"], page["injected"]),
            (
                [
                    {
                        "url": url,
                        "name": relay["name"],
                        "state": relay["state"],
                        "connections": str(relay["connections"]),
                    }
                    for url, relay in sorted(stats["relays"].items())
                ],
                {
                    "connections": str(stats["registry"]["connections"]),
                    "subscriptions": str(stats["gateway"]["subscriptions"]),
                    "rooms": str(stats["registry"]["rooms"]),
                    "sharedSubscriptions": str(stats["gateway"]["sharedSubscriptions"]),
                },
                "ok",
                0,
            ),
        )
        self.assertEqual(
            sorted(r["name"] for r in page["relays"]),
            ['<b id="injected">bold</b> relay', "second relay"],
        )

        await browser.evaluate("window.__marker = 'same page'")
        await relays[1].stop(abort=True)
        [down] = [url for url in stats["relays"] if url.startswith(relays[1].url)]
        shown = await browser.waitFor(
            _READ_PAGE,
            lambda page: any(
                r["url"] == down and r["state"] != "open" for r in orjson.loads(page)["relays"]
            ),
        )
        page = orjson.loads(shown)
        stats = await self.stats(port)
        self.assertEqual(
            (page["marker"], page["health"], stats["relays"][down]["state"] != "open"),
            ("same page", "degraded", True),
        )

    async def test_clusterCard(self) -> None:
        """
        The Cluster card shows a cluster node's id, its Redis connection and
        the nodes it sees; a single node says so.
        """
        redis = startRedis(self)
        relays = await self.fakeRelays()
        daemon, port = await startDaemon(
            self,
            [relay.url for relay in relays],
            redis=redis.url,
            **{"node-id": "node-one", "status-page-interval": "0.5", "lease-time": "0.6"},
        )
        browser = HeadlessChromium(reactor)
        self.addCleanup(browser.stop)
        await browser.start()
        await browser.navigate(f"http://127.0.0.1:{port}/")
        shown = await browser.waitFor(
            _READ_CLUSTER, lambda card: bool(card) and orjson.loads(card)["redis"] == "connected"
        )
        self.assertEqual(
            orjson.loads(shown),
            {"nodes": "1", "node": "node-one", "redis": "connected"},
        )
        single, singlePort = await self.startDaemon(relays)
        await browser.navigate(f"http://127.0.0.1:{singlePort}/")
        shown = await browser.waitFor(
            _READ_CLUSTER, lambda card: bool(card) and orjson.loads(card)["node"] == "–"
        )
        self.assertEqual(orjson.loads(shown)["nodes"], "single node")


# The Cluster card, read from the rendered DOM once the page updated.
_READ_CLUSTER = """document.body && document.body.dataset.updates && JSON.stringify(
  Object.fromEntries(['nodes', 'node', 'redis'].map(k =>
    [k, document.querySelector('[data-field="cluster.' + k + '"]').textContent])))"""
