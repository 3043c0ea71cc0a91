"""
The gateway's Prometheus metrics, on C{prometheus_client}: one
L{CollectorRegistry} per gateway (never the library's global registry, so
that two gateways in one process, and tests, do not share metrics), the
latency histograms the lower layers feed through observer callbacks, the
process metrics, and the C{/metrics} resource.

The lower layers (C{upstream}, C{store}) do not import C{prometheus_client}:
they call an observer (C{onLatency}) that L{GatewayMetrics} provides.
"""

# prometheus_client's MetricsResource has no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.web.resource import IResource

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""
The upper bounds, in seconds, of the buckets of every latency histogram
(and C{+Inf}): from a millisecond (a store read, a fan-out) to a minute
(an EOSE behind a slow relay, an OK waiting for a quorum).
"""

COLLECT_TIMEOUT = 10.0
"""
Seconds a scrape, served in a thread of the reactor's thread pool, waits
for the reactor thread to read the gateway's statistics; past it the scrape
fails (HTTP 500) instead of hanging, e.g. while the reactor shuts down.
"""


def _histogram(
    name: str, documentation: str, registry: CollectorRegistry, labels: Iterable[str] = ()
) -> Histogram:
    return Histogram(
        name, documentation, labels, registry=registry, buckets=LATENCY_BUCKETS
    )


class GatewayMetrics:
    """
    A gateway's metrics: its registry, its latency histograms (observed
    through L{observeGateway}, L{observeRelay} and L{observeStore}), the
    process and platform collectors, and collectors of figures computed at
    scrape time (L{addCollector}).

    @ivar registry: the L{CollectorRegistry} the C{/metrics} page shows.
    """

    def __init__(self, processMetrics: bool = True) -> None:
        """
        @param processMetrics: also show the process's metrics (CPU, memory,
            file descriptors: C{process_*}) and the Python platform
            (C{python_info}).
        """
        registry = self.registry = CollectorRegistry()
        self._gateway = {
            "eose": _histogram(
                "relaypool_gateway_req_eose_seconds",
                "Seconds from a downstream client's REQ to the EOSE sent to it.",
                registry,
            ),
            "fanout": _histogram(
                "relaypool_gateway_fanout_seconds",
                "Seconds from a valid EVENT accepted for publishing (store commit or upstream "
                "quorum included) to its frames handed to the subscribed clients.",
                registry,
            ),
        }
        self._relays = {
            "eose": _histogram(
                "relaypool_relay_eose_seconds",
                "Seconds from a REQ sent to an upstream relay to its EOSE.",
                registry,
                ["relay"],
            ),
            "ok": _histogram(
                "relaypool_relay_ok_seconds",
                "Seconds from an EVENT sent to an upstream relay to its OK.",
                registry,
                ["relay"],
            ),
            "count": _histogram(
                "relaypool_relay_count_seconds",
                "Seconds from a COUNT sent to an upstream relay to its answer.",
                registry,
                ["relay"],
            ),
        }
        self._store = {
            "write": _histogram(
                "relaypool_store_write_seconds",
                "Seconds from a store write (event or outbox) to its commit.",
                registry,
            ),
            "query": _histogram(
                "relaypool_store_query_seconds",
                "Seconds from a store query (query, ids, fetch, count, outbox) to its result.",
                registry,
            ),
        }
        self._relayURLs: set[str] = set()
        if processMetrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def observeGateway(self, kind: str, seconds: float) -> None:
        """
        Observe a downstream latency: C{kind} is C{"eose"} (REQ to EOSE) or
        C{"fanout"} (accepted EVENT to its delivery); others are ignored.
        """
        histogram = self._gateway.get(kind)
        if histogram is not None:
            histogram.observe(seconds)

    def observeRelay(self, kind: str, relayURL: str, seconds: float) -> None:
        """
        Observe an upstream relay's latency: C{kind} is C{"eose"}, C{"ok"}
        or C{"count"}; others are ignored. The signature of
        L{relaypool.upstream.relaypool.RelayPool}'s C{onLatency}.
        """
        histogram = self._relays.get(kind)
        if histogram is not None:
            self._relayURLs.add(relayURL)
            histogram.labels(relayURL).observe(seconds)

    def observeStore(self, kind: str, seconds: float) -> None:
        """
        Observe a store call's latency: C{kind} is C{"write"} or
        C{"query"}; others are ignored. The signature of
        L{relaypool.store.sqlite.SQLiteEventStore}'s C{onLatency}.
        """
        histogram = self._store.get(kind)
        if histogram is not None:
            histogram.observe(seconds)

    def keepRelays(self, relayURLs: Iterable[str]) -> None:
        """
        Drop the histograms of the relays not in C{relayURLs} (removed from
        the pool), so that the page does not grow with every relay ever
        used. Call it in the reactor thread.
        """
        keep = set(relayURLs)
        for url in self._relayURLs - keep:
            for histogram in self._relays.values():
                try:
                    histogram.remove(url)
                except KeyError:
                    pass
        self._relayURLs &= keep

    def addCollector(self, reactor: Any, families: Callable[[], Iterable[Metric]]) -> None:
        """
        Show the metric families C{families} returns at each scrape. It is
        called in the reactor thread, taken to be the thread calling this
        method (a scrape is served in a thread of the reactor's thread
        pool), so it may read any state the reactor thread owns.

        @param reactor: an L{twisted.internet.interfaces.IReactorFromThreads}.
        """
        self.registry.register(_ReactorThreadCollector(reactor, families))

    def resource(self) -> IResource:
        """
        @return: C{prometheus_client}'s Twisted C{MetricsResource} for the
            registry: the text format (or OpenMetrics, on request by the
            C{Accept} header), gzip on request, C{?name[]=} to select
            families; rendered in the reactor's thread pool.
        """
        # Imported here: it imports the global reactor.
        from prometheus_client.twisted import MetricsResource

        resource: IResource = MetricsResource(self.registry)
        return resource


class _ReactorThreadCollector(Collector):
    """
    A collector whose families are computed in the reactor thread (the
    thread that made it), whatever thread scrapes.
    """

    def __init__(self, reactor: Any, families: Callable[[], Iterable[Metric]]) -> None:
        self._reactor = reactor
        self._families = families
        self._reactorThread = threading.get_ident()

    def describe(self) -> Iterable[Metric]:
        # Nothing: the families are known only at scrape time, and the
        # registry must not compute them when this collector is registered.
        return []

    def collect(self) -> Iterable[Metric]:
        if threading.get_ident() == self._reactorThread:
            return list(self._families())
        done = threading.Event()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(list(self._families()))
            except BaseException as e:
                outcome.append(e)
            finally:
                done.set()

        self._reactor.callFromThread(run)
        if not done.wait(COLLECT_TIMEOUT):
            raise TimeoutError(
                f"the reactor did not answer within {COLLECT_TIMEOUT} seconds"
            )
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        result: list[Metric] = outcome[0]
        return result


__all__ = ["COLLECT_TIMEOUT", "LATENCY_BUCKETS", "GatewayMetrics"]
