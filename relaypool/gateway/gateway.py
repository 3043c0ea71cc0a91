"""
The gateway service: the relay facade, its connection registry and its HTTP
pages (NIP-11, C{/stats}, C{/metrics}, C{/healthz}, C{/readyz}) on one
listening port.
"""

# twisted.application.service and serverFromString have no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool._reactor import TimeTCPReactor, defaultReactor
from relaypool._version import __version__
from relaypool.gateway.facade import RelayFacade
from relaypool.gateway.http import GatewayResource, makeSite
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits
from relaypool.gateway.management import ManagementAPI
from relaypool.gateway.metrics import GatewayMetrics
from relaypool.gateway.policy import EventPolicy
from relaypool.gateway.protocol import GatewayFactory
from relaypool.gateway.publishing import DEFAULT_MAX_VERIFYING
from relaypool.gateway.registry import ConnectionRegistry
from relaypool.gateway.status import DEFAULT_HISTORY, DEFAULT_SAMPLE_INTERVAL, StatusBoard
from relaypool.interfaces import IClusterNode, IEventStore, IPublisher, IRelayPool
from relaypool.nostr.nip11 import Limitation, RelayInformation
from relaypool.nostr.nip98 import HTTP_AUTH_WINDOW

_log = Logger()

DEFAULT_DESCRIPTION = "A Nostr relay pool: one connection to many relays."


CLIENT_VERBS = (
    "EVENT",
    "REQ",
    "CLOSE",
    "COUNT",
    "AUTH",
    "NEG-OPEN",
    "NEG-MSG",
    "NEG-CLOSE",
    "invalid",
)
"""
The C{verb} labels of C{nostr_client_messages_total}: the messages clients
send, and C{invalid} for one that could not be parsed.
"""

RELAY_VERBS = ("EVENT", "EOSE", "OK", "CLOSED", "NOTICE", "COUNT", "AUTH", "NEG-MSG", "NEG-ERR")
"""
The C{verb} labels of C{nostr_relay_messages_total}: the messages the
gateway sends to clients.
"""


def _counter(name: str, help: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help, value=value)


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help, value=value)


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily,
    samples: Iterable[tuple[str, float]],
) -> Metric:
    for label, value in samples:
        family.add_metric([label], value)
    return family


def _perRelayGauge(name: str, help: str, samples: Iterable[tuple[str, float]]) -> Metric:
    return _labelled(GaugeMetricFamily(name, help, labels=["relay"]), samples)


def _byVerb(name: str, help: str, counts: dict[str, int], verbs: Iterable[str]) -> Metric:
    """
    A counter by C{verb}: every verb of C{verbs} (0 if it has no count),
    then any other verb counted.
    """
    labels = list(verbs) + sorted(set(counts) - set(verbs))
    family = CounterMetricFamily(name, help, labels=["verb"])
    return _labelled(family, ((verb, counts.get(verb, 0)) for verb in labels))


def _relayDocument(stats: Any, now: float) -> dict[str, Any]:
    """
    One relay's C{/stats} entry: its L{relaypool.upstream.results.RelayStats} fields,
    where C{connectedSince} (seconds since the epoch, or L{None}) comes with
    C{connectedAt}, the same time in ISO 8601 UTC, and C{connectedFor}, the
    seconds since then.
    """
    document = asdict(stats)
    document["connectedAt"], document["connectedFor"] = _readableTime(stats.connectedSince, now)
    return document


def _readableTime(moment: float | None, now: float) -> tuple[str | None, float | None]:
    """
    @return: C{moment} (seconds since the epoch, or L{None}) in ISO 8601 UTC,
        and the seconds from it to C{now}.
    """
    if moment is None:
        return None, None
    text = datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z"), round(max(0.0, now - moment), 3)


