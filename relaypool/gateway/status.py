"""
The live status page: a bounded history of the gateway's figures, sampled
on one L{LoopingCall}; the C{/status.json} document built from it and the
gateway's C{/stats}; and the page itself (HTML, JavaScript, CSS), served
from files in this package, with no build step and nothing from elsewhere.
"""

# twisted.application.service and twisted.web have no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from relaypool._reactor import defaultReactor
from relaypool._version import __version__
from relaypool.interfaces import IEventStore
from relaypool.nostr.filter import Filter

DEFAULT_SAMPLE_INTERVAL = 5.0
"""
Seconds between two samples of the status page's history.
"""

DEFAULT_HISTORY = 120
"""
Samples the status page's history keeps (the oldest is dropped): with
L{DEFAULT_SAMPLE_INTERVAL}, ten minutes.
"""

_log = Logger()

_TOTALS = ("eventsIn", "uniqueIn", "published", "framesOut", "delivered")
"""
The gateway-wide counters each sample keeps, whose rates the page shows:
events received from relays (all, and the unique verified ones), events
published by clients, frames written to clients, and events delivered to
shared subscriptions.
"""

_FILES = {
    "status.js": b"text/javascript; charset=utf-8",
    "status.css": b"text/css; charset=utf-8",
}

_PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StatusSample:
    """
    The gateway's counters at one moment.

    @ivar at: the reactor's time of the sample.
    @ivar totals: each of the gateway-wide counters by name (C{eventsIn},
        C{uniqueIn}, C{published}, C{framesOut}, C{delivered}).
    @ivar relays: per relay URL, its events received and health score.
    """

    at: float
    totals: dict[str, int]
    relays: dict[str, tuple[int, float]]


def _sampleOf(stats: dict[str, Any], at: float) -> StatusSample:
    """
    @param stats: a C{/stats} document.
    """
    gateway = stats["gateway"]
    pool = stats.get("pool") or {}
    totals = {
        "eventsIn": pool.get("eventsReceived", 0),
        "uniqueIn": pool.get("eventsUnique", 0),
        "published": gateway["eventsPublished"],
        "framesOut": stats["registry"]["framesSent"],
        "delivered": gateway["eventsDelivered"],
    }
    relays = {
        url: (relay["eventsReceived"], relay["healthScore"])
        for url, relay in stats.get("relays", {}).items()
    }
    return StatusSample(at, totals, relays)


def _rate(before: int | None, after: int | None, seconds: float) -> float | None:
    """
    @return: events per second from counter C{before} to C{after}, L{None}
        if either is missing; never negative (a relay removed and added
        again restarts its counters).
    """
    if before is None or after is None or seconds <= 0:
        return None
    return round(max(0, after - before) / seconds, 3)


def _pick(document: dict[str, Any] | None, *keys: str) -> dict[str, Any] | None:
    """
    @return: C{keys} of C{document}, or L{None} without a document.
    """
    return None if document is None else {key: document[key] for key in keys}


def _clusterSummary(cluster: dict[str, Any] | None) -> dict[str, Any] | None:
    """
    @return: what the status page shows of a cluster node's status, or
        L{None} for a single node.
    """
    if cluster is None:
        return None
    summary = _pick(
        cluster, "node", "redisUp", "leasesHeld", "following", "eventsPublished", "eventsReceived"
    )
    assert summary is not None
    summary["nodes"] = cluster["cluster"]["nodes"]
    return summary