class Gateway(service.MultiService):
    """
    A NIP-01 relay endpoint for downstream clients, backed by a
    L{relaypool.upstream.relaypool.RelayPool} and/or an event store.

    @ivar registry: the L{ConnectionRegistry} of downstream connections (a
        child service).
    @ivar facade: the L{RelayFacade} handling their messages; its
        C{setPolicy} replaces the event policy at once.
    @ivar management: the L{ManagementAPI} answering NIP-86 calls.
    @ivar factory: the L{GatewayFactory} (WebSocket options, per-IP counts).
    @ivar statusBoard: the L{StatusBoard} keeping the status page's history
        (a child service).
    @ivar port: the listening port once listening, else L{None}.
    """

    def __init__(
        self,
        reactor: TimeTCPReactor | None = None,
        pool: IRelayPool | None = None,
        listen: str = "tcp:7777:interface=127.0.0.1",
        limits: GatewayLimits = DEFAULT_LIMITS,
        store: IEventStore | None = None,
        outbox: IPublisher | None = None,
        quorum: int = 1,
        okPolicy: str = "quorum",
        authRequired: bool = False,
        relayURL: str | None = None,
        name: str = "relaypool",
        description: str = DEFAULT_DESCRIPTION,
        closeTimeout: float = 5.0,
        policy: EventPolicy | None = None,
        adminPubkeys: Iterable[str] = (),
        adminAuthWindow: float = HTTP_AUTH_WINDOW,
        statusPageInterval: float = DEFAULT_SAMPLE_INTERVAL,
        statusPageHistory: int = DEFAULT_HISTORY,
        metrics: GatewayMetrics | None = None,
        maxVerifying: int = DEFAULT_MAX_VERIFYING,
        cluster: IClusterNode | None = None,
    ) -> None:
        """
        @param reactor: a L{relaypool._reactor.TimeTCPReactor}; the global
            reactor if L{None}. A C{listen} string for another transport
            (C{ssl:}, C{unix:}) also needs that transport's reactor
            interface, as the global reactor has.
        @param pool: the L{relaypool.upstream.relaypool.RelayPool}, or L{None} to serve
            C{store} alone (the gateway is then a plain relay).
        @param listen: a Twisted server endpoint string.
        @param store: an L{relaypool.interfaces.IEventStore}: C{REQ}s are
            answered from it first, and accepted events saved to it.
        @param outbox: an L{relaypool.store.outbox.OutboxPublisher}: accepted
            events are published through it (durably) instead of directly.
        @param quorum: upstream acceptances an C{OK true} needs under the
            C{"quorum"} policy.
        @param okPolicy: C{"quorum"} or C{"local"} (C{OK true} once the store
            committed the event; always so without a pool).
        @param authRequired: require NIP-42 authentication.
        @param relayURL: the gateway's public URL, that NIP-42
            authentication events must name; if L{None}, the URL each client
            connected to, from its C{Host} header.
        @param name: the NIP-11 name.
        @param description: the NIP-11 description.
        @param closeTimeout: seconds connections get to finish their close
            handshake when the gateway stops, before they are aborted.
        @param policy: the L{EventPolicy}; L{None} for one that refuses
            nothing. Replace it later with C{facade.setPolicy}.
        @param adminPubkeys: the pubkeys allowed to use the NIP-86
            management API (C{POST /}); none turns it off.
        @param adminAuthWindow: seconds a NIP-98 authorization event's
            C{created_at} may be from the gateway's clock.
        @param statusPageInterval: seconds between two samples of the status
            page's history.
        @param statusPageHistory: samples the status page's history keeps.
        @param metrics: the L{GatewayMetrics} C{/metrics} shows, which the
            pool's and the store's C{onLatency} may feed too; a new one
            (with the process metrics) if L{None}.
        @param maxVerifying: the most client C{EVENT}s waiting for their
            signature check (see L{RelayFacade}).
        @param cluster: the L{relaypool.interfaces.IClusterNode} when this
            gateway is one node of several on Redis: its shared
            subscriptions subscribe upstream through it, and C{/stats},
            C{/metrics} and the status page show the cluster.
        @raise ValueError: for an C{okPolicy} that cannot work with the given
            pool and store, or a status page history that cannot work.
        """
        super().__init__()
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._pool = pool
        self._store = store
        self._outbox = outbox
        self.cluster = cluster
        self._listen = listen
        self._name = name
        self._description = description
        self._quorum = quorum
        self._startedAt = reactor.seconds()
        self.limits = limits
        self.metrics = GatewayMetrics() if metrics is None else metrics
        self.registry = ConnectionRegistry(
            reactor,
            limits.maxPendingBytes,
            limits.pingInterval,
            limits.maxIdle,
            closeTimeout,
            maxLag=limits.maxLag,
            maxBacklogBytes=limits.maxBacklogBytes,
        )
        self.registry.setServiceParent(self)
        self.facade = RelayFacade(
            self.registry,
            pool,
            store,
            outbox,
            limits,
            quorum,
            okPolicy,
            authRequired,
            relayURL,
            reactor,
            policy,
            self.metrics.observeGateway,
            maxVerifying,
            cluster,
        )
        self.management = ManagementAPI(
            self.facade, pool, store, adminPubkeys, quorum, adminAuthWindow, reactor
        )
        self.factory = GatewayFactory(self.registry, self.facade)
        self.metrics.addCollector(reactor, self._metricFamilies)
        self.statusBoard = StatusBoard(
            self.stats, store, statusPageInterval, statusPageHistory, reactor
        )
        self.statusBoard.setServiceParent(self)
        self.site = makeSite(
            GatewayResource(
                self.factory,
                self.information,
                self.stats,
                self.metrics.resource(),
                management=self.management,
                status=self.statusBoard.status,
                liveness=self.liveness,
                readiness=self.readiness,
            ),
            reactor=reactor,
            limits=limits,
        )
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def setLimits(self, limits: GatewayLimits) -> None:
        """
        Apply new limits without dropping a connection: to every message
        from now on (open connections included), to the registry's bounds
        and sweep, and to the HTTP requests and WebSocket handshakes to
        come (a connection keeps the frame size bound it opened with).
        """
        self.limits = limits
        self.facade.setLimits(limits)
        self.site.limits = limits  # type: ignore[attr-defined]  # makeSite's _QuietSite
        self.factory.applyLimits()
        self.registry.setBounds(
            limits.maxPendingBytes,
            limits.pingInterval,
            limits.maxIdle,
            limits.maxLag,
            limits.maxBacklogBytes,
        )

    def setOkPolicy(self, okPolicy: str, quorum: int) -> None:
        """
        Change when a client's C{EVENT} is answered C{OK true}: C{okPolicy}
        C{"quorum"} (once C{quorum} relays accepted it) or C{"local"}, for
        the events accepted from now on.

        @raise ValueError: for a policy that cannot work with the gateway's
            pool and store.
        """
        self.facade.setOkPolicy(okPolicy, quorum)
        self.management.quorum = quorum

    def setInformation(self, name: str, description: str) -> None:
        """
        Change the NIP-11 name and description.
        """
        self._name = name
        self._description = description

    def supportedNIPs(self) -> tuple[int, ...]:
        """
        @return: the NIPs this gateway implements: NIP-09 deletions only
            with a store (which applies them), NIP-86 and NIP-98 only with
            admin pubkeys; NIP-77 only with a store (which syncs answer
            from).
        """
        nips = [1, 11, 40, 42, 45]
        if self._store is not None:
            nips += [9, 77]
        if self.management.admins:
            nips += [86, 98]
        return tuple(sorted(nips))

    def information(self) -> dict[str, Any]:
        """
        @return: the gateway's NIP-11 relay information document.
        """
        limits = self.limits
        return RelayInformation(
            name=self._name,
            description=self._description,
            supportedNips=self.supportedNIPs(),
            # NIP-11's software is the URL of the software's project, and
            # relaypool has no public one: only its version is given.
            version=__version__,
            limitation=Limitation(
                maxMessageLength=limits.maxMessageSize,
                maxSubscriptions=limits.maxSubscriptions,
                maxFilters=limits.maxFilters,
                maxLimit=limits.maxLimit,
                maxSubidLength=limits.maxSubscriptionIdLength,
                defaultLimit=limits.maxLimit,
                authRequired=self.facade.authRequired,
            ),
        ).toDict()

    # --- service ------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Listen on the endpoint (before C{twistd} drops privileges, so that a
        port below 1024 works).
        """
        super().privilegedStartService()
        self._startListening()

    def startService(self) -> None:
        """
        Start the registry's sweep, and listen on the endpoint if not yet
        listening. Log the URL NIP-42 authentication events must name.
        """
        super().startService()
        self._logAuthentication()
        self._logManagement()
        self._startListening()

    def _startListening(self) -> None:
        if self._listening is None:
            endpoint = serverFromString(self._reactor, self._listen)
            self._listening = endpoint.listen(self.site)
            self._listening.addCallback(self._listened)

    def _logAuthentication(self) -> None:
        if not self.facade.authRequired:
            return
        if self.facade.relayURL is not None:
            _log.info("NIP-42 AUTH required: AUTH events must name {url}", url=self.facade.relayURL)
        else:
            _log.info(
                "NIP-42 AUTH required: AUTH events must name ws://<Host>/ (wss://<Host>/ over "
                "TLS or with X-Forwarded-Proto: https) from the Host header each client "
                "connects with; set --relay-url to name the public URL"
            )

    def _logManagement(self) -> None:
        admins = len(self.management.admins)
        if admins:
            _log.info(
                "NIP-86 management API on POST / for {admins} admin pubkeys; changes made "
                "through it are not persisted (a restart or a reload goes back to the config)",
                admins=admins,
            )

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def whenListening(self) -> Deferred[IListeningPort]:
        """
        @return: a Deferred firing with the listening port (failing if the
            gateway could not listen).
        """
        if self._listening is None:
            raise RuntimeError("the gateway has not been started")
        d: Deferred[IListeningPort] = Deferred()

        def passOn(result: IListeningPort | Failure) -> IListeningPort | Failure:
            if isinstance(result, Failure):
                d.errback(result)
                return None  # type: ignore[return-value]
            d.callback(result)
            return result

        self._listening.addBoth(passOn)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Refuse new handshakes, close every upstream subscription, close
        every connection with a close handshake (aborting those that take
        longer than C{closeTimeout}), then stop listening.
        """
        self.factory.accepting = False
        verifying = self.facade.close()
        d: Deferred[None] = super().stopService()

        def stopListening(_: object) -> Deferred[None]:
            port, self.port = self.port, None
            self._listening = None
            if port is None:
                return succeed(None)
            stopped: Deferred[None] = port.stopListening()  # type: ignore[assignment]
            return stopped

        return d.addCallback(stopListening).addCallback(lambda _: verifying)

    # --- statistics ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """
        @return: the C{/stats} document: the registry's and the facade's
            figures, the pool's totals and each relay's state (its times as
            seconds since the epoch, ISO 8601 UTC and seconds ago), and the
            outbox's retries in flight and what waits in it (events, the
            oldest one's age in seconds, the same per relay; as of the
            outbox's last pass, see L{relaypool.store.outbox.OutboxPublisher.stats});
            with a cluster, its status (L{relaypool.interfaces.IClusterNode.status}).
        """
        document: dict[str, Any] = {
            "registry": asdict(self.registry.stats()),
            "gateway": asdict(self.facade.stats()),
        }
        if self._pool is not None:
            document["pool"] = asdict(self._pool.totals())
            now = self._reactor.seconds()
            document["relays"] = {
                url: _relayDocument(stats, now) for url, stats in self._pool.stats().items()
            }
        if self._outbox is not None:
            outbox = self._outbox.stats()
            readAt, readAgo = _readableTime(outbox.readAt, self._reactor.seconds())
            document["outbox"] = {
                "retrying": outbox.retrying,
                "waiting": outbox.waiting,
                "oldestAge": outbox.oldestAge,
                "readAt": readAt,
                "readAgo": readAgo,
                "relays": {url: asdict(backlog) for url, backlog in outbox.relays.items()},
            }
        if self.cluster is not None:
            document["cluster"] = self.cluster.status()
        return document

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """
        @return: the C{/healthz} answer: 200 (answering at all shows the
            reactor runs) with the status, the seconds since the gateway
            was made, and relaypool's version.
        """
        uptime = round(max(0.0, self._reactor.seconds() - self._startedAt), 3)
        return 200, {"status": "ok", "uptime": uptime, "version": __version__}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """
        @return: the C{/readyz} answer: 200 when the gateway accepts
            clients, the store (if any) can write, and, with write relays
            in the pool, at least C{quorum} of them have an open connection
            (the quorum counts write relays); else
            503 with the reasons, one line each. No store query: cheap
            enough to be polled every second.
        """
        reasons = []
        if not self.factory.accepting:
            reasons.append("the gateway is stopping")
        if self._store is not None:
            problem = self._store.writeProblem()
            if problem is not None:
                reasons.append(problem)
        document: dict[str, Any] = {}
        if self._pool is not None:
            writeRelays = set(self._pool.relayURLs("write"))
            relays = len(writeRelays)
            active = len(writeRelays.intersection(self._pool.activeRelayURLs()))
            document["relays"] = {"configured": relays, "open": active, "quorum": self._quorum}
            if relays and active < self._quorum:
                reasons.append(
                    f"{active} of {relays} upstream write relays open, fewer than the quorum "
                    f"of {self._quorum}"
                )
        document = {"status": "not ready" if reasons else "ready", "reasons": reasons, **document}
        return (503 if reasons else 200), document

    def _metricFamilies(self) -> list[Metric]:
        registry = self.registry.stats()
        facade = self.facade.stats()
        families: list[Metric] = [
            _gauge(
                "relaypool_gateway_connections",
                "Open downstream connections.",
                registry.connections,
            ),
            _gauge("relaypool_gateway_rooms", "Registry rooms with members.", registry.rooms),
            _gauge(
                "relaypool_gateway_shared_subscriptions",
                "Upstream subscriptions shared by downstream clients.",
                facade.sharedSubscriptions,
            ),
            _gauge(
                "relaypool_gateway_subscriptions",
                "Downstream subscriptions.",
                facade.subscriptions,
            ),
            _gauge(
                "relaypool_gateway_bytes_pending",
                "Bytes written to connections with a full write buffer.",
                registry.bytesPending,
            ),
            _counter(
                "relaypool_gateway_evicted_slow_total",
                "Connections evicted for being too slow to read.",
                registry.evictedSlow,
            ),
            _counter(
                "relaypool_gateway_reaped_idle_total",
                "Connections closed for being idle.",
                registry.reapedIdle,
            ),
            _counter(
                "relaypool_gateway_frames_sent_total",
                "Frames written to downstream connections.",
                registry.framesSent,
            ),
            _counter(
                "relaypool_gateway_events_published_total",
                "EVENT messages received from downstream clients.",
                facade.eventsPublished,
            ),
            _counter(
                "relaypool_gateway_events_invalid_total",
                "EVENT messages refused as invalid.",
                facade.eventsInvalid,
            ),
            _counter(
                "relaypool_gateway_events_delivered_total",
                "Events delivered to shared subscriptions.",
                facade.eventsDelivered,
            ),
            _labelled(
                CounterMetricFamily(
                    "relaypool_gateway_ok_total",
                    "OK answers sent to downstream clients.",
                    labels=["accepted"],
                ),
                [("true", facade.okAccepted), ("false", facade.okRejected)],
            ),
            _counter(
                "relaypool_gateway_rate_limited_total",
                "Messages refused with rate-limited.",
                facade.rateLimited,
            ),
            _labelled(
                CounterMetricFamily(
                    "relaypool_gateway_negentropy_syncs_total",
                    "NIP-77 syncs: answered from the store, or ended with NEG-ERR.",
                    labels=["outcome"],
                ),
                [("opened", facade.syncsOpened), ("refused", facade.syncsRefused)],
            ),
            _counter(
                "relaypool_gateway_denied_connections_total",
                "WebSocket handshakes refused.",
                facade.deniedConnections,
            ),
            _byVerb(
                "nostr_client_messages_total",
                "Messages received from downstream clients, by verb.",
                facade.messagesReceived,
                CLIENT_VERBS,
            ),
            _byVerb(
                "nostr_relay_messages_total",
                "Messages sent to downstream clients, by verb.",
                facade.messagesSent,
                RELAY_VERBS,
            ),
        ]
        if self._pool is not None:
            self.metrics.keepRelays(self._pool.relayURLs())
            families += self._poolFamilies()
        if self._outbox is not None:
            families += self._outboxFamilies()
        if self.cluster is not None:
            families += _clusterFamilies(self.cluster.status())
        return families

    def _outboxFamilies(self) -> list[Metric]:
        """
        The outbox's gauges; every relay of the pool has a per-relay sample,
        0 when nothing waits for it.
        """
        assert self._outbox is not None
        outbox = self._outbox.stats()
        urls = set(outbox.relays)
        if self._pool is not None:
            urls.update(self._pool.relayURLs())
        backlogs = [(url, outbox.relays.get(url)) for url in sorted(urls)]
        return [
            _gauge(
                "relaypool_outbox_retrying", "Outbox retry publishes in flight.", outbox.retrying
            ),
            _gauge(
                "relaypool_outbox_waiting_events",
                "Events in the outbox some relay has not settled (accepted or refused for good).",
                outbox.waiting,
            ),
            _gauge(
                "relaypool_outbox_oldest_age_seconds",
                "Age of the oldest event in the outbox (0 when empty).",
                outbox.oldestAge or 0.0,
            ),
            _perRelayGauge(
                "relaypool_outbox_relay_waiting_events",
                "Events in the outbox the relay has not settled (accepted or refused for good).",
                [(url, b.waiting if b else 0) for url, b in backlogs],
            ),
            _perRelayGauge(
                "relaypool_outbox_relay_oldest_age_seconds",
                "Age of the oldest event in the outbox the relay has not settled (0 when none).",
                [(url, b.oldestAge if b else 0.0) for url, b in backlogs],
            ),
        ]

    def _poolFamilies(self) -> list[Metric]:
        assert self._pool is not None
        totals = self._pool.totals()
        relays = sorted(self._pool.stats().values(), key=lambda stats: stats.url)

        def perRelay(name: str, kind: str, help: str, attribute: str) -> Metric:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, help, labels=["relay"]
            )
            return _labelled(family, ((r.url, float(getattr(r, attribute))) for r in relays))

        return [
            _gauge("relaypool_pool_relays", "Relays in the pool.", totals.relays),
            _gauge(
                "relaypool_pool_active_relays",
                "Relays with an open connection.",
                totals.activeRelays,
            ),
            _gauge("relaypool_pool_subscriptions", "Upstream subscriptions.", totals.subscriptions),
            _counter(
                "relaypool_pool_events_received_total",
                "Events received from relays.",
                totals.eventsReceived,
            ),
            _counter(
                "relaypool_pool_events_unique_total", "Unique verified events.", totals.eventsUnique
            ),
            _counter(
                "relaypool_pool_events_invalid_total",
                "Events that failed verification.",
                totals.eventsInvalid,
            ),
            _counter(
                "relaypool_pool_ok_accepted_total",
                "OK true (or any duplicate: answer) from relays.",
                totals.okAccepted,
            ),
            _counter(
                "relaypool_pool_ok_rejected_total",
                "OK false (not duplicate:) from relays.",
                totals.okRejected,
            ),
            _gauge(
                "relaypool_pool_inbound_queued",
                "Messages waiting in the recv queue.",
                totals.inboundQueued,
            ),
            _gauge(
                "relaypool_pool_outbound_queued",
                "Messages waiting to be sent to relays.",
                totals.outboundQueued,
            ),
            _counter(
                "relaypool_pool_outbound_dropped_total",
                "Messages dropped from full outbound queues.",
                totals.outboundDropped,
            ),
            _perRelayGauge(
                "relaypool_relay_up",
                "1 if the relay has an open connection.",
                ((r.url, 1.0 if r.state == "open" else 0.0) for r in relays),
            ),
            perRelay(
                "relaypool_relay_health_score", "gauge", "Relay health score, 0-100.", "healthScore"
            ),
            perRelay(
                "relaypool_relay_reconnects_total", "counter", "Relay reconnections.", "reconnects"
            ),
            perRelay(
                "relaypool_relay_events_received_total",
                "counter",
                "Events received from the relay.",
                "eventsReceived",
            ),
            perRelay(
                "relaypool_relay_events_unique_total",
                "counter",
                "Unique events first received from the relay.",
                "eventsUnique",
            ),
            perRelay(
                "relaypool_relay_events_invalid_total",
                "counter",
                "Invalid events from the relay.",
                "eventsInvalid",
            ),
            perRelay(
                "relaypool_relay_outbound_queued",
                "gauge",
                "Messages waiting to be sent to the relay.",
                "outboundQueued",
            ),
        ]


__all__ = ["CLIENT_VERBS", "DEFAULT_DESCRIPTION", "RELAY_VERBS", "Gateway"]


def _clusterFamilies(status: dict[str, Any]) -> list[Metric]:
    """
    The cluster's gauges and counters, from a cluster node's status.
    """
    cluster = status["cluster"]
    return [
        _gauge(
            "relaypool_cluster_redis_up",
            "1 when this node is connected to Redis.",
            status["redisUp"],
        ),
        _gauge(
            "relaypool_cluster_nodes",
            "Cluster nodes this node sees (itself included).",
            cluster["nodes"],
        ),
        _gauge(
            "relaypool_cluster_filter_sets",
            "Filter sets this node's clients subscribe to.",
            status["filterSets"],
        ),
        _gauge(
            "relaypool_cluster_leases_held",
            "Filter sets this node subscribes upstream for the cluster (leases held).",
            status["leasesHeld"],
        ),
        _gauge(
            "relaypool_cluster_streams_following",
            "Filter sets this node reads from another node's stream.",
            status["following"],
        ),
        _counter(
            "relaypool_cluster_events_published_total",
            "Events this node added to the cluster's streams.",
            status["eventsPublished"],
        ),
        _counter(
            "relaypool_cluster_events_received_total",
            "Events this node read from other nodes' streams.",
            status["eventsReceived"],
        ),
        _counter(
            "relaypool_cluster_redis_commands_total",
            "Commands this node sent to Redis.",
            status["redisCommands"],
        ),
    ]