def _isoTime(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _storeBytes(path: str | None) -> int | None:
    """
    @return: the bytes of the store's database file and its write-ahead
        log, or L{None} without a file (an in-memory store).
    """
    if path is None or path == ":memory:":
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    try:
        size += os.stat(path + "-wal").st_size
    except OSError:
        pass
    return size


class StatusBoard(service.Service):
    """
    Keeps the status page's history: a sample of the gateway's counters
    every C{interval} seconds, on one L{LoopingCall}, at most C{history}
    samples (the oldest dropped first), and with a store the number of
    events it holds, counted at each sample (not at each request).

    @ivar interval: seconds between samples.
    @ivar history: the most samples kept.
    @ivar startedAt: the reactor's time when the board started, for the
        uptime; L{None} before.
    """

    def __init__(
        self,
        stats: Callable[[], dict[str, Any]],
        store: IEventStore | None = None,
        interval: float = DEFAULT_SAMPLE_INTERVAL,
        history: int = DEFAULT_HISTORY,
        reactor: Any = None,
    ) -> None:
        """
        @param stats: returns the gateway's C{/stats} document.
        @param store: the event store, whose events are counted and whose
            file's size (if it has a C{path}) is shown.
        @param interval: seconds between samples.
        @param history: the most samples kept; at least 2.
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        @raise ValueError: for an C{interval} that is not positive or a
            C{history} under 2.
        """
        if interval <= 0:
            raise ValueError(f"the status page's sample interval must be positive, not {interval}")
        if history < 2:
            raise ValueError(
                f"the status page's history must keep at least 2 samples, not {history}"
            )
        self._reactor = defaultReactor(reactor)
        self._stats = stats
        self._store = store
        self.interval = interval
        self.history = history
        self._samples: deque[StatusSample] = deque(maxlen=history)
        self._storeEvents: int | None = None
        self._counting = False
        self.startedAt: float | None = None
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self._reactor

    def startService(self) -> None:
        super().startService()
        self.startedAt = self._reactor.seconds()
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: _log.failure("status page sampling stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def samples(self) -> list[StatusSample]:
        """
        @return: the samples kept, oldest first.
        """
        return list(self._samples)

    def sample(self) -> None:
        """
        Take a sample now (dropping the oldest one if the history is full),
        and count the store's events unless a count is still running.
        """
        self._samples.append(_sampleOf(self._stats(), self._reactor.seconds()))
        if self._store is not None and not self._counting:
            self._counting = True
            self._store.count([Filter()]).addCallbacks(self._counted, self._countFailed)

    def _counted(self, count: int) -> None:
        self._counting = False
        self._storeEvents = count

    def _countFailed(self, failure: Failure) -> None:
        self._counting = False
        _log.warn(
            "status page: counting the store's events failed: {why}",
            why=failure.getErrorMessage(),
        )

    def status(self) -> dict[str, Any]:
        """
        @return: the C{/status.json} document (see the README's "The status
            page"): the gateway's current figures from C{/stats}, rates over
            the last sample interval, and per-interval rates over the
            history.
        """
        now = self._reactor.seconds()
        stats = self._stats()
        samples = list(self._samples)
        pairs = list(itertools.pairwise(samples))

        def totalSeries(name: str) -> list[float | None]:
            return [_rate(a.totals[name], b.totals[name], b.at - a.at) for a, b in pairs]

        def relaySeries(url: str, index: int) -> list[float | None]:
            if index == 1:
                return [b.relays[url][1] if url in b.relays else None for _, b in pairs]
            return [
                _rate(
                    a.relays[url][0] if url in a.relays else None,
                    b.relays[url][0] if url in b.relays else None,
                    b.at - a.at,
                )
                for a, b in pairs
            ]

        registry, gateway = stats["registry"], stats["gateway"]
        relays = []
        for url, relay in sorted(stats.get("relays", {}).items()):
            events = relaySeries(url, 0)
            relays.append(
                {
                    "url": url,
                    "name": relay.get("name"),
                    "roles": list(relay.get("roles", ("read", "write"))),
                    "state": relay["state"],
                    "healthScore": round(relay["healthScore"], 1),
                    "connections": relay.get("connections", 0),
                    "latency": relay["latency"],
                    "eventsReceived": relay["eventsReceived"],
                    "eventsPerSecond": events[-1] if events else None,
                    "reconnects": relay["reconnects"],
                    "okAccepted": relay["okAccepted"],
                    "okRejected": relay["okRejected"],
                    "connectedFor": relay.get("connectedFor"),
                    "history": {"eventsPerSecond": events, "healthScore": relaySeries(url, 1)},
                }
            )
        history = {name: totalSeries(name) for name in _TOTALS}
        pool = stats.get("pool")
        return {
            "version": __version__,
            "now": _isoTime(now),
            "startedAt": None if self.startedAt is None else _isoTime(self.startedAt),
            "uptime": None if self.startedAt is None else round(now - self.startedAt, 1),
            "health": self._health(pool),
            "sampleInterval": self.interval,
            "historySamples": self.history,
            "clients": {
                "connections": registry["connections"],
                "subscriptions": gateway["subscriptions"],
                "rooms": registry["rooms"],
                "sharedSubscriptions": gateway["sharedSubscriptions"],
                "bytesPending": registry["bytesPending"],
            },
            "pool": _pick(pool, "relays", "activeRelays", "subscriptions"),
            "rates": {name: series[-1] if series else None for name, series in history.items()},
            "history": history,
            "relays": relays,
            "outbox": _pick(stats.get("outbox"), "waiting", "retrying", "oldestAge"),
            "cluster": _clusterSummary(stats.get("cluster")),
            "store": None
            if self._store is None
            else {
                "events": self._storeEvents,
                "bytes": _storeBytes(getattr(self._store, "path", None)),
            },
        }

    @staticmethod
    def _health(pool: dict[str, Any] | None) -> str:
        """
        @return: C{"ok"} when every relay is open (or there are none: the
            gateway serves its store), C{"degraded"} when some are,
            C{"down"} when none is.
        """
        if pool is None or pool["relays"] == 0 or pool["activeRelays"] == pool["relays"]:
            return "ok"
        return "degraded" if pool["activeRelays"] else "down"


@cache
def _packageFile(name: str) -> bytes:
    return files("relaypool.gateway").joinpath("statuspage", name).read_bytes()


def wantsStatusPage(request: Request) -> bool:
    """
    @return: whether C{request} asks for HTML (a browser) rather than the
        NIP-11 document.
    """
    accept = (request.getHeader(b"accept") or b"").lower()
    return b"text/html" in accept and b"application/nostr+json" not in accept


def renderStatusPage(request: Request) -> bytes:
    """
    Answer C{request} with the status page's HTML, under a content security
    policy allowing only this server's own scripts, styles and requests.
    """
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"content-security-policy", _PAGE_POLICY)
    request.setHeader(b"x-content-type-options", b"nosniff")
    return _packageFile("index.html")


class StatusFiles(Resource):
    """
    C{/status/}: the status page's script and style sheet; any other name
    is a 404.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        name = b"/".join(request.postpath or []).decode("utf-8", "replace")
        contentType = _FILES.get(name)
        if contentType is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"404 Not Found: no such status page file\n"
        request.setHeader(b"content-type", contentType)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return _packageFile(name)


__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_SAMPLE_INTERVAL",
    "StatusBoard",
    "StatusFiles",
    "StatusSample",
    "renderStatusPage",
    "wantsStatusPage",
]
